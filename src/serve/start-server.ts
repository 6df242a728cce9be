/**
 * `vtpm serve`: the control plane with, on a single machine, the host agent
 * in the same process. Embedded defaults: SQLite and the local key manager in
 * the data directory.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { parseListen, qemuGroupFor, readTls, swtpmUserFor } from '../agent/host-setup.js';
import { type DataDirLock, lockDataDir } from '../agent/data-dir-lock.js';
import { LocalHostAgent } from '../agent/local-host-agent.js';
import { AuditLog } from '../audit/audit-log.js';
import { AuditedKeyManager } from '../audit/audited-key-manager.js';
import { ensureAdminToken } from '../auth/tokens.js';
import { Fleet } from '../fleet/fleet.js';
import { buildHttpApi } from '../http/app.js';
import { removeLeftoverTemporaries } from '../keys/files.js';
import { openKeyManager, type Pkcs11Settings, plaintextMasterKeyFile } from '../keys/index.js';
import { finishSecretReplacements, rotateByReplacement } from '../keys/rotation-by-replacement.js';
import { MeteredKeyManager } from '../metrics/metered-key-manager.js';
import { ControlPlaneMetrics } from '../metrics/service-metrics.js';
import { controlPlane } from '../orchestration/control-plane.js';
import { reconcile } from '../orchestration/reconcile.js';
import { ingestExit, ingestStateChange } from '../orchestration/state-ingest.js';
import { ProvisioningPool } from '../pool/provisioning-pool.js';
import { openStore } from '../store/index.js';
import { uriCarriesPassword } from '../store/postgresql/connection-string.js';
import { CertificateAuthority } from '../swtpm/certificate-authority.js';
import { defaultCaName } from '../swtpm/ca-name.js';
import type { RetentionPolicy } from '../vault/retention.js';
import { StateVault } from '../vault/state-vault.js';
import { caPasswords } from './ca-passwords.js';

export interface ServeOptions {
  dataDir: string;
  /** A postgresql:// connection string; undefined: the embedded SQLite file in the data directory. */
  database?: string | undefined;
  listen: string;
  runDir: string;
  scratchDir: string;
  keyManager: string;
  /** Which generations of each vTPM's state the vault keeps. */
  retention: RetentionPolicy;
  /** TPMs of each version kept manufactured ahead of demand; 0 turns the pool off. */
  poolSize: number;
  /** How many vTPMs this host may hold; undefined: no limit. */
  maxVtpms?: number | undefined;
  /** Pause after each background manufacture, in ms (0: none). */
  poolRefillPauseMs?: number;
  /** --key-manager barbican: Barbican's endpoint. */
  barbicanUrl?: string | undefined;
  /** --key-manager pkcs11: the module, token, PIN file and key label. */
  pkcs11?: Pkcs11Settings | undefined;
  /** The local key manager seals its master key to this TPM (tpm2-tools TCTI). */
  sealToTpm?: string | undefined;
  /** PEM certificate chain and key: the API listens on HTTPS. */
  tls?: { certFile: string; keyFile: string } | undefined;
  /** Who swtpm runs as when the service runs as root (default tss, as libvirt does; root keeps it root). */
  swtpmUser?: string | undefined;
  /** The group QEMU runs in (libvirt's libvirt-qemu), with which sockets and variable stores are shared. */
  qemuGroup?: string | undefined;
  /** The deployment's name, which its EK and platform CA carries when it is created (default: defaultCaName). */
  caName?: string | undefined;
  /** PEM file of the CA that issued remote agents' TLS certificates, when the system's CAs did not. */
  agentCaFile?: string | undefined;
  /** A remote host is down after this long without a heartbeat from its agent. */
  hostDownAfterMs?: number | undefined;
  logger: Logger;
  version: string;
}

export interface RunningServer {
  url: string;
  adminTokenPath: string;
  adminTokenCreated: boolean;
  close(): Promise<void>;
}

const TMPFS_MAGIC = 0x01021994;

async function checkScratchDir(path: string, logger: Logger): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  if ((await statfs(path)).type !== TMPFS_MAGIC) {
    logger.warn(
      { scratchDir: path },
      'the scratch directory is not on tmpfs: CA key passwords will briefly touch a disk; ' +
        'pass --scratch-dir on a memory file system',
    );
  }
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const lock = await lockDataDir(options.dataDir, 'vtpm serve');
  await removeLeftoverTemporaries(options.dataDir);
  try {
    return await startLocked(options, lock);
  } catch (error) {
    lock.release();
    throw error;
  }
}

