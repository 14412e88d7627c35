"""The run's report (Markdown): mapping, depth, variants and accuracy against the planted truth."""
import csv
import re
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821 (Snakemake defines `snakemake`)
from variants import carries_alt, read_depth, read_variants  # noqa: E402


def flagstat(path):
    """Total reads and mapped reads from `samtools flagstat`."""
    counts = {}
    with open(path) as text:
        for line in text:
            found = re.match(r"(\d+) \+ \d+ (in total|mapped|properly paired)", line)
            if found:
                counts.setdefault(found.group(2), int(found.group(1)))
    return counts["in total"], counts["mapped"], counts["properly paired"]


def key(site):
    return site["chrom"], int(site["pos"]), site["ref"], site["alt"]


s = snakemake  # noqa: F821
_, sites = read_variants(s.input.variants)
with open(s.input.truth, newline="") as table:
    truth = list(csv.DictReader(table, delimiter="\t"))
lines = [
    "# Variant calling report",
    "",
    f"Samples: {len(s.params.samples)}. Variant sites kept: {len(sites)} "
    f"(SNPs: {sum(len(x['ref']) == len(x['alt']) for x in sites)}, "
    f"indels: {sum(len(x['ref']) != len(x['alt']) for x in sites)}).",
    "",
    "| sample | reads | mapped | properly paired | mean depth | bases >= 5x | variants | recall | precision | genotypes right |",
    "| ------ | ----: | -----: | --------------: | ---------: | ----------: | -------: | -----: | --------: | --------------: |",
]
for sample, stats, depth_file in zip(s.params.samples, s.input.flagstat, s.input.depth):
    total, mapped, paired = flagstat(stats)
    depth = [d for values in read_depth(depth_file).values() for d in values]
    called = {key(x): x["gt"][sample] for x in sites if carries_alt(x["gt"][sample])}
    expected = {key(t): t["genotype"] for t in truth if t["sample"] == sample}
    found = called.keys() & expected.keys()
    right = sum(called[k].replace("|", "/") == expected[k] for k in found)
    lines.append(
        f"| {sample} | {total} | {mapped / total:.2%} | {paired / total:.2%} | {sum(depth) / len(depth):.1f} "
        f"| {sum(d >= 5 for d in depth) / len(depth):.1%} | {len(called)} | {len(found) / len(expected):.1%} "
        f"| {len(found) / max(1, len(called)):.1%} | {right}/{len(found)} |"
    )
lines += ["", "Recall and precision: sites (chrom, pos, ref, alt) carried by the sample, against data/truth.tsv."]
with open(s.output[0], "w") as out:
    out.write("\n".join(lines) + "\n")
with open(s.log[0], "w") as log:
    log.write(f"{len(sites)} sites, {len(truth)} truth genotypes\n")
