/**
 * Orchestration of vTPMs: the one place that decides what create, start,
 * stop and delete mean, in which order the key manager, the store and the
 * host agent are touched, and how a failure half-way is undone.
 *
 * Ordering rules that keep "nothing half-done, nothing acknowledged lost":
 * - create writes a `creating` row first, so a crash mid-create is rolled back
 *   by reconcile() rather than leaving an orphaned secret or state;
 * - delete destroys the secret first (crypto-erase), then the state, then the row;
 * - status moves are compare-and-set, and one VM's operations are serialised.
 */
import type { Logger } from 'pino';
import { randomBytes } from 'node:crypto';
import type { HostAgent, HostDescription, StateChange, VtpmExit } from '../agent/host-agent.js';
import { RemoteHostAgent } from '../agent/remote/remote-host-agent.js';
import { ApiClient } from '../api/client.js';
import { IntegrityError, InvalidArgumentError, NotFoundError, StateConflictError } from '../errors.js';
import { libvirtTpmXml } from '../hypervisor/libvirt.js';
import { libvirtFirmwareXml, qemuFirmwareArgs } from '../hypervisor/ovmf.js';
import { qemuTpmArgs } from '../hypervisor/qemu.js';
import type { KeyManager } from '../keys/key-manager.js';
import type { EkCertificate } from '../swtpm/manufacture.js';
import { resolveFirmware, type Firmware, type FirmwareRequest } from '../tpm-spec/firmware.js';
import { resolveTpmSpec, type SpecRequest } from '../tpm-spec/resolve.js';
import { TPM_VERSIONS, isTpmModel, isTpmVersion, type TpmSpec } from '../tpm-spec/tpm-spec.js';
import { DEPLOYMENT_PROJECT, type GenerationSummary, type StateKind, type Store, type VtpmRecord } from '../store/index.js';
import { readBundle, writeBundle, type BundleGeneration } from '../vault/bundle.js';
import { vaultKeyFrom, type StateVault } from '../vault/state-vault.js';
import { openEkCertificates, sealEkCertificates, toPem } from '../vault/ek-certificates.js';
import { KeyedLock } from '../orchestration/keyed-lock.js';
import { openPoolEntry, type ProvisioningPool } from '../pool/provisioning-pool.js';
import { resolveSecretSecurity, type SecretSecurity, type SecretSecurityRequest } from '../tpm-spec/secret-security.js';
import { decideOnVtpm, enforceOnVtpm, seesAllProjects, type Principal, type VtpmOperation } from '../auth/policy.js';
import { chooseHost } from '../fleet/scheduler.js';
import { storeAnew } from '../keys/rotation-by-replacement.js';

export interface CreateRequest extends SpecRequest, FirmwareRequest, SecretSecurityRequest {
  vm: string;
}

/** A TPM another manager created, to be taken over as it is. */
export interface AdoptRequest extends SpecRequest, SecretSecurityRequest {
  vm: string;
  /** Where it comes from, recorded with the vTPM (e.g. libvirt:DOMAIN). */
  source: string;
  state: Buffer;
  sourcePassphrase?: Buffer | undefined;
}

/** What the API shows of a vTPM: never the secret reference or sealed data. */
export interface VtpmView {
  vm: string;
  project: string;
  version: string;
  model: string;
  firmware: string;
  secure_boot: boolean;
  host: string;
  status: string;
  secret_security: string;
  socket: string | null;
  spec_sources: unknown;
  created_at: string;
  updated_at: string;
}

/** How a live migration ended: the guest runs on the destination, or stays on the source. */
export type MigrationOutcome = 'completed' | 'abandoned';

/** Which host the caller acts from (the libvirt hook on a host says so): start there, stop only there. */
export interface HostScope {
  host?: string | undefined;
}

export type MigrationView = VtpmView & Attachment & { from: string; to: string };

export interface Attachment {
  socket: string;
  qemu_args: string[];
  libvirt_xml: string;
  /** The <loader> and <nvram> of the domain's <os>, for UEFI guests. */
  libvirt_firmware_xml: string | null;
}

export interface GenerationView {
  generation: number;
  kind: string;
  size: number;
  digest: string;
  reason: string;
  created_at: string;
}

const generationView = (g: GenerationSummary): GenerationView => ({
  generation: g.generation,
  kind: g.kind,
  size: g.size,
  digest: g.digest,
  reason: g.reason,
  created_at: g.createdAt,
});

export interface HostView {
  name: string;
  traits: string[];
  vtpms: number;
  running: number;
  capabilities: unknown;
  last_seen: string;
  /** A remote agent's API; null for the control plane's own host. */
  agent_url: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function normalizeVm(vm: string): string {
  const normalized = vm.trim().toLowerCase();
  if (!UUID.test(normalized)) throw new InvalidArgumentError('vm', 'a VM UUID such as 6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f', vm);
  return normalized;
}

function specOf(record: VtpmRecord): TpmSpec {
  if (!isTpmVersion(record.version) || !isTpmModel(record.model)) {
    throw new StateConflictError(`vTPM ${record.vm} has an unknown spec in the store (${record.version}/${record.model})`);
  }
  return { version: record.version, model: record.model };
}

const firmwareOf = (record: VtpmRecord): Firmware => ({ type: record.firmware === 'uefi' ? 'uefi' : 'bios', secureBoot: record.secureBoot });

const targetOf = (record: VtpmRecord) => ({ vm: record.vm, project: record.project, secretSecurity: record.secretSecurity as SecretSecurity });

function view(record: VtpmRecord): VtpmView {
  return {
    vm: record.vm,
    project: record.project,
    version: record.version,
    model: record.model,
    firmware: record.firmware,
    secure_boot: record.secureBoot,
    host: record.host,
    status: record.status,
    secret_security: record.secretSecurity,
    socket: record.status === 'running' ? record.socket : null,
    spec_sources: record.specClaims,
    created_at: record.createdAt,
    updated_at: record.updatedAt,
  };
}

/** An agent's API carries state keys: HTTPS, or HTTP on loopback only. */
function checkAgentUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError('url', "the host agent's API as https://HOST:PORT", url);
  }
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(parsed.hostname);
  if (parsed.protocol !== 'https:' && !(parsed.protocol === 'http:' && loopback)) {
    throw new InvalidArgumentError('url', 'https://HOST:PORT: vTPM keys travel to the agent (http only on loopback)', url);
  }
  return parsed.origin;
}

