/**
 * The `vtpm serve` of one fuzz file, on a data directory of its own, with
 * the identities the fuzz speaks as; stopped (its vTPMs deleted first, so
 * that no swtpm outlives it) and removed after the file's tests, when the
 * file's counts are printed.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after } from 'node:test';
import { ServiceUnderTest, temporaryDir } from '../../e2e/support/service.js';
import { Identities } from './identities.js';
import type { Counts } from './settings.js';

export interface FuzzService {
  workDir: string;
  dataDir: string;
  service: ServiceUnderTest;
  identities: Identities;
}

export async function startFuzzService(name: string, counts: Counts, serveArgs?: string[]): Promise<FuzzService> {
  const workDir = await temporaryDir(`vtpm-fuzz-${name}`);
  const dataDir = join(workDir, 'data');
  const service = await ServiceUnderTest.start(dataDir, serveArgs);
  const identities = await Identities.open(service);
  after(async () => {
    process.stdout.write(`${counts.report(name)}\n`);
    try {
      await identities.deleteAllVtpms();
    } finally {
      await service.stop();
      await rm(workDir, { recursive: true, force: true });
    }
  });
  return { workDir, dataDir, service, identities };
}
