/**
 * The deployment's name, which its CA carries (`vtpm serve --ca-name`): kept apart from the CA's code so
 * that the CLI's option definitions load nothing else.
 */
import { hostname } from 'node:os';

/** The common names of the two CAs of a deployment named `name`. */
export function authorityNames(name: string): { root: string; issuer: string } {
  return { root: `${name} root CA`, issuer: `${name} TPM CA` };
}

/** What a deployment's name may hold: it goes into certtool's template and certificates' common names (64). */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9 ._:@()-]{0,55}$/;
export const CA_NAME_RULE = 'up to 56 letters, digits, spaces or any of ._:@()-, starting with a letter or digit';

export function isCaName(name: string): boolean {
  return NAME_PATTERN.test(name) && !name.endsWith(' ');
}

/** A deployment not named otherwise is named after the host its control plane first ran on. */
export function defaultCaName(): string {
  return `vtpm-manager ${hostname().split('.')[0]}`.slice(0, 56).trimEnd();
}
