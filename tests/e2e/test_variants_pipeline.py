"""workflows/examples/variants end to end: a Slurm-style variant-calling pipeline with real tools
(bwa, samtools, bcftools from Debian; a matplotlib `script:` rule) runs unchanged through
profiles/local on the emulator, in both data routes, and gives what a plain local
`snakemake --cores 2` gives.

One local run (module-scoped), one run per route. Every file the local run makes is compared:

- text (FASTA, .fai, BED, TSV, flagstat, the Markdown report) and bwa's index: byte for byte;
- BAM: `samtools view` records byte for byte; header the same without its @PG lines (they carry
  the command lines, with paths that differ in route (a), where inputs sit under
  .snakemake/storage/);
- BCF and VCF.gz: `bcftools view` records byte for byte; header the same without its
  `##reference=` line (a path; the pipeline's bcftools run with --no-version, so no
  `##bcftools_<tool>Command=` line with a command and a date is written);
- .bai and .tbi: what they index, through `samtools idxstats` and `bcftools index --stats`;
- the PNG: exists and decodes to an image of the same size (pixels may differ with fonts);
- logs/ and benchmarks/: the same files (contents carry timings), benchmarks with the same columns.

Snakemake's own `.snakemake_timestamp` marker in directory outputs is not an output and is left
out. Each run must leave no Batch job and no pool (`clean_account`).
"""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import SNAKEMAKE, run_snakemake, write_workflow

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "workflows" / "examples" / "variants"
PROFILE = ROOT / "profiles" / "local"
TOOLS = ("bwa", "samtools", "bcftools")
OUTPUT_DIRS = ("resources", "results", "logs", "benchmarks")
SNAKEMAKE_MARKERS = {".snakemake_timestamp"}
# The only header lines that differ between runs: they carry command lines or paths.
BAM_HEADER_SKIP = ("@PG\t",)
VCF_HEADER_SKIP = ("##reference=",)


def _require_tools() -> None:
    """The example's tools are installed by scripts/setup.sh; without them the tests fail, loudly."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: workflows/examples/variants needs bwa, samtools and bcftools; "
                    "`bash scripts/setup.sh` installs them as root on Debian (apt-get install bwa samtools bcftools)")


def _copy_example(target: Path) -> Path:
    """The example as a user's clone has it: git-tracked, since the node parses the Snakefile again
    and reads config/samples.tsv, which reaches it through Snakemake's source archive."""
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".snakemake", *OUTPUT_DIRS))
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    return target


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """A plain local `snakemake --cores 2` of the example: the reference results."""
    _require_tools()
    workdir = _copy_example(tmp_path_factory.mktemp("variants") / "local")
    run = subprocess.run([SNAKEMAKE, "--cores", "2", "--quiet"], cwd=workdir, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    # The tools really called the planted variants: every sample's recall in the report is >= 90%.
    rows = [line.split("|") for line in (workdir / "results" / "report.md").read_text().splitlines()
            if line.startswith("| S")]
    assert len(rows) == 3 and all(float(row[8].strip(" %")) >= 90 for row in rows), rows
    return workdir


# ----------------------------------------------------------------------------- the two routes
@pytest.mark.timeout(1200)
def test_variants_through_saje_staging_match_a_local_run(local_run, tmp_path, saje_env, clean_account):
    """Route (b): no default storage; SAJE stages inputs and brings every output back."""
    workdir = _copy_example(tmp_path / "remote")

    run = run_snakemake(workdir, saje_env, "--workflow-profile", str(PROFILE), timeout=900)

    assert run.returncode == 0, run.stdout[-6000:]
    assert_same_outputs(local_run, workdir)


@pytest.mark.timeout(1200)
def test_variants_through_azure_default_storage_match_a_local_run(local_run, tmp_path, saje_env, clean_account):
    """Route (a): --default-storage-provider azure on Azurite. Snakemake does not upload local
    inputs to the default storage, so data/ goes to the prefix first, as a user uploads it."""
    from azure.storage.blob import BlobServiceClient

    workdir = _copy_example(tmp_path / "remote")
    azurite = clean_account.azurite
    container, prefix = f"variants-{uuid.uuid4().hex[:8]}", "run"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(container)
    try:
        for path in sorted((workdir / "data").rglob("*")):
            if path.is_file():
                with open(path, "rb") as data:
                    service.get_blob_client(container, f"{prefix}/{path.relative_to(workdir).as_posix()}").upload_blob(data)

        run = run_snakemake(workdir, saje_env, "--workflow-profile", str(PROFILE),
                            "--default-storage-provider", "azure", "--default-storage-prefix", f"az://{container}/{prefix}",
                            "--storage-azure-account-name", azurite.account_name,
                            "--envvars", "AZURITE_CONNECTION_STRING", timeout=900)

        assert run.returncode == 0, run.stdout[-6000:]
        results = tmp_path / "from-storage"
        blobs = service.get_container_client(container)
        for blob in blobs.list_blobs(name_starts_with=f"{prefix}/"):
            relative = blob.name[len(prefix) + 1:]
            if relative.split("/")[0] in OUTPUT_DIRS:
                target = results / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blobs.download_blob(blob.name).readall())
        assert_same_outputs(local_run, results)
    finally:
        service.delete_container(container)
        service.close()


