#!/usr/bin/env bash
# Set up (with MPI) and run the whole test suite. CI runs exactly this (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" --mpi
cd "$root"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
