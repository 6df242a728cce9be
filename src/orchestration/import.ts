/**
 * Import: recreate an exported vTPM here, under its own VM UUID or another;
 * all or nothing. The bundle's secret is stored anew in this deployment's
 * key manager and its generations committed in order.
 */
import type { VtpmView } from '../api/vtpms.js';
import { type Principal, seesAllProjects } from '../auth/policy.js';
import { IntegrityError } from '../errors.js';
import { withKeptSecrets, withWiped } from '../keys/wiped.js';
import type { StateKind } from '../store/index.js';
import { resolveFirmware } from '../tpm-spec/firmware.js';
import { isTpmModel, isTpmVersion, type TpmSpec } from '../tpm-spec/tpm-spec.js';
import { type BundlePayload, readBundle } from '../vault/bundle.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import * as newVtpm from './new-vtpm.js';
import { runSteps } from './steps.js';
import { normalizeVm, toVtpmView } from './vtpm-records.js';

export interface ImportRequest {
  bundle: Buffer;
  passphrase: string;
  vm?: string | undefined;
}

function specIn(payload: BundlePayload): TpmSpec {
  const understood =
    isTpmVersion(payload.version) &&
    isTpmModel(payload.model) &&
    payload.generations.some((g) => g.kind === 'tpm') &&
    payload.secret.length === 32;
  if (!understood) {
    throw new IntegrityError('the bundle authenticates but does not describe a vTPM this version understands');
  }
  return { version: payload.version as TpmSpec['version'], model: payload.model as TpmSpec['model'] };
}

export async function importVtpm(cp: ControlPlane, request: ImportRequest, actor: Principal): Promise<VtpmView> {
  return withKeptSecrets(async (keep) => {
    const payload = await readBundle(request.bundle, request.passphrase);
    keep(payload.secret);
    const vm = normalizeVm(request.vm ?? payload.vm);
    const spec = specIn(payload);
    const firmware = resolveFirmware({ firmware: payload.firmware, secureBoot: payload.secure_boot });
    const project = seesAllProjects(actor) ? payload.project : actor.project;
    return cp.locks.run(vm, async () => {
      await newVtpm.refuseExisting(cp, vm);
      const host = await cp.fleet.place(spec);
      const claims = { imported_from: payload.vm };
      const row = newVtpm.newRow({ vm, spec, claims, firmware, secretSecurity: 'user', host, project });
      const importing: newVtpm.NewVtpmState = { row, spec, firmware, keep, secret: payload.secret };
      const steps = [
        newVtpm.reserveStep<newVtpm.NewVtpmState>(cp, () => payload.secret),
        {
          name: 'commit-generations',
          run: () =>
            newVtpm.committingAll(cp, vm, () =>
              withWiped(vaultKeyFrom(payload.secret), async (vaultKey) => {
                for (const generation of payload.generations) {
                  await cp.vault.commit(vm, generation.kind as StateKind, vaultKey, generation.data, 'import');
                }
              }),
            ),
          undo: () => cp.vault.forget(vm),
        },
        newVtpm.finishStep<newVtpm.NewVtpmState>(cp, () =>
          payload.ek_certificates.map((c) => ({ keyType: c.key_type, der: c.der })),
        ),
      ];
      await runSteps({ operation: 'import', steps, logger: cp.logger, undoFailed: newVtpm.undoFailed(cp) }, importing);
      cp.logger.info({ vm, from: payload.vm, generations: payload.generations.length }, 'vTPM imported');
      return toVtpmView(importing.created!);
    });
  });
}
