/**
 * What crosses the wire between the control plane and a remote agent: the
 * HostAgent calls and the agent's reports, with buffers as base64. One place
 * that knows the shapes, used by both ends.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { StateChange, VtpmExit } from '../host-agent.js';

export const AGENT_API = '/agent/v1';

/** The control plane's routes that agents report to, for host NAME. */
/** How often an agent tells its control plane it is alive (the control plane's --host-down-after is longer). */
export const HEARTBEAT_INTERVAL_MS = 5_000;

export const reportPath = (host: string, report: 'hello' | 'heartbeat' | 'state-changes' | 'exits') =>
  `${AGENT_API}/hosts/${encodeURIComponent(host)}/${report}`;

const Base64 = Type.String({ pattern: '^[A-Za-z0-9+/]*={0,2}$' });
/** swtpm's state key: 32 bytes (AES-256). */
const StateKey = Type.String({ pattern: '^[A-Za-z0-9+/]{43}=$', description: '32 bytes, base64' });
const Spec = Type.Object({
  version: Type.Union([Type.Literal('1.2'), Type.Literal('2.0')]),
  model: Type.Union([Type.Literal('tpm-tis'), Type.Literal('tpm-crb')]),
});

/** A launch of swtpm (RunningVtpm.instance). */
const Instance = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9-]+$' });

export const StartBody = Type.Object({
  instance: Instance,
  spec: Spec,
  firmware: Type.Object({ type: Type.Union([Type.Literal('bios'), Type.Literal('uefi')]), secureBoot: Type.Boolean() }),
  state_key: StateKey,
  state: Base64,
  nvram: Type.Optional(Base64),
});
export type StartBody = Static<typeof StartBody>;

export const WorkingStateBody = Type.Object({ spec: Spec });

const Uuid = Type.String({ format: 'uuid' });
const Digest = Type.String({ pattern: '^[0-9a-f]{64}$' });
/** A launch of swtpm (RunningVtpm.instance). */
const Name = Type.String({ minLength: 1, maxLength: 255 });
const Path = Type.String({ minLength: 1, maxLength: 4096, pattern: '^/' });
const Names = Type.Array(Name, { maxItems: 256 });

/** What an agent says of itself when it reports in: checked, since the control plane acts on its paths and traits. */
export const HelloBody = Type.Object({
  name: Name,
  traits: Names,
  capabilities: Type.Object({
    swtpm: Type.Object({ version: Type.Union([Name, Type.Null()]), features: Names }),
    swtpmSetup: Type.Object({ features: Names }),
    qemu: Type.Object({
      binary: Name,
      version: Type.Union([Name, Type.Null()]),
      tpmModels: Type.Array(Type.Union([Type.Literal('tpm-tis'), Type.Literal('tpm-crb')]), { maxItems: 2 }),
    }),
  }),
  layout: Type.Object({ runDir: Path, nvramDir: Path }),
  // Optional: an agent of an earlier version reports in without it.
  maxVtpms: Type.Optional(Type.Integer({ minimum: 1 })),
});
export type HelloBody = Static<typeof HelloBody>;

export const StateChangeBody = Type.Object({
  vm: Uuid,
  kind: Type.Union([Type.Literal('tpm'), Type.Literal('nvram')]),
  data: Base64,
  final: Type.Boolean(),
  instance: Instance,
  after: Type.Array(Digest, { maxItems: 16 }),
});
export type StateChangeBody = Static<typeof StateChangeBody>;

export const ExitBody = Type.Object({
  vm: Uuid,
  instance: Instance,
  code: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.String(), Type.Null()]),
});

export const toWire = (change: StateChange): StateChangeBody => ({
  vm: change.vm,
  kind: change.kind,
  data: change.data.toString('base64'),
  final: change.final,
  instance: change.instance,
  after: change.after,
});
export const fromWire = (body: StateChangeBody): StateChange => ({
  vm: body.vm,
  kind: body.kind,
  data: Buffer.from(body.data, 'base64'),
  final: body.final,
  instance: body.instance,
  after: body.after,
});
export const exitFromWire = (body: Static<typeof ExitBody>): VtpmExit => ({
  vm: body.vm,
  code: body.code,
  signal: body.signal,
  instance: body.instance,
});
