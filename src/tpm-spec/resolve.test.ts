import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, SpecConflictError, type VtpmError } from '../errors.js';
import { resolveTpmSpec, type SpecRequest } from './resolve.js';

const ok = (request: SpecRequest) => resolveTpmSpec(request).spec;

function fails(
  request: SpecRequest,
  kind: typeof InvalidArgumentError | typeof SpecConflictError,
  ...mentions: string[]
): VtpmError {
  let caught: unknown;
  try {
    resolveTpmSpec(request);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof kind, `expected ${kind.name}, got ${String(caught)}`);
  for (const text of mentions)
    assert.ok(caught.message.includes(text), `message "${caught.message}" should mention "${text}"`);
  return caught;
}

describe('resolveTpmSpec: Nova table, flavor only', () => {
  it('version only gives the default model tpm-tis', () => {
    assert.deepEqual(ok({ flavor: { 'hw:tpm_version': '2.0' } }), { version: '2.0', model: 'tpm-tis' });
    assert.deepEqual(ok({ flavor: { 'hw:tpm_version': '1.2' } }), { version: '1.2', model: 'tpm-tis' });
  });
  it('version and model', () => {
    assert.deepEqual(ok({ flavor: { 'hw:tpm_version': '2.0', 'hw:tpm_model': 'tpm-crb' } }), {
      version: '2.0',
      model: 'tpm-crb',
    });
    assert.deepEqual(ok({ flavor: { 'hw:tpm_version': '1.2', 'hw:tpm_model': 'tpm-tis' } }), {
      version: '1.2',
      model: 'tpm-tis',
    });
  });
  it('ignores extra specs that are not about the TPM', () => {
    assert.deepEqual(ok({ flavor: { 'hw:tpm_version': '2.0', 'hw:cpu_policy': 'dedicated' } }), {
      version: '2.0',
      model: 'tpm-tis',
    });
  });
});

describe('resolveTpmSpec: Nova table, image only', () => {
  it('version only gives the default model', () => {
    assert.deepEqual(ok({ image: { hw_tpm_version: '2.0' } }), { version: '2.0', model: 'tpm-tis' });
  });
  it('version and model', () => {
    assert.deepEqual(ok({ image: { hw_tpm_version: '2.0', hw_tpm_model: 'tpm-crb' } }), {
      version: '2.0',
      model: 'tpm-crb',
    });
  });
});

describe('resolveTpmSpec: flavor and image', () => {
  it('agreeing values resolve', () => {
    assert.deepEqual(
      ok({
        flavor: { 'hw:tpm_version': '2.0', 'hw:tpm_model': 'tpm-crb' },
        image: { hw_tpm_version: '2.0', hw_tpm_model: 'tpm-crb' },
      }),
      { version: '2.0', model: 'tpm-crb' },
    );
  });
  it('version from the flavor, model from the image', () => {
    assert.deepEqual(ok({ flavor: { 'hw:tpm_version': '2.0' }, image: { hw_tpm_model: 'tpm-crb' } }), {
      version: '2.0',
      model: 'tpm-crb',
    });
  });
  it('conflicting versions name both sources', () => {
    const error = fails(
      { flavor: { 'hw:tpm_version': '2.0' }, image: { hw_tpm_version: '1.2' } },
      SpecConflictError,
      'flavor hw:tpm_version=2.0',
      'image hw_tpm_version=1.2',
    );
    assert.equal(error.status, 400);
  });
  it('conflicting models name both sources', () => {
    fails(
      { flavor: { 'hw:tpm_version': '2.0', 'hw:tpm_model': 'tpm-tis' }, image: { hw_tpm_model: 'tpm-crb' } },
      SpecConflictError,
      'flavor hw:tpm_model=tpm-tis',
      'image hw_tpm_model=tpm-crb',
    );
  });
  it('explicit options conflicting with the flavor are named too', () => {
    fails(
      { version: '1.2', flavor: { 'hw:tpm_version': '2.0' } },
      SpecConflictError,
      '--version 1.2',
      'flavor hw:tpm_version=2.0',
    );
  });
});