const agentToken = (secret: Buffer) => secret.toString('base64url');

export class VtpmService {
  private readonly lock = new KeyedLock();
  /**
   * Vault keys of running vTPMs, in memory only: state keeps syncing while
   * they run even if the key manager is briefly unreachable.
   */
  private readonly runningVaultKeys = new Map<string, Buffer>();

  private readonly agents = new Map<string, HostAgent>();
  /** Live migrations under way, by VM, with the destination's reports held until the source's or the destination's swtpm exits. */
  private readonly migrations = new Map<string, { held: Map<StateKind, StateChange> }>();

  /**
   * `manufacturer` is the control plane's own host: it manufactures and adopts
   * every vTPM (the deployment's EK CA is there) and runs vTPMs like any other
   * host; hosts with a remote agent join through addAgent().
   */
  constructor(
    private readonly store: Store,
    private readonly keys: KeyManager,
    private readonly vault: StateVault,
    private readonly manufacturer: HostAgent,
    private readonly logger: Logger,
    private readonly pool?: ProvisioningPool,
    /** The CA that issued remote agents' TLS certificates, when the system's CAs did not. */
    private readonly agentCaFile?: string,
  ) {
    this.addAgent(manufacturer);
  }

  /** A host's agent joins (or replaces the one of the same name); its reports are taken from now on. */
  addAgent(agent: HostAgent): void {
    this.agents.set(agent.hostName, agent);
    agent.onStateChange((change) => this.onStateChange(agent.hostName, change));
    agent.onExit((exit) => void this.onSwtpmExit(agent.hostName, exit).catch((error: unknown) => this.logger.error({ vm: exit.vm, host: agent.hostName, err: error }, 'an exit could not be recorded')));
  }

  private async vaultKeyOf(record: VtpmRecord): Promise<Buffer> {
    const secret = await this.keys.readSecret(record.secretRef);
    try {
      return vaultKeyFrom(secret);
    } finally {
      secret.fill(0);
    }
  }

  private agentFor(host: string): HostAgent {
    const agent = this.agents.get(host);
    if (!agent) throw new StateConflictError(`host ${host} has no agent connected to this control plane`, { host });
    return agent;
  }

  /** The vTPM, if the principal may do `operation` to it; another project's vTPM it may not see is reported exactly like a missing one. */
  private async load(vm: string, actor: Principal, operation: VtpmOperation): Promise<VtpmRecord> {
    const record = await this.store.getVtpm(normalizeVm(vm));
    if (!record) throw new NotFoundError('vTPM for VM', vm);
    enforceOnVtpm(actor, operation, targetOf(record));
    return record;
  }

  /** Registers every connected host's traits and capabilities. */
  async registerHosts(): Promise<void> {
    for (const agent of this.agents.values()) {
      try {
        const description = await agent.describe();
        await this.store.upsertHost({ name: description.name, traits: description.traits, capabilities: description.capabilities });
      } catch (error) {
        if (agent === this.manufacturer) throw error;
        this.logger.warn({ host: agent.hostName, err: error }, 'a remote agent did not answer; it is used again once it reports in');
      }
    }
  }

  /**
   * Brings the store in line with reality after a restart: finishes or rolls
   * back operations a crash interrupted, and marks vTPMs running or stopped by
   * what the agents actually run.
   */
  async reconcile(): Promise<void> {
    for (const record of await this.store.listVtpms({ statuses: ['creating', 'deleting'] })) {
      this.logger.warn({ vm: record.vm, status: record.status }, 'finishing an operation interrupted by a restart');
      await this.rollBack(record);
    }
    const runningOn = new Map<string, Set<string>>();
    for (const agent of this.agents.values()) {
      try {
        runningOn.set(agent.hostName, new Set((await agent.running()).map((instance) => instance.vm)));
      } catch (error) {
        // What a host that does not answer runs is unknown: its vTPMs keep the status they have.
        this.logger.warn({ host: agent.hostName, err: error }, 'a host did not say what it runs; its vTPMs are left as they are');
      }
    }
    const runs = (host: string, vm: string) => runningOn.get(host)?.has(vm) ?? false;
    // A live migration the control plane was down for: the swtpms that still run tell how it ended.
    for (const record of await this.store.listVtpms({ statuses: ['migrating'] })) {
      const to = record.migratingTo;
      this.runningVaultKeys.set(record.vm, await this.vaultKeyOf(record));
      if (to === null || !runningOn.has(record.host) || !runningOn.has(to) || (runs(record.host, record.vm) && runs(to, record.vm))) {
        this.awaitMigration(record.vm);
        continue;
      }
      await this.settleMigration(record, to, runs(to, record.vm) ? 'completed' : 'abandoned');
    }
    for (const record of await this.store.listVtpms({ statuses: ['starting', 'running', 'stopping', 'stopped'] })) {
      if (!runningOn.has(record.host)) continue;
      const isRunning = runs(record.host, record.vm);
      // Only a vTPM that was running can have state the vault has not seen; a `starting` one may
      // still hold an older working copy (from before a restore, say), which must not come back.
      if (!isRunning && (record.status === 'running' || record.status === 'stopping')) await this.recoverWorkingState(record);
      const status = isRunning ? 'running' : 'stopped';
      if (record.status !== status) {
        await this.store.updateVtpm(record.vm, { status, socket: isRunning ? this.agentFor(record.host).devicePaths(record.vm).socket : null });
      }
      if (isRunning) {
        // Changes made while the control plane was down are committed now. A remote agent reports them
        // through the API, which listens only once this is done: its resync is not waited for.
        this.runningVaultKeys.set(record.vm, await this.vaultKeyOf(record));
        const resynced = this.agentFor(record.host).resync(record.vm);
        if (record.host === this.manufacturer.hostName) await resynced;
        else void resynced.catch((error: unknown) => this.logger.warn({ vm: record.vm, host: record.host, err: error }, 'a remote host could not report its state after the restart'));
      }
    }
  }

