"""workflows/examples/variants: its committed data is what its generator writes, and the node
image packages file it documents is one `saje image create` accepts, with the tools it runs."""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

from snakemake_executor_saje.setup import image

EXAMPLE = Path(__file__).resolve().parents[2] / "workflows" / "examples" / "variants"


def _content(path: Path) -> bytes:
    """A file's content, decompressed if gzipped (gzip's bytes may vary with the zlib version)."""
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def test_committed_data_is_what_make_data_writes(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(tmp_path)], check=True)

    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(EXAMPLE / "data") for p in (EXAMPLE / "data").rglob("*") if p.is_file())
    assert written == committed and len(written) == 8  # reference, truth, 3 samples x 2 reads
    for name in written:
        assert _content(tmp_path / name) == _content(EXAMPLE / "data" / name), name
    assert sum((EXAMPLE / "data" / name).stat().st_size for name in committed) < 400_000  # small in git


def test_image_packages_file_is_valid_and_has_the_pipelines_tools():
    packages = image._packages(str(EXAMPLE / "image-packages.yaml"))

    assert {"bwa", "samtools", "bcftools"} <= set(packages["apt"])
    assert "matplotlib" in packages["pip"]
