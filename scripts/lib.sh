# Shared by scripts/setup and scripts/test: the machine's prerequisites and the build.
# Sourced, not run.

# What the service needs on a host: swtpm and its tools (swtpm_setup, swtpm_localca, certtool),
# QEMU, whose devices tell which TPM models this host offers, and OVMF, whose variable-store
# templates UEFI guests start from; tpm2-tools and the device TCTI, with which --seal-to-tpm
# seals the local key manager's master key to the host's TPM; a compiler, with which npm ci
# builds the native modules (better-sqlite3, pkcs11js).
SERVICE_PACKAGES=(swtpm swtpm-tools qemu-system-x86 ovmf tpm2-tools libtss2-tcti-device0 g++ make python3)
# What the end-to-end tests add: a kernel with TPM TIS and CRB drivers built in, and a busybox
# initramfs built by the tests, to boot real guests in seconds; libvirt (daemon, QEMU driver,
# virsh), whose libvirtd the libvirt tests start; the swtpm TCTI, through which tpm2-tools reach
# the swtpm that stands in for a host's TPM; OpenStack Barbican, which the Barbican tests run;
# SoftHSM2, the HSM the PKCS#11 tests use; strace, under which a unit test checks that key files
# are written durably (src/keys/files.test.ts); systemd-analyze and promtool (Prometheus), which check
# the systemd units and alert rules in packaging/ (test/e2e/packaging.test.ts); PostgreSQL, whose servers
# the store tests and test/e2e/postgresql.test.ts start (src/store/testing/postgresql-server.ts).
TEST_PACKAGES=(linux-image-cloud-amd64 busybox-static cpio libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libtss2-tcti-swtpm0 barbican-api softhsm2 strace systemd prometheus postgresql)

NODE_MINIMUM=20.19.0

require_node() {
  if ! command -v node >/dev/null 2>&1; then
    echo "vtpm-manager needs Node.js >= ${NODE_MINIMUM} (and npm) on PATH" >&2
    exit 1
  fi
  node -e '
    const want = process.argv[1].split(".").map(Number);
    const have = process.versions.node.split(".").map(Number);
    const older = have[0] !== want[0] ? have[0] < want[0] : have[1] !== want[1] ? have[1] < want[1] : have[2] < want[2];
    if (older) { console.error(`vtpm-manager needs Node.js >= ${process.argv[1]}, this is ${process.versions.node}`); process.exit(1); }
  ' "$NODE_MINIMUM"
}

ensure_debian_packages() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "vtpm-manager needs these Debian packages: ${missing[*]}" >&2
    echo "install them as root, then run this again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build_project() {
  # npm ci only when the installed tree is missing or older than the lock file.
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
  fi
  npm run --silent build
}
