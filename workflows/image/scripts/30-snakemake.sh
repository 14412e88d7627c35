# Snakemake, pinned to the version of the caller (the machine that runs `saje image create`), so
# the jobs SAJE sends run with the same Snakemake as the workflow that sends them.
if [ -z "${SNAKEMAKE_VERSION:-}" ]; then say "SNAKEMAKE_VERSION not set: skipping"; exit 0; fi
pip_install "snakemake==${SNAKEMAKE_VERSION}" ${SNAKEMAKE_PLUGINS:-}
PATH="$PREFIX/bin:$PATH" "$PYTHON" -m snakemake --version
