/**
 * Vault keys of running vTPMs, in memory only: their state keeps reaching
 * the vault while they run even when the key manager is briefly unreachable.
 * A key leaves the ring zeroed.
 */
export class VaultKeyRing {
  private readonly keys = new Map<string, Buffer>();

  hold(vm: string, vaultKey: Buffer): void {
    const previous = this.keys.get(vm);
    if (previous && previous !== vaultKey) previous.fill(0);
    this.keys.set(vm, vaultKey);
  }

  get(vm: string): Buffer | undefined {
    return this.keys.get(vm);
  }

  drop(vm: string): void {
    this.keys.get(vm)?.fill(0);
    this.keys.delete(vm);
  }
}
