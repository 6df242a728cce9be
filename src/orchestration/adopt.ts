/**
 * Adopt: take over a TPM another manager created (libvirt's swtpm state),
 * same EK, NV contents and PCR banks for the guest, now under a secret of
 * its own in the key manager and in the vault. The variable store stays
 * where it is.
 */
import type { ManufacturedVtpm } from '../agent/host-agent.js';
import type { VtpmView } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import { withKeptSecrets } from '../keys/wiped.js';
import { resolveFirmware } from '../tpm-spec/firmware.js';
import { resolveTpmSpec, type SpecRequest } from '../tpm-spec/resolve.js';
import { resolveSecretSecurity, type SecretSecurityRequest } from '../tpm-spec/secret-security.js';
import type { ControlPlane } from './control-plane.js';
import * as newVtpm from './new-vtpm.js';
import { runSteps } from './steps.js';
import { normalizeVm, toVtpmView } from './vtpm-records.js';

export interface AdoptRequest extends SpecRequest, SecretSecurityRequest {
  vm: string;
  /** Where it comes from, recorded with the vTPM (e.g. libvirt:DOMAIN). */
  source: string;
  state: Buffer;
  sourcePassphrase?: Buffer | undefined;
}

interface Adoption extends newVtpm.NewVtpmState {
  tpm?: ManufacturedVtpm;
}

export async function adoptVtpm(cp: ControlPlane, request: AdoptRequest, actor: Principal): Promise<VtpmView> {
  const vm = normalizeVm(request.vm);
  const { spec, claims } = resolveTpmSpec(request);
  const firmware = resolveFirmware({});
  const secretSecurity = resolveSecretSecurity(request);
  return cp.locks.run(vm, () =>
    withKeptSecrets(async (keep) => {
      await newVtpm.refuseExisting(cp, vm);
      if (request.sourcePassphrase) keep(request.sourcePassphrase);
      const host = await cp.fleet.place(spec);
      const row = newVtpm.newRow({
        vm,
        spec,
        claims: { ...claims, adopted_from: request.source },
        firmware,
        secretSecurity,
        host,
        project: actor.project,
      });
      const adoption: Adoption = { row, spec, firmware, keep };
      const steps = [
        newVtpm.reserveStep<Adoption>(cp),
        newVtpm.readSecretStep<Adoption>(cp),
        {
          name: 'take-over-state',
          async run(s: Adoption) {
            const source = { state: request.state, sourcePassphrase: request.sourcePassphrase };
            s.tpm = await cp.fleet.manufacturer.adopt({ vm, spec, stateKey: s.secret!, ...source });
          },
        },
        newVtpm.commitStep<Adoption>(cp, 'adopt', (s) => s.tpm!.state),
        newVtpm.finishStep<Adoption>(cp, (s) => s.tpm!.ekCertificates),
      ];
      await runSteps({ operation: 'adopt', steps, logger: cp.logger, undoFailed: newVtpm.undoFailed(cp) }, adoption);
      const certificates = adoption.tpm!.ekCertificates.length;
      cp.logger.info(
        { vm, host, version: spec.version, from: request.source, ek_certificates: certificates },
        'vTPM adopted',
      );
      return toVtpmView(adoption.created!);
    }),
  );
}
