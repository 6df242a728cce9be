/**
 * Import: recreate an exported vTPM here, under its own VM UUID or another;
 * all or nothing. The bundle's secret is stored anew in this deployment's
 * key manager and its generations committed in order.
 */
import type { VtpmView } from '../api/vtpms.js';
import { type Principal, seesAllProjects } from '../auth/policy.js';
import { InvalidBundleError } from '../errors.js';
import { withKeptSecrets, withWiped } from '../keys/wiped.js';
import type { StateKind } from '../store/index.js';
import { resolveFirmware } from '../tpm-spec/firmware.js';
import { isTpmModel, isTpmVersion, type TpmSpec } from '../tpm-spec/tpm-spec.js';
import { type BundlePayload, readBundle } from '../vault/bundle.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import * as newVtpm from './new-vtpm.js';
import { runSteps } from './steps.js';
import { erase } from './delete.js';
import { conflict, normalizeVm, toVtpmView, withVtpm } from './vtpm-records.js';

export interface ImportRequest {
  bundle: Buffer;
  passphrase: string;
  vm?: string | undefined;
  /**
   * When the bundle's own VM still has its vTPM here: `clone` keeps both (two VMs then share one TPM
   * identity, the same EK), `move` crypto-erases the original once the import is done.
   */
  original?: 'clone' | 'move' | undefined;
}

function specIn(payload: BundlePayload): TpmSpec {
  const understood =
    isTpmVersion(payload.version) &&
    isTpmModel(payload.model) &&
    payload.generations.some((g) => g.kind === 'tpm') &&
    payload.secret.length === 32;
  if (!understood) {
    throw new InvalidBundleError('the bundle authenticates but does not describe a vTPM this version understands');
  }
  return { version: payload.version as TpmSpec['version'], model: payload.model as TpmSpec['model'] };
}

export async function importVtpm(cp: ControlPlane, request: ImportRequest, actor: Principal): Promise<VtpmView> {
  return withKeptSecrets(async (keep) => {
    const payload = await readBundle(request.bundle, request.passphrase);
    keep(payload.secret);
    const vm = normalizeVm(request.vm ?? payload.vm);
    const spec = specIn(payload);
    const original = vm === payload.vm ? undefined : await cp.store.vtpms.get(payload.vm);
    if (!original) return importAs(cp, { vm, spec, payload, keep }, actor);
    if (request.original === 'move') {
      // Under the original's lock, so that nobody starts it between the import and its erasure.
      return withVtpm(cp, original.vm, actor, 'delete', async (current) => {
        if (current.status !== 'stopped')
          throw conflict(current, `vTPM ${current.vm} is ${current.status}; stop it before moving it to ${vm}`);
        const imported = await importAs(cp, { vm, spec, payload, keep }, actor);
        await cp.store.vtpms.update(current.vm, { status: 'deleting' });
        await erase(cp, current);
        cp.logger.info({ vm, from: current.vm }, 'vTPM moved: the original is crypto-erased');
        return imported;
      });
    }
    if (request.original !== 'clone') {
      throw conflict(
        original,
        `the bundle's VM ${payload.vm} still has its vTPM here: importing it as ${vm} would give two VMs one ` +
          `TPM identity (the same EK). Pass --move to crypto-erase ${payload.vm}'s vTPM once the import is done, ` +
          'or --clone to keep both',
      );
    }
    cp.logger.warn({ vm, from: payload.vm }, 'vTPM cloned: two VMs now share one TPM identity (the same EK)');
    return importAs(cp, { vm, spec, payload, keep }, actor);
  });
}

interface Importing {
  vm: string;
  spec: TpmSpec;
  payload: BundlePayload;
  keep: (secret: Buffer) => Buffer;
}

async function importAs(cp: ControlPlane, { vm, spec, payload, keep }: Importing, actor: Principal): Promise<VtpmView> {
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
}