async function startLocked(options: ServeOptions, lock: DataDirLock): Promise<RunningServer> {
  const { logger } = options;
  const { host, port } = parseListen(options.listen);
  const https = options.tls && (await readTls(options.tls));
  const store = await openStore(options.dataDir, options.database, (migration) =>
    logger.info({ migration }, 'database migration applied'),
  );
  logger.info({ database: store.description }, 'database open');
  if (options.database !== undefined && uriCarriesPassword(options.database))
    logger.warn(
      'the database password is in --db, where process lists and unit files show it: ' +
        'put it in ~/.pgpass (or PGPASSWORD) and leave it out of the connection string',
    );
  // A scratch directory of its own per process: two services on one host never share one.
  const scratchDir = join(options.scratchDir, `vtpm-${process.pid}-${randomBytes(4).toString('hex')}`);
  await checkScratchDir(scratchDir, logger);
  const audit = new AuditLog(store);
  const hostTpm = options.sealToTpm === undefined ? undefined : { tcti: options.sealToTpm, scratchDir };
  const keyManager = {
    kind: options.keyManager,
    dataDir: options.dataDir,
    hostTpm,
    barbicanUrl: options.barbicanUrl,
    pkcs11: options.pkcs11,
  };
  const opened = await openKeyManager(keyManager).catch(async (error: unknown) => {
    await store.close();
    await rm(scratchDir, { recursive: true, force: true });
    throw error;
  });
  const plaintextKey = plaintextMasterKeyFile(keyManager);
  if (plaintextKey !== undefined)
    logger.warn(
      { file: plaintextKey },
      'the master key is in plaintext on disk: whoever reads it reads every vTPM; ' +
        'start with --seal-to-tpm (the host TPM seals it), or use --key-manager pkcs11',
    );
  const metrics = new ControlPlaneMetrics({ processMetrics: true });
  const keys = new AuditedKeyManager(new MeteredKeyManager(opened, metrics), audit, (audited) =>
    rotateByReplacement(store, audited),
  );
  await finishSecretReplacements(store, keys);
  const authority = new CertificateAuthority(
    join(options.dataDir, 'ca'),
    options.caName ?? defaultCaName(),
    () => caPasswords(store, keys),
    logger.child({ component: 'ca' }),
  );
  const agent = await LocalHostAgent.open({
    dataDir: options.dataDir,
    runDir: options.runDir,
    scratchDir,
    authority,
    logger: logger.child({ component: 'agent' }),
    swtpmUser: await swtpmUserFor(options.swtpmUser),
    qemuGroup: await qemuGroupFor(options.qemuGroup),
    syncTaken: (lagMs) => metrics.syncLag.observe(lagMs / 1000),
    maxVtpms: options.maxVtpms,
  });
  const vault = new StateVault(store, options.retention, metrics.generationCommitted);
  const pool =
    options.poolSize > 0
      ? // 2.0 first: it is what Windows 11 and most new guests ask for.
        new ProvisioningPool(
          store,
          keys,
          agent,
          logger.child({ component: 'pool' }),
          options.poolSize,
          ['2.0', '1.2'],
          options.poolRefillPauseMs ?? 0,
        )
      : undefined;
  const controlLogger = logger.child({ component: 'control' });
  const fleet = new Fleet({
    store,
    keys,
    logger: controlLogger,
    manufacturer: agent,
    agentCaFile: options.agentCaFile,
    hostDownAfterMs: options.hostDownAfterMs,
    placementRefused: metrics.placementRefused,
  });
  const cp = controlPlane({
    store,
    keys,
    vault,
    fleet,
    audit,
    pool,
    metrics,
    logger: controlLogger,
    dataDir: options.dataDir,
  });
  agent.onStateChange((change) => ingestStateChange(cp, agent.hostName, change));
  agent.onExit((exit) => {
    ingestExit(cp, agent.hostName, exit).catch((error: unknown) =>
      controlLogger.error({ vm: exit.vm, host: agent.hostName, err: error }, 'an exit could not be recorded'),
    );
  });
  await fleet.connectRegistered();
  await fleet.describeAll();
  await reconcile(cp);
  const admin = await ensureAdminToken(store, options.dataDir);
  pool?.refill();

  let app: FastifyInstance;
  try {
    app = await buildHttpApi({ cp, logger, version: options.version, https });
    await app.listen({ host, port });
  } catch (error) {
    await pool?.close();
    await agent.close();
    await keys.close();
    await store.close();
    throw error;
  }
  const address = app.server.address();
  const boundPort = typeof address === 'object' && address ? address.port : port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `${options.tls ? 'https' : 'http'}://${shownHost}:${boundPort}`,
    adminTokenPath: admin.path,
    adminTokenCreated: admin.created,
    async close() {
      await app.close();
      await cp.retries.close();
      await pool?.close();
      await agent.close();
      await keys.close();
      await store.close();
      await rm(scratchDir, { recursive: true, force: true });
      lock.release();
    },
  };
}
