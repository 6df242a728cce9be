import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NoValidHostError } from '../errors.js';
import { chooseHost } from './scheduler.js';

const full = [
  'COMPUTE_SECURITY_TPM_1_2',
  'COMPUTE_SECURITY_TPM_2_0',
  'COMPUTE_SECURITY_TPM_TIS',
  'COMPUTE_SECURITY_TPM_CRB',
];

describe('chooseHost', () => {
  it('picks the least loaded host that has every required trait', () => {
    const chosen = chooseHost({ version: '2.0', model: 'tpm-crb' }, [
      { name: 'a', traits: full, vtpms: 5, connected: true, disabledReason: null },
      {
        name: 'b',
        traits: ['COMPUTE_SECURITY_TPM_2_0', 'COMPUTE_SECURITY_TPM_TIS'],
        vtpms: 0,
        connected: true,
        disabledReason: null,
      },
      { name: 'c', traits: full, vtpms: 2, connected: true, disabledReason: null },
    ]);
    assert.equal(chosen.name, 'c');
  });
  it('breaks ties by name', () => {
    assert.equal(
      chooseHost({ version: '1.2', model: 'tpm-tis' }, [
        { name: 'z', traits: full, vtpms: 1, connected: true, disabledReason: null },
        { name: 'y', traits: full, vtpms: 1, connected: true, disabledReason: null },
      ]).name,
      'y',
    );
  });
  it('names what each host lacks when none fits', () => {
    assert.throws(
      () =>
        chooseHost({ version: '2.0', model: 'tpm-crb' }, [
          {
            name: 'old',
            traits: ['COMPUTE_SECURITY_TPM_1_2', 'COMPUTE_SECURITY_TPM_TIS'],
            vtpms: 0,
            connected: true,
            disabledReason: null,
          },
        ]),
      (error: unknown) =>
        error instanceof NoValidHostError &&
        /old lacks COMPUTE_SECURITY_TPM_2_0, COMPUTE_SECURITY_TPM_CRB/.test(error.message),
    );
  });
  it('passes over a host whose agent is not connected, and names it with its reason', () => {
    const candidates = [
      { name: 'gone', traits: full, vtpms: 0, connected: false, disabledReason: null },
      {
        name: 'old',
        traits: ['COMPUTE_SECURITY_TPM_1_2', 'COMPUTE_SECURITY_TPM_TIS'],
        vtpms: 0,
        connected: true,
        disabledReason: null,
      },
      { name: 'here', traits: full, vtpms: 9, connected: true, disabledReason: null },
    ];
    assert.equal(chooseHost({ version: '2.0', model: 'tpm-crb' }, candidates).name, 'here');
    assert.throws(
      () => chooseHost({ version: '2.0', model: 'tpm-crb' }, candidates.slice(0, 2)),
      (error: unknown) =>
        error instanceof NoValidHostError &&
        /gone has no agent connected to this control plane; old lacks COMPUTE_SECURITY_TPM_2_0/.test(error.message) &&
        error.reasons.join() === 'not_connected,missing_trait',
    );
  });
  it('passes over a disabled host, naming the reason an admin gave', () => {
    const candidates = [
      { name: 'quiet', traits: full, vtpms: 0, connected: true, disabledReason: 'kernel upgrade' },
      { name: 'busy', traits: full, vtpms: 40, connected: true, disabledReason: null },
    ];
    assert.equal(chooseHost({ version: '2.0', model: 'tpm-crb' }, candidates).name, 'busy');
    assert.throws(
      () => chooseHost({ version: '2.0', model: 'tpm-crb' }, candidates.slice(0, 1)),
      (error: unknown) =>
        error instanceof NoValidHostError &&
        error.message.endsWith('quiet is disabled (kernel upgrade)') &&
        error.reasons.join() === 'disabled',
    );
  });
  it('says so when there are no hosts at all', () => {
    assert.throws(() => chooseHost({ version: '2.0', model: 'tpm-tis' }, []), /no host is registered/);
  });
});
