# Shared by every SAJE provisioning script (the image workflow puts it in front of each one, so
# every run-command is self-contained). Everything is installed under "${SAJE_VM_ROOT:-}/usr/local":
# on Azure SAJE_VM_ROOT is unset and that is /usr/local of the build VM; on the emulator it is the
# build VM's "disk" directory, which becomes the image's root (docs/emulator-arm.md).
set -euo pipefail
ROOT="${SAJE_VM_ROOT:-}"
PREFIX="$ROOT/usr/local"
PYTHON="${PYTHON:-python3}"
mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$ROOT/etc/profile.d"
say() { printf 'saje-provision: %s\n' "$*"; }
on_azure() { [ -z "$ROOT" ]; }

# The OS package manager (Azure only: the emulator cannot install system packages into a directory).
os_install() {
  [ "$#" -gt 0 ] || return 0
  if ! on_azure; then say "emulator: not installing system packages: $*"; return 0; fi
  if command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
  elif command -v dnf >/dev/null 2>&1; then dnf install -y -q "$@"
  else yum install -y -q "$@"; fi
}

ensure_pip() {
  "$PYTHON" -m pip --version >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1; then os_install python3-pip; else os_install python3-pip; fi
  "$PYTHON" -m pip --version >/dev/null
}

# pip into /usr/local: on Azure the interpreter's own /usr/local scheme (dist-packages on Ubuntu),
# past PEP 668's guard; on the emulator --prefix "$PREFIX" (binaries land in $PREFIX/bin).
pip_install() {
  [ "$#" -gt 0 ] || return 0
  ensure_pip
  local args=(--no-input --disable-pip-version-check)
  if on_azure; then
    if "$PYTHON" -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
      args+=(--break-system-packages)
    fi
  else
    args+=(--prefix "$PREFIX")
  fi
  say "pip install $*"
  "$PYTHON" -m pip install "${args[@]}" "$@"
}
