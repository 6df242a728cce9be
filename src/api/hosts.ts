/** The wire shapes of hosts and the provisioning pool, under /v1. */
import { type Static, Type } from '@sinclair/typebox';
import { HOST_NAME_PATTERN } from './patterns.js';
import { HostName } from './vtpms.js';

const Host = Type.Object({
  name: Type.String(),
  traits: Type.Array(Type.String()),
  vtpms: Type.Integer(),
  running: Type.Integer(),
  capabilities: Type.Unknown(),
  last_seen: Type.String(),
  agent_url: Type.Union([Type.String(), Type.Null()], {
    description: "a remote agent's API; null for the control plane's own host",
  }),
  state: Type.Union([Type.Literal('up'), Type.Literal('down')], {
    description: "down: a remote host whose agent has not been heard of for the control plane's --host-down-after",
  }),
  status: Type.Union([Type.Literal('enabled'), Type.Literal('disabled'), Type.Literal('draining')], {
    description:
      'disabled: no new vTPM is placed there; those it holds keep running and starting there. draining: ' +
      'disabled, and its vTPMs move off it (a stopped one at once or at its next start, a running one with its VM)',
  }),
  disabled_reason: Type.Union([Type.String(), Type.Null()]),
  max_vtpms: Type.Union([Type.Integer(), Type.Null()], {
    description: "how many vTPMs the host may hold (its agent's --max-vtpms); null: no limit",
  }),
});
export type HostView = Static<typeof Host>;
export const HostList = Type.Object({ hosts: Type.Array(Host) });
export type HostList = Static<typeof HostList>;

export const RegisterHostBody = Type.Object({
  name: HostName,
  url: Type.String({ description: "the host agent's API, https://HOST:PORT (http only on loopback)" }),
});
export const RegisteredHost = Type.Object({ name: Type.String(), url: Type.String(), token: Type.String() });
export type RegisteredHost = Static<typeof RegisteredHost>;

export const HostParams = Type.Object({ name: HostName });
export const DisableHostBody = Type.Object({
  reason: Type.Optional(
    Type.String({ minLength: 1, maxLength: 512, description: 'why, for other admins (vtpm hosts shows it)' }),
  ),
});
export const HostStateChanged = Type.Object({ name: Type.String(), status: Host.properties.status });
export type HostStateChanged = Static<typeof HostStateChanged>;

export const EvacuateHostBody = Type.Object({
  to: Type.Optional(
    Type.String({
      pattern: HOST_NAME_PATTERN,
      description: 'the one host to move them to; by default the scheduler places each where its traits fit',
    }),
  ),
});
export type EvacuateHostBody = Static<typeof EvacuateHostBody>;

const VacatedVtpm = Type.Object({
  vm: Type.String(),
  result: Type.Union([Type.Literal('moved'), Type.Literal('stays'), Type.Literal('skipped')], {
    description:
      'moved: it is on `to` now (stopped, ready to start from the vault; running when a live migration there ' +
      'completed); stays: it runs where it ran (an evacuation abandoned its live migration to the lost host; a ' +
      'drained host keeps a running vTPM until its VM leaves); skipped: left on the host, `reason` says why',
  }),
  to: Type.Union([Type.String(), Type.Null()]),
  status: Type.String({ description: 'its status now' }),
  generation: Type.Union([Type.Integer(), Type.Null()], {
    description: "the vault's newest TPM state generation, which its next start runs from",
  }),
  reason: Type.String(),
});
/** What `vtpm evacuate` and `vtpm host drain` did with each vTPM of the host. */
export const HostVacated = Type.Object({
  host: Type.String(),
  vtpms: Type.Array(VacatedVtpm),
});
export type HostVacated = Static<typeof HostVacated>;
export type VacatedVtpm = Static<typeof VacatedVtpm>;

export const PoolStatus = Type.Object({
  size: Type.Integer(),
  refill_pause_ms: Type.Integer(),
  ready: Type.Record(Type.String(), Type.Integer()),
});
export type PoolStatus = Static<typeof PoolStatus>;
