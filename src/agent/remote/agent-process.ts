/**
 * `vtpm agent`: this host's agent, serving a control plane elsewhere. It
 * runs vTPMs (the control plane manufactures them), keeps their working
 * copies, and reports every state change back; swtpm processes outlive a
 * restart of the agent, as they do under `vtpm serve`.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ApiClient } from '../../api/client.js';
import { requireSecureUrl } from '../../api/secure-url.js';
import { readOwnerOnlyFile } from '../../keys/owner-only-file.js';
import { type DataDirLock, lockDataDir } from '../data-dir-lock.js';
import { parseListen, qemuGroupFor, readTls, swtpmUserFor } from '../host-setup.js';
import { LocalHostAgent } from '../local-host-agent.js';
import { AgentMetrics } from '../../metrics/service-metrics.js';
import { buildAgentApi, reportIn, sendHeartbeats } from './agent-server.js';

export interface AgentOptions {
  name: string;
  dataDir: string;
  runDir: string;
  scratchDir: string;
  listen: string;
  controlPlane: string;
  tokenFile: string;
  /** The CA of the control plane's TLS certificate, when the system's CAs did not issue it. */
  caFile?: string | undefined;
  tls?: { certFile: string; keyFile: string } | undefined;
  swtpmUser?: string | undefined;
  qemuGroup?: string | undefined;
  maxVtpms?: number | undefined;
  logger: Logger;
}

export interface RunningAgent {
  url: string;
  close(): Promise<void>;
}

export async function startAgent(options: AgentOptions): Promise<RunningAgent> {
  // State, keys and the agent token travel to the control plane.
  requireSecureUrl('--control-plane', options.controlPlane, "the control plane's API (vTPM state travels to it)");
  // A bad --listen is refused before anything is opened.
  parseListen(options.listen);
  // The agent token is a credential: refused from a file others may read.
  const token = (
    await readOwnerOnlyFile(options.tokenFile, '--token-file', 'the token `vtpm host add` printed')
  ).trim();
  const controlPlane = await ApiClient.withToken({ url: options.controlPlane, token, caFile: options.caFile });
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const lock = await lockDataDir(options.dataDir, 'vtpm agent');
  try {
    return await startLocked(options, controlPlane, token, lock);
  } catch (error) {
    lock.release();
    throw error;
  }
}

async function startLocked(
  options: AgentOptions,
  controlPlane: ApiClient,
  token: string,
  lock: DataDirLock,
): Promise<RunningAgent> {
  const { host, port } = parseListen(options.listen);
  const https = options.tls && (await readTls(options.tls));
  const metrics = new AgentMetrics({ processMetrics: true });
  const scratchDir = join(options.scratchDir, `vtpm-agent-${process.pid}-${randomBytes(4).toString('hex')}`);
  const agent = await LocalHostAgent.open({
    dataDir: options.dataDir,
    runDir: options.runDir,
    scratchDir,
    logger: options.logger,
    hostName: options.name,
    swtpmUser: await swtpmUserFor(options.swtpmUser),
    qemuGroup: await qemuGroupFor(options.qemuGroup),
    syncTaken: (lagMs) => metrics.syncLag.observe(lagMs / 1000),
    maxVtpms: options.maxVtpms,
  });
  const app = await buildAgentApi({ agent, token, controlPlane, logger: options.logger, https, metrics });
  await app.listen({ host, port });
  const address = app.server.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  const url = `${https ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${bound}`;
  void reportIn(controlPlane, agent, options.logger);
  const stopHeartbeats = sendHeartbeats(controlPlane, agent.hostName, options.logger);
  return {
    url,
    async close() {
      stopHeartbeats();
      await app.close();
      await agent.close();
      await rm(scratchDir, { recursive: true, force: true });
      lock.release();
    },
  };
}
