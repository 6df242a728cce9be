/**
 * Placement: a vTPM goes to a host that has every trait its spec requires,
 * preferring the host with the fewest vTPMs (spreading, like Nova's default
 * weighers), then the name for a stable choice.
 */
import { NoValidHostError } from '../errors.js';
import { requiredTraits, type TpmSpec } from '../tpm-spec/tpm-spec.js';

export interface Candidate {
  name: string;
  traits: string[];
  vtpms: number;
}

export function chooseHost(spec: TpmSpec, candidates: Candidate[]): Candidate {
  const required = requiredTraits(spec);
  const fitting = candidates.filter((host) => required.every((trait) => host.traits.includes(trait)));
  const best = fitting.sort((a, b) => a.vtpms - b.vtpms || a.name.localeCompare(b.name))[0];
  if (!best) {
    throw new NoValidHostError(
      required,
      candidates.map((host) => ({
        name: host.name,
        missing: required.filter((trait) => !host.traits.includes(trait)),
      })),
    );
  }
  return best;
}
