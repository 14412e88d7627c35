#!/usr/bin/env bash
# The first five minutes: set up, start the local Azure Batch emulator with Azurite, run the
# 60-file fan-out workflow with `snakemake --executor saje`, show the results, stop everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
workdir="$root/workflows/examples/fanout"
cd "$workdir"
# --time-scale 60: the profile keeps Azure's 5-minute autoscale interval; the emulator's clock runs
# 60 times faster, so it passes in 5 s and a node boots in about 2 s.
"$root/.venv/bin/saje" emulator run --data-dir "$root/.saje/example-emulator" --time-scale 60 -- \
    "$root/.venv/bin/snakemake" --executor saje --workflow-profile "$root/profiles/local" "$@"
echo
echo "Results: $workdir/results/summary.tsv (per-file counts in $workdir/results/counts/)"
head -n 5 "$workdir/results/summary.tsv"
