/**
 * A launch's files in the run directory, beside swtpm's socket:
 *   <vm>.pid              swtpm's (it removes it when it exits by itself)
 *   <vm>.instance         which launch of swtpm it is
 *   <vm>.<kind>.lineage   what its next state report follows (lineage.ts)
 * What an agent that starts again finds of the launches before it.
 */
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { StateKind } from '../store/index.js';
import { freshLineage, type Lineage, openLineage } from './lineage.js';

export type Lineages = Record<StateKind, Lineage>;

const KINDS: readonly StateKind[] = ['tpm', 'nvram'];

export class LaunchFiles {
  constructor(private readonly runDir: string) {}

  pidFile(vm: string): string {
    return join(this.runDir, `${vm}.pid`);
  }

  private instanceFile(vm: string): string {
    return join(this.runDir, `${vm}.instance`);
  }

  private lineageFile(vm: string, kind: StateKind): string {
    return join(this.runDir, `${vm}.${kind}.lineage`);
  }

  /** The VMs a launch left files for. */
  async vms(): Promise<string[]> {
    const vms = (await readdir(this.runDir)).map((file) => /^(.+)\.(pid|instance)$/.exec(file)?.[1]);
    return [...new Set(vms)].filter((vm): vm is string => vm !== undefined);
  }

  /** The recorded launch of `vm` ('' when none is). */
  async instance(vm: string): Promise<string> {
    return (await readFile(this.instanceFile(vm), 'utf8').catch(() => '')).trim();
  }

  /** Synchronous, as the rest of a launch's preparation (working-copy.ts): one small write on the local disk. */
  recordInstance(vm: string, id: string = randomUUID()): string {
    writeFileSync(this.instanceFile(vm), `${id}\n`, { mode: 0o600 });
    return id;
  }

  /** What an earlier agent recorded of the launch's reports. */
  async recordedLineages(vm: string): Promise<Lineages> {
    return {
      tpm: await openLineage(this.lineageFile(vm, 'tpm')),
      nvram: await openLineage(this.lineageFile(vm, 'nvram')),
    };
  }

  /** A new launch's: whatever an earlier launch left is not its. */
  freshLineages(vm: string): Lineages {
    return { tpm: freshLineage(this.lineageFile(vm, 'tpm')), nvram: freshLineage(this.lineageFile(vm, 'nvram')) };
  }

  async remove(vm: string): Promise<void> {
    await rm(this.pidFile(vm), { force: true });
    await rm(this.instanceFile(vm), { force: true });
    for (const kind of KINDS) await rm(this.lineageFile(vm, kind), { force: true });
  }
}