  /**
   * A vTPM whose guest exited while the control plane was down: its last
   * state is only in the host's working copy. It was started from the vault's
   * head and only moves forward, so a copy that differs from the head is newer.
   */
  private async recoverWorkingState(record: VtpmRecord): Promise<void> {
    const working = await this.agentFor(record.host).workingState(record.vm, specOf(record));
    const vaultKey = await this.vaultKeyOf(record);
    try {
      for (const [kind, data] of Object.entries(working) as Array<[StateKind, Buffer]>) {
        const generation = await this.vault.commit(record.vm, kind, vaultKey, data, 'stop');
        if (generation !== undefined) this.logger.warn({ vm: record.vm, kind, generation }, 'committed the state a guest left while the control plane was down');
      }
    } finally {
      vaultKey.fill(0);
    }
  }

  /**
   * A host reports a change of a vTPM's state. Only the host the vTPM runs on
   * is heard. A live migration's destination is held to: its newest report of
   * each kind is kept (in memory, answered at once, so that the destination's
   * agent goes on to report its swtpm's exit) and committed if the migration
   * completes, dropped if it is abandoned.
   */
  private async onStateChange(host: string, change: StateChange): Promise<void> {
    const record = await this.store.getVtpm(change.vm);
    if (record?.status === 'migrating' && record.migratingTo === host) {
      const migration = this.migrations.get(change.vm);
      if (migration) migration.held.set(change.kind, change);
      else this.logger.warn({ vm: change.vm, host }, 'a migration destination reported state with no migration under way; not taken');
      return;
    }
    if (record && record.host !== host) {
      throw new StateConflictError(`vTPM ${change.vm} runs on ${record.host}, not on ${host}: ${host}'s report of its state is not taken`, { vm: change.vm, host });
    }
    await this.commitChange(change);
  }

  private async commitChange(change: StateChange): Promise<void> {
    const vaultKey = this.runningVaultKeys.get(change.vm);
    if (!vaultKey) {
      this.logger.error({ vm: change.vm }, 'a state change arrived for a vTPM with no vault key in memory; it is not committed');
      return;
    }
    try {
      const generation = await this.vault.commit(change.vm, change.kind, vaultKey, change.data, change.final ? 'stop' : 'sync');
      if (generation !== undefined) this.logger.debug({ vm: change.vm, kind: change.kind, generation, final: change.final }, 'state generation committed');
    } catch (error) {
      this.logger.error({ vm: change.vm, err: error }, 'a state change could not be committed to the vault; the host keeps its copy');
      throw error;
    }
  }

  /**
   * Not under the VM's lock: stop() holds it while it waits for this very exit.
   *
   * During a live migration the exits decide its outcome: QEMU leaves the
   * source only once the guest runs on the destination (or when it dies), and
   * leaves the destination when the migration failed. So the source's swtpm
   * exiting completes the migration, the destination's abandons it.
   */
  private async onSwtpmExit(host: string, exit: VtpmExit): Promise<void> {
    const record = await this.store.getVtpm(exit.vm);
    if (!record) return;
    if (record.status === 'migrating' && record.migratingTo !== null && (host === record.host || host === record.migratingTo)) {
      await this.settleMigration(record, record.migratingTo, host === record.host ? 'completed' : 'abandoned');
      return;
    }
    if (record.host !== host) return;
    this.runningVaultKeys.get(exit.vm)?.fill(0);
    this.runningVaultKeys.delete(exit.vm);
    await this.store.updateVtpm(exit.vm, { status: 'stopped', socket: null }, ['running', 'stopping']);
  }

  /** From now on the destination's reports are held until the migration is settled. */
  private awaitMigration(vm: string): void {
    this.migrations.set(vm, { held: new Map() });
  }

  private async settleMigration(record: VtpmRecord, destination: string, outcome: MigrationOutcome): Promise<void> {
    const patch = outcome === 'completed'
      ? { status: 'running' as const, host: destination, migratingTo: null, socket: this.agentFor(destination).devicePaths(record.vm).socket }
      : { status: 'running' as const, migratingTo: null };
    await this.store.updateVtpm(record.vm, patch, ['migrating']);
    const held = this.migrations.get(record.vm)?.held ?? new Map<StateKind, StateChange>();
    this.migrations.delete(record.vm);
    if (outcome === 'completed') for (const change of held.values()) await this.commitChange(change);
    this.logger.info({ vm: record.vm, from: record.host, to: destination, outcome }, outcome === 'completed' ? 'live migration completed' : 'live migration abandoned');
    if (outcome === 'abandoned') {
      // The destination's copy is not the vTPM's: it goes, and the source runs on.
      await this.agentFor(destination).destroy(record.vm).catch((error: unknown) => this.logger.warn({ vm: record.vm, host: destination, err: error }, "the abandoned destination's copy could not be removed"));
    }
  }

