rule bwa_mem:
    """Align a sample's read pairs, sort by coordinate, index."""
    input:
        reads=lambda wc: [SAMPLES[wc.sample]["fq1"], SAMPLES[wc.sample]["fq2"]],
        index=multiext("resources/genome.fa", ".amb", ".ann", ".bwt", ".pac", ".sa"),
    output:
        bam="results/mapped/{sample}.bam",
        bai="results/mapped/{sample}.bam.bai",
    log:
        "logs/bwa_mem/{sample}.log",
    benchmark:
        "benchmarks/bwa_mem/{sample}.tsv"
    params:
        rg=r"@RG\tID:{sample}\tSM:{sample}\tPL:ILLUMINA",
        # bwa takes the index's common prefix: derived from the input, so that it is where the
        # node has the index (with default storage: under .snakemake/storage/), not a fixed path
        prefix=lambda wildcards, input: input.index[0].removesuffix(".amb"),
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    # -K: a fixed batch size, so the alignments do not depend on the number of threads
    shell:
        "(bwa mem -t {threads} -K 10000000 -R '{params.rg}' {params.prefix} {input.reads}"
        " | samtools sort -@ {threads} -m 256M -o {output.bam} -"
        " && samtools index {output.bam}) 2> {log}"


rule sample_qc:
    """Mapping statistics and per-base depth (every position, zeros included)."""
    input:
        bam="results/mapped/{sample}.bam",
        bai="results/mapped/{sample}.bam.bai",
    output:
        flagstat="results/qc/{sample}.flagstat.txt",
        depth="results/qc/{sample}.depth.tsv",
    log:
        "logs/sample_qc/{sample}.log",
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "(samtools flagstat {input.bam} > {output.flagstat}"
        " && samtools depth -a {input.bam} > {output.depth}) 2> {log}"
