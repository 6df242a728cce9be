/**
 * What libvirt and vtpm-manager disagree about on one host: domains whose
 * <tpm> is a vtpm-manager socket but whose vTPM does not exist (their next
 * start fails), and this host's vTPMs whose domain is gone (`virsh undefine`
 * leaves them behind; a vTPM used by QEMU without libvirt shows here too).
 * A domain's vTPM is the one of its UUID.
 */
import { NotFoundError } from '../errors.js';
import { type Domain, parseDomain, usesVtpmManager } from './libvirt-domain.js';
import type { Virsh } from './virsh.js';

interface HostedVtpm {
  vm: string;
  host: string;
}

export interface Disagreement<V extends HostedVtpm> {
  /** Domains that use a vtpm-manager socket with no vTPM behind it. */
  missingVtpm: Domain[];
  /** vTPMs of this host that no domain uses. */
  missingDomain: V[];
}

export function disagreements<V extends HostedVtpm>(
  domains: Domain[],
  vtpms: V[],
  host: { name: string; socketDir: string },
): Disagreement<V> {
  const known = new Set(vtpms.map((v) => v.vm));
  const defined = new Set(domains.map((d) => d.uuid));
  return {
    missingVtpm: domains.filter((d) => usesVtpmManager(d, host.socketDir) && !known.has(d.uuid)),
    missingDomain: vtpms.filter((v) => v.host === host.name && !defined.has(v.vm)),
  };
}

/**
 * The libvirt domain that still uses the vTPM of `vm`, if any: deleting that vTPM makes the domain's next
 * start fail, which `vtpm delete` should say before it acts.
 */
export async function domainUsing(virsh: Virsh, vm: string, socketDir: string): Promise<string | undefined> {
  const xml = await virsh.domainXml(vm).catch((error: unknown) => {
    if (error instanceof NotFoundError) return undefined;
    throw error;
  });
  const domain = xml === undefined ? undefined : parseDomain(xml);
  return domain && usesVtpmManager(domain, socketDir) ? domain.name : undefined;
}
