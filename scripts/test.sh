#!/usr/bin/env bash
# Set up (with MPI) and run the whole test suite. CI runs exactly this (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" --mpi
cd "$root"
# Test files run on SAJE_TEST_WORKERS workers (2 by default, one per core of a CI machine; 0 runs them in this process), a whole
# file per worker so that module fixtures (one run, one pool) are made once.
workers=${SAJE_TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