  private async placeFor(spec: TpmSpec): Promise<string> {
    const counts = await this.store.countVtpmsByHost();
    const hosts = (await this.store.listHosts()).filter((host) => this.agents.has(host.name));
    return chooseHost(spec, hosts.map((h) => ({ name: h.name, traits: h.traits, vtpms: counts.get(h.name)?.total ?? 0 }))).name;
  }

  async create(request: CreateRequest, actor: Principal): Promise<VtpmView> {
    const vm = normalizeVm(request.vm);
    const { spec, claims } = resolveTpmSpec(request);
    const firmware = resolveFirmware(request);
    const secretSecurity = resolveSecretSecurity(request);
    return this.lock.run(vm, async () => {
      if (await this.store.getVtpm(vm)) throw new StateConflictError(`a vTPM for VM ${vm} already exists`, { vm });
      const row = this.newRow(vm, spec, claims, firmware, secretSecurity, await this.placeFor(spec), actor);
      const pooled = this.pool ? await this.store.claimPoolEntry(spec.version, (entry) => row(entry.secretRef)) : undefined;
      let record = pooled ? row(pooled.secretRef) : await this.insertWithNewSecret(vm, row, actor);
      try {
        const secret = await this.keys.readSecret(record.secretRef);
        if (pooled && this.keys.ownerScoped) {
          record = { ...record, secretRef: await storeAnew(this.store, this.keys, { ref: record.secretRef, label: `vtpm-${vm}`, project: actor.project }, secret) };
        }
        const tpm = pooled ? openPoolEntry(pooled, secret) : await this.manufacturer.manufacture({ vm, spec, stateKey: secret });
        const ready = await this.finishCreate(record, secret, tpm.state, tpm.ekCertificates, firmware);
        this.logger.info({ vm, host: record.host, version: spec.version, model: spec.model, pooled: pooled !== undefined }, 'vTPM created');
        return view(ready);
      } catch (error) {
        this.logger.error({ vm, err: error }, 'vTPM creation failed; rolling back');
        await this.rollBack(record);
        throw error;
      } finally {
        if (pooled) this.pool?.refill();
      }
    });
  }

  /**
   * Takes over a TPM another manager created (libvirt's swtpm state): same
   * EK, NV contents and PCR banks for the guest, now under a secret of its own
   * in the key manager and in the vault. The variable store stays where it is.
   */
  async adopt(request: AdoptRequest, actor: Principal): Promise<VtpmView> {
    const vm = normalizeVm(request.vm);
    const { spec, claims } = resolveTpmSpec(request);
    const firmware = resolveFirmware({});
    const secretSecurity = resolveSecretSecurity(request);
    return this.lock.run(vm, async () => {
      if (await this.store.getVtpm(vm)) throw new StateConflictError(`a vTPM for VM ${vm} already exists`, { vm });
      const row = this.newRow(vm, spec, { ...claims, adopted_from: request.source }, firmware, secretSecurity, await this.placeFor(spec), actor);
      const record = await this.insertWithNewSecret(vm, row, actor);
      try {
        const secret = await this.keys.readSecret(record.secretRef);
        const tpm = await this.manufacturer.adopt({ vm, spec, stateKey: secret, state: request.state, sourcePassphrase: request.sourcePassphrase });
        const ready = await this.finishCreate(record, secret, tpm.state, tpm.ekCertificates, firmware, 'adopt');
        this.logger.info({ vm, host: record.host, version: spec.version, from: request.source, ek_certificates: tpm.ekCertificates.length }, 'vTPM adopted');
        return view(ready);
      } catch (error) {
        this.logger.error({ vm, err: error }, 'vTPM adoption failed; rolling back');
        await this.rollBack(record);
        throw error;
      }
    });
  }

  private newRow(vm: string, spec: TpmSpec, claims: VtpmRecord['specClaims'], firmware: Firmware, secretSecurity: SecretSecurity, host: string, actor: Principal): (secretRef: string) => Omit<VtpmRecord, 'createdAt' | 'updatedAt'> {
    return (secretRef) => ({
      vm, project: actor.project, version: spec.version, model: spec.model, firmware: firmware.type, secureBoot: firmware.secureBoot,
      host, status: 'creating', secretRef, specClaims: claims, ekCertificates: null, socket: null, secretSecurity, migratingTo: null,
    });
  }

  private async insertWithNewSecret(vm: string, row: (secretRef: string) => Omit<VtpmRecord, 'createdAt' | 'updatedAt'>, actor: Principal): Promise<VtpmRecord> {
    const record = row(await this.keys.createSecret(`vtpm-${vm}`, { project: actor.project }));
    try {
      return await this.store.insertVtpm(record);
    } catch (error) {
      await this.keys.deleteSecret(record.secretRef);
      throw error;
    }
  }

