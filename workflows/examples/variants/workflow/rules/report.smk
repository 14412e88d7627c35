rule plot_qc:
    """Depth along the genome and the quality of the kept variants, per sample (matplotlib)."""
    input:
        depth=expand("results/qc/{sample}.depth.tsv", sample=SAMPLES),
        variants="results/variants.tsv",
    output:
        "results/plots/qc.png",
    params:
        samples=list(SAMPLES),
    log:
        "logs/plot_qc.log",
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/plot_qc.py"


rule report:
    """Per sample: reads mapped, mean depth, variants kept, recall and precision against the
    planted truth."""
    input:
        flagstat=expand("results/qc/{sample}.flagstat.txt", sample=SAMPLES),
        depth=expand("results/qc/{sample}.depth.tsv", sample=SAMPLES),
        variants="results/variants.tsv",
        truth=config["truth"],
    output:
        "results/report.md",
    params:
        samples=list(SAMPLES),
    log:
        "logs/report.log",
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/report.py"
