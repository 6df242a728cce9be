/**
 * What a host does besides running vTPMs: making their state, on scratch
 * copies that no running swtpm uses. A TPM manufactured ahead of demand or
 * for one VM, a pooled TPM's certificates issued anew for the VM it is given
 * to, another manager's state adopted, a state checked for whether it loads.
 * Only the control plane's host manufactures: it has the deployment's CA.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { HostSetupError } from '../errors.js';
import { ovmfVarsTemplate } from '../hypervisor/ovmf.js';
import { adoptState } from '../swtpm/adopt.js';
import type { CertificateAuthority } from '../swtpm/certificate-authority.js';
import { issueEkCertificates } from '../swtpm/issue-ek-certificates.js';
import { manufactureTpm } from '../swtpm/manufacture.js';
import { stateLoads } from '../swtpm/state-check.js';
import { stateFileName } from '../swtpm/state-file.js';
import type { AdoptRequest, IssueRequest, ManufactureRequest, ManufacturedVtpm, VtpmOnHost } from './host-agent.js';

export interface ManufacturingOptions {
  hostName: string;
  /** A memory-backed directory for short-lived secret-bearing configuration. */
  scratchDir: string;
  authority?: CertificateAuthority | undefined;
}

export class Manufacturing {
  constructor(private readonly options: ManufacturingOptions) {}

  /** Made in `stateDir`, which holds nothing afterwards: the state is returned, for the vault. */
  async manufacture(request: ManufactureRequest, stateDir: string): Promise<ManufacturedVtpm> {
    const authority = this.certificateAuthority();
    await rm(stateDir, { recursive: true, force: true });
    try {
      const ekCertificates = await manufactureTpm({
        vm: request.vm,
        spec: request.spec,
        stateDir,
        stateKey: request.stateKey,
        authority,
        scratchRoot: this.options.scratchDir,
        background: request.background ?? false,
      });
      return { ekCertificates, state: await readFile(join(stateDir, stateFileName(request.spec))) };
    } finally {
      await rm(stateDir, { recursive: true, force: true });
    }
  }

  issueEkCertificates(request: IssueRequest): Promise<ManufacturedVtpm> {
    return issueEkCertificates({
      vm: request.vm,
      spec: request.spec,
      state: request.tpm.state,
      stateKey: request.stateKey,
      ekCertificates: request.tpm.ekCertificates,
      authority: this.certificateAuthority(),
      scratchRoot: this.options.scratchDir,
    });
  }

  adopt(request: AdoptRequest): Promise<ManufacturedVtpm> {
    return adoptState({
      spec: request.spec,
      state: request.state,
      sourcePassphrase: request.sourcePassphrase,
      stateKey: request.stateKey,
      scratchRoot: this.options.scratchDir,
    });
  }

  stateLoads(request: VtpmOnHost & { state: Buffer }): Promise<boolean> {
    return stateLoads({ ...request, scratchRoot: this.options.scratchDir });
  }

  async defaultVariableStore(secureBoot: boolean): Promise<Buffer> {
    const template = ovmfVarsTemplate(secureBoot);
    try {
      return await readFile(template);
    } catch {
      throw new HostSetupError(
        `the UEFI variable store template ${template} is missing on ${this.options.hostName}; ` +
          'install the Debian package ovmf',
        { template },
      );
    }
  }

  private certificateAuthority(): CertificateAuthority {
    const authority = this.options.authority;
    if (!authority)
      throw new HostSetupError(
        `host ${this.options.hostName} runs vTPMs but does not manufacture them: the control plane's host does`,
      );
    return authority;
  }
}