  /** The first generations in the vault, the sealed EK certificates, and `stopped`. */
  private async finishCreate(record: Omit<VtpmRecord, 'createdAt' | 'updatedAt'>, secret: Buffer, state: Buffer, certificates: EkCertificate[], firmware: Firmware, reason: 'create' | 'adopt' = 'create'): Promise<VtpmRecord> {
    const vaultKey = vaultKeyFrom(secret);
    try {
      await this.vault.commit(record.vm, 'tpm', vaultKey, state, reason);
      if (firmware.type === 'uefi') await this.vault.commit(record.vm, 'nvram', vaultKey, await this.manufacturer.defaultVariableStore(firmware.secureBoot), 'create');
      const ekCertificates = sealEkCertificates(secret, record.vm, certificates);
      const ready = await this.store.updateVtpm(record.vm, { status: 'stopped', ekCertificates }, ['creating']);
      if (!ready) throw new StateConflictError(`vTPM ${record.vm} changed while it was being created`, { vm: record.vm });
      return ready;
    } finally {
      vaultKey.fill(0);
      secret.fill(0);
    }
  }

  /** Crypto-erase first: once the secret is gone, any copy of the state is noise. */
  /**
   * Undoes what a failed create, adoption or import left. When that fails too
   * (the key manager is unreachable, say), the vTPM is left `deleting`: the
   * service's next start, or `vtpm delete`, finishes it; the failure that
   * caused the rollback stays the one reported.
   */
  private async rollBack(record: Pick<VtpmRecord, 'vm' | 'host' | 'secretRef'>): Promise<void> {
    try {
      await this.erase(record);
    } catch (error) {
      this.logger.error({ vm: record.vm, err: error }, 'rollback incomplete: the vTPM stays deleting until `vtpm delete` or the next start finishes it');
      await this.store.updateVtpm(record.vm, { status: 'deleting' });
    }
  }

  private async erase(record: Pick<VtpmRecord, 'vm' | 'host' | 'secretRef'>): Promise<void> {
    await this.keys.deleteSecret(record.secretRef);
    if (this.agents.has(record.host)) await this.agentFor(record.host).destroy(record.vm);
    await this.vault.forget(record.vm);
    await this.store.deleteVtpm(record.vm);
  }

  async list(actor: Principal): Promise<VtpmView[]> {
    const records = await this.store.listVtpms();
    return records.filter((r) => decideOnVtpm(actor, 'read', targetOf(r)) === 'allow').map(view);
  }

  async show(vm: string, actor: Principal): Promise<VtpmView> {
    return view(await this.load(vm, actor, 'read'));
  }

  /**
   * Starts the vTPM from the vault's newest generation, on its host or on
   * `scope.host`: a stopped vTPM's state is in the vault, not on a host, so it
   * may start on any host that offers what it needs (a cold migration is
   * just that). The destination of a live migration under way answers with
   * its socket: its QEMU is the one being prepared.
   */
  async start(vm: string, actor: Principal, scope: HostScope = {}): Promise<VtpmView & Attachment> {
    const record = await this.load(vm, actor, 'operate');
    return this.lock.run(record.vm, async () => {
      let current = await this.load(record.vm, actor, 'operate');
      if (current.status === 'migrating' && scope.host !== undefined && scope.host === current.migratingTo) {
        return { ...view(current), ...this.attachment({ ...current, host: scope.host }) };
      }
      if (current.status === 'running') throw new StateConflictError(`vTPM ${current.vm} is already running on ${current.host}`, { vm: current.vm, status: current.status });
      const claimed = await this.store.updateVtpm(current.vm, { status: 'starting' }, ['stopped']);
      if (!claimed) throw new StateConflictError(`vTPM ${current.vm} is ${current.status}; only a stopped vTPM can be started`, { vm: current.vm, status: current.status });
      if (scope.host !== undefined && scope.host !== current.host) {
        try {
          await this.requireHostFor(current, scope.host);
        } catch (error) {
          await this.store.updateVtpm(current.vm, { status: 'stopped' }, ['starting']);
          throw error;
        }
        current = (await this.store.updateVtpm(current.vm, { host: scope.host }, ['starting'])) ?? current;
        this.logger.info({ vm: current.vm, host: scope.host }, 'vTPM moves to another host while stopped');
      }
      const spec = specOf(current);
      try {
        const secret = await this.keys.readSecret(current.secretRef);
        const vaultKey = vaultKeyFrom(secret);
        // Always the vault's newest generation, verified, never whatever a host's disk holds.
        const newest = await this.vault.newest(current.vm, 'tpm', vaultKey);
        if (!newest) throw new StateConflictError(`vTPM ${current.vm} has no state in the vault`, { vm: current.vm });
        const firmware = firmwareOf(current);
        const nvram = firmware.type === 'uefi' ? await this.vault.newest(current.vm, 'nvram', vaultKey) : undefined;
        if (firmware.type === 'uefi' && !nvram) throw new StateConflictError(`UEFI guest ${current.vm} has no variable store in the vault`, { vm: current.vm });
        this.runningVaultKeys.set(current.vm, vaultKey);
        const started = await this.agentFor(current.host).start({ vm: current.vm, spec, firmware, stateKey: secret, state: newest.data, nvram: nvram?.data });
        secret.fill(0);
        const running = await this.store.updateVtpm(current.vm, { status: 'running', socket: started.socket }, ['starting']);
        this.logger.info({ vm: current.vm, host: current.host, pid: started.pid }, 'vTPM started');
        return { ...view(running ?? current), ...this.attachment(current) };
      } catch (error) {
        this.runningVaultKeys.delete(current.vm);
        await this.store.updateVtpm(current.vm, { status: 'stopped', socket: null }, ['starting']);
        throw error;
      }
    });
  }

