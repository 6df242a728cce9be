/**
 * Create: resolve the spec, place the vTPM, manufacture it (or take a TPM
 * the provisioning pool made ahead and have its certificates issued for the
 * VM), commit its first generations, and leave it `stopped`. The row is written `creating` first, so that a crash
 * half-way is rolled back by reconcile rather than leaving an orphaned secret.
 */
import type { ManufacturedVtpm } from '../agent/host-agent.js';
import type { VtpmView } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import { storeAnew } from '../keys/rotation-by-replacement.js';
import { withKeptSecrets } from '../keys/wiped.js';
import { openPoolEntry } from '../pool/provisioning-pool.js';
import type { PoolEntry } from '../store/index.js';
import { type FirmwareRequest, resolveFirmware } from '../tpm-spec/firmware.js';
import { resolveTpmSpec, type SpecRequest } from '../tpm-spec/resolve.js';
import { resolveSecretSecurity, type SecretSecurityRequest } from '../tpm-spec/secret-security.js';
import type { ControlPlane } from './control-plane.js';
import * as newVtpm from './new-vtpm.js';
import { runSteps, type Step } from './steps.js';
import { normalizeVm, toVtpmView } from './vtpm-records.js';

export interface CreateRequest extends SpecRequest, FirmwareRequest, SecretSecurityRequest {
  vm: string;
}

interface Creation extends newVtpm.NewVtpmState {
  pooled?: PoolEntry | undefined;
  tpm?: ManufacturedVtpm;
}

export async function createVtpm(cp: ControlPlane, request: CreateRequest, actor: Principal): Promise<VtpmView> {
  const vm = normalizeVm(request.vm);
  const { spec, claims } = resolveTpmSpec(request);
  const firmware = resolveFirmware(request);
  const secretSecurity = resolveSecretSecurity(request);
  return cp.locks.run(vm, () =>
    withKeptSecrets(async (keep) => {
      await newVtpm.refuseExisting(cp, vm);
      const host = await cp.fleet.place(spec);
      const row = newVtpm.newRow({ vm, spec, claims, firmware, secretSecurity, host, project: actor.project });
      const creation: Creation = { row, spec, firmware, keep };
      const steps = [
        cp.pool ? claimPooledStep(cp) : newVtpm.reserveStep<Creation>(cp),
        newVtpm.readSecretStep<Creation>(cp),
        rescopeStep(cp, actor),
        manufactureStep(cp),
        issueForVmStep(cp),
        newVtpm.commitStep<Creation>(cp, 'create', (s) => s.tpm!.state),
        newVtpm.finishStep<Creation>(cp, (s) => s.tpm!.ekCertificates),
      ];
      try {
        await runSteps(
          {
            operation: 'create',
            steps,
            logger: cp.logger,
            undoFailed: newVtpm.undoFailed(cp),
          },
          creation,
        );
      } finally {
        if (creation.pooled) cp.pool?.refill();
      }
      const pooled = creation.pooled !== undefined;
      cp.logger.info({ vm, host, version: spec.version, model: spec.model, pooled }, 'vTPM created');
      return toVtpmView(creation.created!);
    }),
  );
}

/** The pool's oldest TPM of the version, if it has one, and the vTPM's row, in one transaction. */
function claimPooledStep(cp: ControlPlane): Step<Creation> {
  const reserveNew = newVtpm.reserveStep<Creation>(cp);
  return {
    name: 'claim-pooled',
    async run(s) {
      s.pooled = await cp.store.pool.claim(s.row.version, (entry) => ({ ...s.row, secret_ref: entry.secret_ref }));
      if (s.pooled) s.row = { ...s.row, secret_ref: s.pooled.secret_ref };
      else await reserveNew.run(s);
    },
    undo: (s) => newVtpm.unreserve(cp, s),
  };
}

/** A pooled TPM's secret was made in the deployment's scope; where scopes matter, it moves to its owner's. */
function rescopeStep(cp: ControlPlane, actor: Principal): Step<Creation> {
  return {
    name: 'rescope-secret',
    async run(s) {
      if (!s.pooled || !cp.keys.ownerScoped) return;
      const use = { ref: s.row.secret_ref, label: `vtpm-${s.row.vm}`, project: actor.project };
      s.row = { ...s.row, secret_ref: await storeAnew(cp.store, cp.keys, use, s.secret!) };
    },
  };
}

/**
 * A pooled TPM's certificates were issued for its pool entry; the VM's replace them in its NV memory. Nothing
 * to undo: the new state and certificates exist only in memory until the commit.
 */
function issueForVmStep(cp: ControlPlane): Step<Creation> {
  return {
    name: 'issue-ek-certificates',
    async run(s) {
      if (!s.pooled) return;
      s.tpm = await cp.fleet.manufacturer.issueEkCertificates({
        vm: s.row.vm,
        spec: s.spec,
        stateKey: s.secret!,
        tpm: s.tpm!,
      });
    },
  };
}

function manufactureStep(cp: ControlPlane): Step<Creation> {
  return {
    name: 'manufacture',
    async run(s) {
      s.tpm = s.pooled
        ? openPoolEntry(s.pooled, s.secret!)
        : await cp.fleet.manufacturer.manufacture({ vm: s.row.vm, spec: s.spec, stateKey: s.secret! });
    },
  };
}
