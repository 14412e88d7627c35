#!/usr/bin/env bash
# The first five minutes: set up, start the local Azure Batch emulator with Azurite, run the
# 60-file fan-out workflow with `snakemake --executor saje`, show the results, stop everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
workdir="$root/workflows/examples/fanout"
cd "$workdir"
"$root/.venv/bin/saje" emulator run --data-dir "$root/.saje/example-emulator" --node-boot-seconds 0.5 -- \
    "$root/.venv/bin/snakemake" --executor saje --workflow-profile "$root/profiles/local" "$@"
echo
echo "Results: $workdir/results/summary.tsv (per-file counts in $workdir/results/counts/)"
head -n 5 "$workdir/results/summary.tsv"