  /**
   * Stops the vTPM. With `scope.host`, only if it runs there: a host's QEMU
   * that went away after a live migration must not stop the vTPM now serving
   * the guest elsewhere. The destination of a migration under way stops its
   * copy, which abandons the migration.
   */
  async stop(vm: string, actor: Principal, scope: HostScope = {}): Promise<VtpmView> {
    const record = await this.load(vm, actor, 'operate');
    return this.lock.run(record.vm, async () => {
      const current = await this.load(record.vm, actor, 'operate');
      if (current.status === 'migrating') {
        // The swtpm exits settle a migration. The destination's QEMU going away abandons it; the source's is how it completes.
        if (scope.host === undefined) throw new StateConflictError(`vTPM ${current.vm} is migrating from ${current.host} to ${current.migratingTo}; it runs on one of them once either QEMU leaves`, { vm: current.vm, status: current.status });
        if (scope.host === current.migratingTo) await this.agentFor(scope.host).stop(current.vm);
        return view(current);
      }
      if (scope.host !== undefined && scope.host !== current.host) return view(current);
      if (current.status === 'stopped') return view(current);
      if (!(await this.store.updateVtpm(current.vm, { status: 'stopping' }, ['running']))) {
        throw new StateConflictError(`vTPM ${current.vm} is ${current.status}; only a running vTPM can be stopped`, { vm: current.vm, status: current.status });
      }
      await this.agentFor(current.host).stop(current.vm);
      const stopped = await this.store.updateVtpm(current.vm, { status: 'stopped', socket: null }, ['stopping', 'stopped']);
      this.logger.info({ vm: current.vm }, 'vTPM stopped');
      return view(stopped ?? current);
    });
  }

  async delete(vm: string, options: { force: boolean }, actor: Principal): Promise<void> {
    const record = await this.load(vm, actor, 'delete');
    await this.lock.run(record.vm, async () => {
      const current = await this.load(record.vm, actor, 'delete');
      if (current.status !== 'stopped' && current.status !== 'deleting' && !options.force) {
        throw new StateConflictError(`vTPM ${current.vm} is ${current.status}; stop it first or delete with --force`, { vm: current.vm, status: current.status });
      }
      if (current.status !== 'stopped') await this.agentFor(current.host).stop(current.vm);
      await this.store.updateVtpm(current.vm, { status: 'deleting' });
      await this.erase(current);
      this.logger.info({ vm: current.vm }, 'vTPM deleted');
    });
  }

  async history(vm: string, actor: Principal): Promise<GenerationView[]> {
    const record = await this.load(vm, actor, 'read');
    return (await this.vault.history(record.vm)).map(generationView);
  }

  /** Makes an older generation the newest one again; nothing is deleted. Stopped vTPMs only. */
  async restore(vm: string, generation: number, actor: Principal): Promise<VtpmView & { generation: number }> {
    const record = await this.load(vm, actor, 'operate');
    return this.lock.run(record.vm, async () => {
      const current = await this.load(record.vm, actor, 'operate');
      if (current.status !== 'stopped') {
        throw new StateConflictError(`vTPM ${current.vm} is ${current.status}; only a stopped vTPM can be restored`, { vm: current.vm, status: current.status });
      }
      const vaultKey = await this.vaultKeyOf(current);
      try {
        const chosen = await this.vault.read(current.vm, 'tpm', generation, vaultKey);
        const committed = await this.vault.commit(current.vm, 'tpm', vaultKey, chosen.data, 'restore');
        this.logger.info({ vm: current.vm, from: generation, generation: committed }, 'state generation restored');
        return { ...view(current), generation: committed! };
      } finally {
        vaultKey.fill(0);
      }
    });
  }

  /**
   * A portable, passphrase-sealed bundle of the vTPM: its spec, owner, EK
   * certificates, secret, and the newest `generations` of each kind of state
   * (all of them with 'all'), as committed in the vault.
   */
  async exportBundle(vm: string, options: { passphrase: string; generations: number | 'all' }, actor: Principal): Promise<Buffer> {
    const record = await this.load(vm, actor, 'export');
    if (record.status === 'creating' || record.status === 'deleting') throw new StateConflictError(`vTPM ${record.vm} is ${record.status}`, { vm: record.vm });
    const secret = await this.keys.readSecret(record.secretRef);
    const vaultKey = vaultKeyFrom(secret);
    try {
      const generations: BundleGeneration[] = [];
      for (const kind of ['tpm', 'nvram'] as StateKind[]) {
        const newest = await this.vault.newest(record.vm, kind, vaultKey);
        if (!newest) continue;
        const chosen = (await this.vault.history(record.vm))
          .filter((g) => g.kind === kind)
          .slice(0, options.generations === 'all' ? undefined : options.generations)
          .reverse();
        for (const g of chosen) {
          const { data } = await this.vault.read(record.vm, kind, g.generation, vaultKey);
          generations.push({ kind, generation: g.generation, reason: g.reason, created_at: g.createdAt, data });
        }
      }
      const ekCertificates = record.ekCertificates ? openEkCertificates(secret, record.vm, record.ekCertificates) : [];
      this.logger.info({ vm: record.vm, generations: generations.length }, 'vTPM exported');
      return writeBundle({
        vm: record.vm, project: record.project, version: record.version, model: record.model, firmware: record.firmware,
        secure_boot: record.secureBoot, secret, ek_certificates: ekCertificates.map((c) => ({ key_type: c.keyType, der: c.der })), generations,
      }, options.passphrase);
    } finally {
      secret.fill(0);
      vaultKey.fill(0);
    }
  }

