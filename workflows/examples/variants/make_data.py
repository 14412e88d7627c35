#!/usr/bin/env python3
"""Write the example's synthetic input data, deterministically (run once; the output is in git).

A random two-contig reference (32 kb), a set of small variants (SNPs and indels) with a
genotype per sample, and paired-end 2x100 bp reads simulated from each sample's two
haplotypes at ~12x with a 0.1% error rate. Standard library only, fixed seed, gzip without a
timestamp: running it again gives the same files.

    python3 make_data.py            # rewrites data/ beside this script
    python3 make_data.py OUT_DIR    # writes the same files under OUT_DIR instead
"""
from __future__ import annotations

import gzip
import io
import random
import sys
from pathlib import Path

SEED = 20240611
CONTIGS = {"chr1": 20_000, "chr2": 12_000}
SAMPLES = ["S1", "S2", "S3"]
VARIANT_SPACING = 700  # about one variant site every 700 bp
READ_LENGTH = 100
FRAGMENT_MEAN, FRAGMENT_SD = 300, 30
COVERAGE = 10
ERROR_RATE = 0.001
# One quality profile for every read (Illumina-like decline towards the 3' end): it compresses
# to almost nothing, which keeps the committed reads small.
QUALITY = "".join(chr(33 + q) for q in [37] * 60 + [35] * 20 + [32] * 12 + [28] * 8)
COMPLEMENT = str.maketrans("ACGT", "TGCA")
DATA = Path(__file__).resolve().parent / "data"


def reference(rng: random.Random) -> dict[str, str]:
    """Random sequence at 41% GC, as in the human genome."""
    weights = [0.295, 0.205, 0.205, 0.295]
    return {name: "".join(rng.choices("ACGT", weights, k=length)) for name, length in CONTIGS.items()}


def variants(rng: random.Random, genome: dict[str, str]) -> list[tuple[str, int, str, str, list[str]]]:
    """(contig, 1-based position, ref, alt, genotype per sample); every site is variant in at
    least one sample. One site in five is an indel of 1-3 bp."""
    sites = []
    for contig, seq in genome.items():
        pos = rng.randint(150, VARIANT_SPACING)
        while pos < len(seq) - 150:
            ref = seq[pos - 1]
            if rng.random() < 0.2:
                size = rng.randint(1, 3)
                if rng.random() < 0.5:  # insertion after the anchor base
                    alt = ref + "".join(rng.choices("ACGT", k=size))
                else:  # deletion of the bases after the anchor
                    ref, alt = seq[pos - 1:pos + size], ref
                if ref[-1] == ref[0] and alt[-1] == alt[0]:
                    # could shift left: keep only indels already left-aligned, as `bcftools
                    # norm` writes them, so that the truth compares with the calls as they are
                    continue
            else:
                alt = rng.choice([b for b in "ACGT" if b != ref])
            genotypes = ["0/0"] * len(SAMPLES)
            while genotypes == ["0/0"] * len(SAMPLES):
                genotypes = rng.choices(["0/0", "0/1", "1/1"], [0.4, 0.4, 0.2], k=len(SAMPLES))
            sites.append((contig, pos, ref, alt, genotypes))
            pos += rng.randint(VARIANT_SPACING // 2, VARIANT_SPACING * 3 // 2)
    return sites


def haplotype(seq: str, contig: str, sites, sample: int, copy: int) -> str:
    """The contig with the sample's alleles on one of its two haplotypes applied."""
    out, last = [], 0
    for site_contig, pos, ref, alt, genotypes in sites:
        if site_contig != contig or genotypes[sample].split("/")[copy] != "1":
            continue
        out.append(seq[last:pos - 1])
        out.append(alt)
        last = pos - 1 + len(ref)
    out.append(seq[last:])
    return "".join(out)


def with_errors(rng: random.Random, read: str) -> str:
    bases = list(read)
    for i in range(len(bases)):
        if rng.random() < ERROR_RATE:
            bases[i] = rng.choice([b for b in "ACGT" if b != bases[i]])
    return "".join(bases)


def simulate(rng: random.Random, genome, sites, sample: int) -> tuple[list[str], list[str]]:
    """FASTQ records of R1 and R2 for one sample, fragments from both haplotypes and strands."""
    haplotypes = [(contig, haplotype(seq, contig, sites, sample, copy))
                  for contig, seq in genome.items() for copy in (0, 1)]
    lengths = [len(seq) for _, seq in haplotypes]
    pairs = sum(CONTIGS.values()) * COVERAGE // (2 * READ_LENGTH)
    r1, r2 = [], []
    for i in range(1, pairs + 1):
        _, seq = rng.choices(haplotypes, weights=lengths)[0]
        size = max(2 * READ_LENGTH, int(rng.gauss(FRAGMENT_MEAN, FRAGMENT_SD)))
        start = rng.randint(0, len(seq) - size)
        fragment = seq[start:start + size]
        if rng.random() < 0.5:
            fragment = fragment.translate(COMPLEMENT)[::-1]
        name = f"{SAMPLES[sample]}.{i}"
        first = with_errors(rng, fragment[:READ_LENGTH])
        second = with_errors(rng, fragment[-READ_LENGTH:].translate(COMPLEMENT)[::-1])
        r1.append(f"@{name}/1\n{first}\n+\n{QUALITY}\n")
        r2.append(f"@{name}/2\n{second}\n+\n{QUALITY}\n")
    return r1, r2


def write_gzip(path: Path, text: str) -> None:
    """gzip with no name and no timestamp in its header, so the bytes depend on the text only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as out:
        out.write(text.encode())
    path.write_bytes(buffer.getvalue())


def main(out: Path) -> None:
    rng = random.Random(SEED)
    genome = reference(rng)
    sites = variants(rng, genome)
    fasta = "".join(f">{name} synthetic\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
                    for name, seq in genome.items())
    write_gzip(out / "ref" / "genome.fa.gz", fasta)
    truth = ["sample\tchrom\tpos\tref\talt\tgenotype\n"]
    for contig, pos, ref, alt, genotypes in sites:
        truth.extend(f"{s}\t{contig}\t{pos}\t{ref}\t{alt}\t{gt}\n" for s, gt in zip(SAMPLES, genotypes) if gt != "0/0")
    (out / "truth.tsv").write_text("".join(truth))
    for index, sample in enumerate(SAMPLES):
        r1, r2 = simulate(rng, genome, sites, index)
        write_gzip(out / "reads" / f"{sample}_R1.fastq.gz", "".join(r1))
        write_gzip(out / "reads" / f"{sample}_R2.fastq.gz", "".join(r2))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
