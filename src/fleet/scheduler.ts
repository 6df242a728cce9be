/**
 * Placement: a vTPM goes to a host whose agent is connected and that has
 * every trait its spec requires, preferring the host with the fewest vTPMs (spreading, like Nova's default
 * weighers), then the name for a stable choice.
 */
import { type HostRefusal, NoValidHostError } from '../errors.js';
import { requiredTraits, type TpmSpec } from '../tpm-spec/tpm-spec.js';

export interface Candidate {
  name: string;
  traits: string[];
  vtpms: number;
  /** Whether its agent is connected to this control plane (the control plane's own host always is). */
  connected: boolean;
  /** When its agent was last heard of, if that is too long ago: the host is down. */
  downSince: string | null;
  /** Set when an admin disabled the host (`vtpm host disable`): no new vTPM goes there. */
  disabledReason: string | null;
  /** Disabled by `vtpm host drain`: its vTPMs are moving off it. */
  draining: boolean;
  /** How many vTPMs it may hold; null: no limit. */
  maxVtpms: number | null;
}

function refusalOf(host: Candidate, required: string[]): HostRefusal | undefined {
  const missing = required.filter((trait) => !host.traits.includes(trait));
  if (missing.length > 0) return { name: host.name, reason: 'missing_trait', missing };
  if (!host.connected) return { name: host.name, reason: 'not_connected', missing: [] };
  if (host.downSince !== null) return { name: host.name, reason: 'down', missing: [], since: host.downSince };
  if (host.maxVtpms !== null && host.vtpms >= host.maxVtpms)
    return { name: host.name, reason: 'full', missing: [], vtpms: host.vtpms, capacity: host.maxVtpms };
  if (host.disabledReason !== null)
    return { name: host.name, reason: host.draining ? 'draining' : 'disabled', missing: [], why: host.disabledReason };
  return undefined;
}

export function chooseHost(spec: TpmSpec, candidates: Candidate[]): Candidate {
  const required = requiredTraits(spec);
  const fitting = candidates.filter((host) => refusalOf(host, required) === undefined);
  const best = fitting.sort((a, b) => a.vtpms - b.vtpms || a.name.localeCompare(b.name))[0];
  if (!best)
    throw new NoValidHostError(
      required,
      candidates.flatMap((host) => refusalOf(host, required) ?? []),
    );
  return best;
}