  /** Recreates an exported vTPM here, under its own VM UUID or `vm`; all or nothing. */
  async importBundle(bundle: Buffer, options: { passphrase: string; vm?: string | undefined }, actor: Principal): Promise<VtpmView> {
    const payload = readBundle(bundle, options.passphrase);
    const vm = normalizeVm(options.vm ?? payload.vm);
    if (!isTpmVersion(payload.version) || !isTpmModel(payload.model) || !payload.generations.some((g) => g.kind === 'tpm') || payload.secret.length !== 32) {
      throw new IntegrityError('the bundle authenticates but does not describe a vTPM this version understands');
    }
    const spec: TpmSpec = { version: payload.version, model: payload.model };
    const firmware = resolveFirmware({ firmware: payload.firmware, secureBoot: payload.secure_boot });
    const project = seesAllProjects(actor) ? payload.project : actor.project;
    return this.lock.run(vm, async () => {
      if (await this.store.getVtpm(vm)) throw new StateConflictError(`a vTPM for VM ${vm} already exists`, { vm });
      const host = await this.placeFor(spec);
      const secretRef = await this.keys.storeSecret(`vtpm-${vm}`, { project }, payload.secret);
      let record: VtpmRecord;
      try {
        record = await this.store.insertVtpm({
          vm, project, version: spec.version, model: spec.model, firmware: firmware.type, secureBoot: firmware.secureBoot, host, status: 'creating',
          secretRef, specClaims: { imported_from: payload.vm }, ekCertificates: null, socket: null, secretSecurity: 'user', migratingTo: null,
        });
      } catch (error) {
        await this.keys.deleteSecret(secretRef);
        throw error;
      }
      try {
        const vaultKey = vaultKeyFrom(payload.secret);
        for (const generation of payload.generations) await this.vault.commit(vm, generation.kind as StateKind, vaultKey, generation.data, 'import');
        vaultKey.fill(0);
        const ekCertificates = sealEkCertificates(payload.secret, vm, payload.ek_certificates.map((c) => ({ keyType: c.key_type, der: c.der })));
        const ready = await this.store.updateVtpm(vm, { status: 'stopped', ekCertificates }, ['creating']);
        this.logger.info({ vm, from: payload.vm, generations: payload.generations.length }, 'vTPM imported');
        return view(ready!);
      } catch (error) {
        await this.rollBack(record);
        throw error;
      } finally {
        payload.secret.fill(0);
      }
    });
  }

  /** The host is connected and offers what the vTPM needs. */
  private async requireHostFor(record: VtpmRecord, host: string): Promise<void> {
    this.agentFor(host);
    const known = (await this.store.listHosts()).find((h) => h.name === host);
    chooseHost(specOf(record), known ? [{ name: known.name, traits: known.traits, vtpms: 0 }] : []);
  }

  /**
   * Prepares a live migration of a running vTPM to `to`: the destination's
   * swtpm starts from the vault's newest generation under the same secret, so
   * the incoming QEMU finds its socket; QEMU carries the TPM's state itself,
   * in its migration stream. The source keeps serving, and its reports keep
   * reaching the vault, until its swtpm exits (onSwtpmExit settles it).
   * Idempotent for the same destination.
   */
  async migrate(vm: string, to: string, actor: Principal): Promise<MigrationView> {
    const record = await this.load(vm, actor, 'operate');
    return this.lock.run(record.vm, async () => {
      const current = await this.load(record.vm, actor, 'operate');
      const prepared = (r: VtpmRecord): MigrationView => ({ ...view(r), ...this.attachment({ ...r, host: to }), from: r.host, to });
      if (current.status === 'migrating' && current.migratingTo === to) return prepared(current);
      if (current.status !== 'running') throw new StateConflictError(`vTPM ${current.vm} is ${current.status}; only a running vTPM is live-migrated (a stopped one starts on any host: vtpm start --host)`, { vm: current.vm, status: current.status });
      if (to === current.host) throw new StateConflictError(`vTPM ${current.vm} already runs on ${to}`, { vm: current.vm, host: to });
      await this.requireHostFor(current, to);
      const secret = await this.keys.readSecret(current.secretRef);
      try {
        const vaultKey = vaultKeyFrom(secret);
        const newest = await this.vault.newest(current.vm, 'tpm', vaultKey);
        if (!newest) throw new StateConflictError(`vTPM ${current.vm} has no state in the vault`, { vm: current.vm });
        const firmware = firmwareOf(current);
        const nvram = firmware.type === 'uefi' ? await this.vault.newest(current.vm, 'nvram', vaultKey) : undefined;
        this.awaitMigration(current.vm);
        const migrating = await this.store.updateVtpm(current.vm, { status: 'migrating', migratingTo: to }, ['running']);
        if (!migrating) {
          this.migrations.delete(current.vm);
          throw new StateConflictError(`vTPM ${current.vm} changed while its migration was prepared`, { vm: current.vm });
        }
        try {
          await this.agentFor(to).start({ vm: current.vm, spec: specOf(current), firmware, stateKey: secret, state: newest.data, nvram: nvram?.data });
        } catch (error) {
          await this.store.updateVtpm(current.vm, { status: 'running', migratingTo: null }, ['migrating']);
          this.migrations.delete(current.vm);
          throw error;
        }
        this.logger.info({ vm: current.vm, from: current.host, to }, 'live migration prepared');
        return prepared(migrating);
      } finally {
        secret.fill(0);
      }
    });
  }

  private attachment(record: VtpmRecord): Attachment {
    const spec = specOf(record);
    const firmware = firmwareOf(record);
    const { socket, nvram } = this.agentFor(record.host).devicePaths(record.vm);
    return {
      socket,
      qemu_args: [...qemuFirmwareArgs(firmware, nvram), ...qemuTpmArgs(spec, socket)],
      libvirt_xml: libvirtTpmXml(spec, socket),
      libvirt_firmware_xml: libvirtFirmwareXml(firmware, nvram),
    };
  }

