import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NoValidHostError } from '../errors.js';
import { type Candidate, chooseHost } from './scheduler.js';

const full = [
  'COMPUTE_SECURITY_TPM_1_2',
  'COMPUTE_SECURITY_TPM_2_0',
  'COMPUTE_SECURITY_TPM_TIS',
  'COMPUTE_SECURITY_TPM_CRB',
];
const tpm12Only = ['COMPUTE_SECURITY_TPM_1_2', 'COMPUTE_SECURITY_TPM_TIS'];
const crb20 = { version: '2.0', model: 'tpm-crb' } as const;

/** A connected, enabled host without a limit, but for what `more` says. */
const host = (name: string, traits: string[], vtpms: number, more: Partial<Candidate> = {}): Candidate => ({
  name,
  traits,
  vtpms,
  connected: true,
  downSince: null,
  disabledReason: null,
  draining: false,
  maxVtpms: null,
  ...more,
});

const refusal = (candidates: Candidate[]) => {
  try {
    chooseHost(crb20, candidates);
  } catch (error) {
    if (error instanceof NoValidHostError) return error;
    throw error;
  }
  return assert.fail('a host was chosen');
};

describe('chooseHost', () => {
  it('picks the least loaded host that has every required trait', () => {
    const chosen = chooseHost(crb20, [
      host('a', full, 5),
      host('b', ['COMPUTE_SECURITY_TPM_2_0', 'COMPUTE_SECURITY_TPM_TIS'], 0),
      host('c', full, 2),
    ]);
    assert.equal(chosen.name, 'c');
  });

  it('breaks ties by name', () => {
    assert.equal(chooseHost({ version: '1.2', model: 'tpm-tis' }, [host('z', full, 1), host('y', full, 1)]).name, 'y');
  });

  it('names what each host lacks when none fits', () => {
    assert.match(
      refusal([host('old', tpm12Only, 0)]).message,
      /old lacks COMPUTE_SECURITY_TPM_2_0, COMPUTE_SECURITY_TPM_CRB/,
    );
  });

  it('passes over a host whose agent is not connected, and names it with its reason', () => {
    const candidates = [host('gone', full, 0, { connected: false }), host('old', tpm12Only, 0), host('here', full, 9)];
    assert.equal(chooseHost(crb20, candidates).name, 'here');
    const error = refusal(candidates.slice(0, 2));
    assert.match(
      error.message,
      /gone has no agent connected to this control plane; old lacks COMPUTE_SECURITY_TPM_2_0/,
    );
    assert.deepEqual(error.reasons, ['not_connected', 'missing_trait']);
  });

  it('passes over a host that is down, naming when its agent was last heard of', () => {
    const since = '2026-12-04T06:00:00.000Z';
    const candidates = [host('dead', full, 0, { downSince: since }), host('alive', full, 30)];
    assert.equal(chooseHost(crb20, candidates).name, 'alive');
    const error = refusal(candidates.slice(0, 1));
    assert.ok(error.message.endsWith(`dead is down (its agent was last heard of at ${since})`), error.message);
    assert.deepEqual(error.reasons, ['down']);
  });

  it('passes over a disabled host, naming the reason an admin gave', () => {
    const candidates = [host('quiet', full, 0, { disabledReason: 'kernel upgrade' }), host('busy', full, 40)];
    assert.equal(chooseHost(crb20, candidates).name, 'busy');
    const error = refusal(candidates.slice(0, 1));
    assert.ok(error.message.endsWith('quiet is disabled (kernel upgrade)'), error.message);
    assert.deepEqual(error.reasons, ['disabled']);
  });

  it('passes over a host that holds as many vTPMs as it may, and takes one below its limit', () => {
    const candidates = [host('small', full, 3, { maxVtpms: 3 }), host('roomy', full, 7, { maxVtpms: 8 })];
    assert.equal(chooseHost(crb20, candidates).name, 'roomy');
    const error = refusal([candidates[0]!, host('over', full, 9, { maxVtpms: 8 })]);
    assert.match(error.message, /small is full \(3 of 3 vTPMs\); over is full \(9 of 8 vTPMs\)/);
    assert.deepEqual(error.reasons, ['full', 'full']);
  });

  it('says so when there are no hosts at all', () => {
    assert.throws(() => chooseHost({ version: '2.0', model: 'tpm-tis' }, []), /no host is registered/);
  });
});