describe('resolveTpmSpec: tpm-crb with 1.2', () => {
  it('is refused naming the model and the version source', () => {
    fails(
      { flavor: { 'hw:tpm_version': '1.2', 'hw:tpm_model': 'tpm-crb' } },
      SpecConflictError,
      'tpm-crb',
      'hw:tpm_version=1.2',
    );
  });
  it('across sources', () => {
    fails(
      { flavor: { 'hw:tpm_model': 'tpm-crb' }, image: { hw_tpm_version: '1.2' } },
      SpecConflictError,
      'flavor hw:tpm_model=tpm-crb',
      'image hw_tpm_version=1.2',
    );
  });
  it('with explicit options', () => {
    fails({ version: '1.2', model: 'tpm-crb' }, SpecConflictError, '--model tpm-crb', '--version 1.2');
  });
});

describe('resolveTpmSpec: bad values', () => {
  it('an unknown version names the field and the accepted values', () => {
    const error = fails(
      { flavor: { 'hw:tpm_version': '3.0' } },
      InvalidArgumentError,
      'flavor.hw:tpm_version',
      '1.2, 2.0',
      '"3.0"',
    );
    assert.deepEqual(error.details.field, 'flavor.hw:tpm_version');
  });
  it('an unknown model names the field and the accepted values', () => {
    fails(
      { version: '2.0', image: { hw_tpm_model: 'tpm-spapr' } },
      InvalidArgumentError,
      'image.hw_tpm_model',
      'tpm-tis, tpm-crb',
    );
  });
  it('"2" is not "2.0"', () => {
    fails({ version: '2' }, InvalidArgumentError, 'version');
  });
  it('a misspelt TPM key is refused rather than ignored', () => {
    fails({ flavor: { 'hw:tpm_verison': '2.0' } }, InvalidArgumentError, 'flavor.hw:tpm_verison', 'hw:tpm_version');
    fails({ image: { hw_tpm_modle: 'tpm-crb' } }, InvalidArgumentError, 'image.hw_tpm_modle', 'hw_tpm_model');
  });
  it('no version anywhere is refused', () => {
    fails({}, InvalidArgumentError, 'version', 'hw:tpm_version');
  });
  it('a model without a version is refused and says so', () => {
    fails({ flavor: { 'hw:tpm_model': 'tpm-tis' } }, InvalidArgumentError, 'names a model but no version');
  });
});

describe('resolveTpmSpec: explicit options', () => {
  it('resolve like a flavor', () => {
    assert.deepEqual(ok({ version: '2.0', model: 'tpm-crb' }), { version: '2.0', model: 'tpm-crb' });
    assert.deepEqual(ok({ version: '1.2' }), { version: '1.2', model: 'tpm-tis' });
  });
  it('keep the claims for the record', () => {
    const { claims } = resolveTpmSpec({ version: '2.0', image: { hw_tpm_version: '2.0' } });
    assert.deepEqual(
      claims.version.map((c) => c.source),
      ['request', 'image'],
    );
    assert.deepEqual(claims.model, []);
  });

  it('refuses a key of ours spelled as the other source spells it, which would be ignored', () => {
    assert.throws(
      () => resolveTpmSpec({ flavor: { hw_tpm_version: '1.2' } }),
      (e: unknown) =>
        e instanceof InvalidArgumentError &&
        e.message.startsWith('flavor.hw_tpm_version: expected a flavor extra spec (hw:tpm_version); ') &&
        e.message.includes('hw_tpm_version is an image property: pass it with --image'),
    );
    assert.throws(
      () => resolveTpmSpec({ version: '2.0', image: { 'hw:tpm_model': 'tpm-crb' } }),
      /image.hw:tpm_model: expected an image property \(hw_tpm_model\); hw:tpm_model is a flavor extra spec/,
    );
    assert.throws(() => resolveTpmSpec({ version: '2.0', flavor: { os_secure_boot: 'required' } }), /with --image/);
    assert.throws(() => resolveTpmSpec({ version: '2.0', image: { 'os:secure_boot': 'required' } }), /with --flavor/);
  });
});