  /** How to attach a guest to the vTPM; the socket exists while the vTPM runs. */
  async attachmentOf(vm: string, actor: Principal): Promise<Attachment> {
    return this.attachment(await this.load(vm, actor, 'read'));
  }

  /**
   * Turns secure boot on or off for a UEFI guest. Either way the variable
   * store's generations are deleted and a fresh default takes their place
   * (oVirt's semantics: its secure-boot data goes with the setting).
   */
  async setSecureBoot(vm: string, secureBoot: boolean, actor: Principal): Promise<VtpmView> {
    const record = await this.load(vm, actor, 'operate');
    return this.lock.run(record.vm, async () => {
      const current = await this.load(record.vm, actor, 'operate');
      if (current.firmware !== 'uefi') throw new StateConflictError(`VM ${current.vm} uses BIOS firmware; secure boot needs UEFI (create it with --firmware uefi)`, { vm: current.vm });
      if (current.status !== 'stopped') throw new StateConflictError(`vTPM ${current.vm} is ${current.status}; change secure boot while it is stopped`, { vm: current.vm, status: current.status });
      if (current.secureBoot === secureBoot) return view(current);
      const fresh = await this.manufacturer.defaultVariableStore(secureBoot);
      const vaultKey = await this.vaultKeyOf(current);
      try {
        await this.vault.forget(current.vm, 'nvram');
        await this.vault.commit(current.vm, 'nvram', vaultKey, fresh, 'create');
      } finally {
        vaultKey.fill(0);
      }
      const updated = await this.store.updateVtpm(current.vm, { secureBoot }, ['stopped']);
      this.logger.info({ vm: current.vm, secureBoot }, 'secure boot changed; variable store reset');
      return view(updated ?? current);
    });
  }

  async ekCertificates(vm: string, actor: Principal): Promise<Array<{ key_type: string; pem: string }>> {
    const record = await this.load(vm, actor, 'read');
    if (!record.ekCertificates) throw new StateConflictError(`vTPM ${record.vm} has no EK certificate (it is ${record.status})`, { vm: record.vm });
    const secret = await this.keys.readSecret(record.secretRef);
    try {
      return openEkCertificates(secret, record.vm, record.ekCertificates).map((c) => ({ key_type: c.keyType, pem: toPem(c.der) }));
    } finally {
      secret.fill(0);
    }
  }

  /** Ready TPMs per version in the provisioning pool. */
  async poolStatus(): Promise<{ size: number; refill_pause_ms: number; ready: Record<string, number> }> {
    const ready: Record<string, number> = {};
    for (const version of TPM_VERSIONS) ready[version] = await this.store.countPoolEntries(version);
    return { size: this.pool?.size ?? 0, refill_pause_ms: this.pool?.refillPauseMs ?? 0, ready };
  }

  /**
   * Registers a host whose agent runs remotely (`vtpm agent`) and issues its
   * agent token: kept in the key manager (the control plane presents it to
   * the agent, the agent reports with it), shown once. Registering a host
   * again issues a new token; the old one stops working.
   */
  async registerRemoteHost(name: string, url: string): Promise<{ name: string; url: string; token: string }> {
    if (name === this.manufacturer.hostName) throw new StateConflictError(`${name} is the control plane's own host; its agent runs in \`vtpm serve\``, { host: name });
    const agentUrl = checkAgentUrl(url);
    const secret = randomBytes(32);
    try {
      const ref = await this.keys.storeSecret(`vtpm-host-agent-${name}`, { project: DEPLOYMENT_PROJECT }, secret);
      const previous = await this.store.registerRemoteHost(name, agentUrl, ref);
      if (previous) await this.keys.deleteSecret(previous);
      const token = agentToken(secret);
      this.addAgent(new RemoteHostAgent(name, await ApiClient.withToken({ url: agentUrl, token, caFile: this.agentCaFile }), token, undefined));
      this.logger.info({ host: name, url: agentUrl }, 'remote host registered');
      return { name, url: agentUrl, token };
    } finally {
      secret.fill(0);
    }
  }

  /** Connects to every registered remote host's agent (at start-up); one that does not answer is used once it reports in. */
  async connectRemoteHosts(): Promise<void> {
    for (const host of await this.store.listHosts()) {
      if (!host.agentUrl || !host.agentSecretRef) continue;
      const secret = await this.keys.readSecret(host.agentSecretRef);
      const token = agentToken(secret);
      secret.fill(0);
      this.addAgent(new RemoteHostAgent(host.name, await ApiClient.withToken({ url: host.agentUrl, token, caFile: this.agentCaFile }), token, undefined));
    }
  }

  remoteAgent(name: string): RemoteHostAgent | undefined {
    const agent = this.agents.get(name);
    return agent instanceof RemoteHostAgent ? agent : undefined;
  }

  /** A remote agent is up: its traits and capabilities are recorded, and it learns where its sockets are. */
  async agentReportedIn(agent: RemoteHostAgent, description: HostDescription): Promise<void> {
    agent.learn(description);
    await this.store.upsertHost({ name: agent.hostName, traits: description.traits, capabilities: description.capabilities });
    this.logger.info({ host: agent.hostName, traits: description.traits }, 'remote agent reported in');
  }

  async hosts(): Promise<HostView[]> {
    const counts = await this.store.countVtpmsByHost();
    return (await this.store.listHosts()).map((host) => ({
      name: host.name,
      traits: host.traits,
      vtpms: counts.get(host.name)?.total ?? 0,
      running: counts.get(host.name)?.running ?? 0,
      capabilities: host.capabilities,
      last_seen: host.lastSeen,
      agent_url: host.agentUrl,
    }));
  }
}

