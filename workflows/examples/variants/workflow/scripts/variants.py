"""Reading the pipeline's own text outputs; shared by the plot and report scripts."""
from __future__ import annotations

import re
from collections import defaultdict


def read_variants(path: str) -> tuple[list[str], list[dict]]:
    """`bcftools query -H` output: (sample names, one dict per site with its genotype per sample)."""
    samples, sites = [], []
    with open(path) as table:
        for line in table:
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                # '# [1]CHROM', ..., '[7]S1:GT': the sample columns are the ':GT' ones
                samples = [re.sub(r"^\[\d+\]", "", f)[:-3] for f in fields if f.endswith(":GT")]
                continue
            chrom, pos, ref, alt, qual, depth = fields[:6]
            sites.append({"chrom": chrom, "pos": int(pos), "ref": ref, "alt": alt, "qual": float(qual),
                          "depth": int(depth), "gt": dict(zip(samples, fields[6:]))})
    return samples, sites


def carries_alt(genotype: str) -> bool:
    return any(allele not in ("0", ".") for allele in re.split(r"[/|]", genotype))


def read_depth(path: str) -> dict[str, list[int]]:
    """`samtools depth -a` output: contig -> depth at each position, in order."""
    depth: dict[str, list[int]] = defaultdict(list)
    with open(path) as table:
        for line in table:
            chrom, _, value = line.split("\t")
            depth[chrom].append(int(value))
    return dict(depth)
