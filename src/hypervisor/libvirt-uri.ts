/**
 * The libvirt connection vtpm-manager uses when none is named. Apart from virsh.ts, so that the CLI's
 * option definitions do not load virsh and the XML parser.
 */
export const DEFAULT_LIBVIRT_URI = 'qemu:///system';
