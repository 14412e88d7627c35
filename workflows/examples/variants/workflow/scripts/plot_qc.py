"""Depth along the genome (250 bp bins) and the QUAL of the variants each sample carries."""
import sys

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821 (Snakemake defines `snakemake`)
from variants import carries_alt, read_depth, read_variants  # noqa: E402

BIN = 250

samples = snakemake.params.samples  # noqa: F821
_, sites = read_variants(snakemake.input.variants)  # noqa: F821
fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), constrained_layout=True)
for sample, path in zip(samples, snakemake.input.depth):  # noqa: F821
    offset, xs, ys, ends = 0, [], [], []
    for chrom, values in read_depth(path).items():
        for start in range(0, len(values), BIN):
            window = values[start:start + BIN]
            xs.append((offset + start + len(window) / 2) / 1000)
            ys.append(sum(window) / len(window))
        offset += len(values)
        ends.append(offset / 1000)
    top.plot(xs, ys, label=sample, linewidth=1)
    bottom.hist([s["qual"] for s in sites if carries_alt(s["gt"][sample])], bins=20, range=(0, 250),
                histtype="step", label=sample)
for end in ends[:-1]:  # contig boundaries
    top.axvline(end, color="grey", linestyle=":", linewidth=1)
top.set(xlabel="genome position (kb, contigs end to end)", ylabel="mean depth", title="Depth of coverage")
bottom.set(xlabel="QUAL", ylabel="variants", title="Quality of the variants each sample carries")
top.legend()
bottom.legend()
fig.savefig(snakemake.output[0], dpi=100)  # noqa: F821
with open(snakemake.log[0], "w") as log:  # noqa: F821
    log.write(f"plotted {len(samples)} samples, {len(sites)} sites\n")