# ----------------------------------------------------------------------------- porting
SHEET_READ_AT_PARSE = """
import csv
with open("samples.tsv") as sheet:
    SAMPLES = [row["sample"] for row in csv.DictReader(sheet, delimiter="\\t")]

rule all:
    input: expand("out/{s}.txt", s=SAMPLES)

rule one:
    output: "out/{s}.txt"
    shell: "echo {wildcards.s} > {output}"
"""


def test_a_sample_sheet_git_does_not_track_is_named_with_the_fix(tmp_path, saje_env, clean_account):
    """The first run of a pipeline from a folder that is no git repository: the node parses the
    Snakefile without the sample sheet, and SAJE's error says why and what to do."""
    workdir = write_workflow(tmp_path / "wf", SHEET_READ_AT_PARSE, {"samples.tsv": "sample\nS1\n"})

    run = run_snakemake(workdir, saje_env)

    assert run.returncode != 0
    assert "No such file or directory: 'samples.tsv'" in run.stdout, run.stdout[-3000:]
    assert "SAJE: samples.tsv exists here but not on the node" in run.stdout
    assert "git add samples.tsv" in run.stdout


# ----------------------------------------------------------------------------- comparison
def output_files(workdir: Path) -> list[str]:
    return sorted(p.relative_to(workdir).as_posix() for d in OUTPUT_DIRS for p in (workdir / d).rglob("*")
                  if p.is_file() and p.name not in SNAKEMAKE_MARKERS)


def assert_same_outputs(expected: Path, actual: Path) -> None:
    names = output_files(expected)
    assert names == output_files(actual)
    assert len(names) > 40  # the whole pipeline ran: 3 BAMs, 4 regions, the report, ...
    for name in names:
        compare(expected / name, actual / name, name)


def compare(expected: Path, actual: Path, name: str) -> None:
    suffix = "".join(expected.suffixes[-2:]) if name.endswith(".vcf.gz") else expected.suffix
    if name.startswith("logs/"):
        return  # timings and stderr interleaving differ; that it exists was checked
    if name.startswith("benchmarks/"):
        assert _lines(expected)[0] == _lines(actual)[0], name  # same columns
        assert len(_lines(actual)) == 2, name
    elif suffix == ".bam":
        assert _header(["samtools", "view", "--no-PG", "-H"], actual, BAM_HEADER_SKIP) == \
            _header(["samtools", "view", "--no-PG", "-H"], expected, BAM_HEADER_SKIP), name
        assert _out(["samtools", "view", "--no-PG"], actual) == _out(["samtools", "view", "--no-PG"], expected), name
    elif suffix in (".bcf", ".vcf.gz"):
        header = ["bcftools", "view", "--no-version", "-h"]
        assert _header(header, actual, VCF_HEADER_SKIP) == _header(header, expected, VCF_HEADER_SKIP), name
        assert _out(["bcftools", "view", "--no-version", "-H"], actual) == \
            _out(["bcftools", "view", "--no-version", "-H"], expected), name
    elif suffix == ".bai":
        bam = lambda p: p.with_suffix("")  # noqa: E731  (results/mapped/S1.bam.bai indexes S1.bam)
        assert _out(["samtools", "idxstats"], bam(actual)) == _out(["samtools", "idxstats"], bam(expected)), name
    elif suffix == ".tbi":
        vcf = lambda p: p.with_suffix("")  # noqa: E731
        assert _out(["bcftools", "index", "--stats"], vcf(actual)) == _out(["bcftools", "index", "--stats"], vcf(expected)), name
    elif suffix == ".png":
        assert _image_size(actual) == _image_size(expected), name
    else:  # text, and bwa's index (deterministic for a given reference)
        assert actual.read_bytes() == expected.read_bytes(), name


def _out(command: list[str], path: Path) -> str:
    return subprocess.run([*command, str(path)], check=True, text=True, stdout=subprocess.PIPE).stdout


def _header(command: list[str], path: Path, skip: tuple[str, ...]) -> list[str]:
    return [line for line in _out(command, path).splitlines() if not line.startswith(skip)]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG that decodes whole (Pillow comes with matplotlib)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size
