rule prepare_reference:
    """The downloaded reference, uncompressed and indexed for samtools and bcftools."""
    input:
        config["reference"],
    output:
        fasta="resources/genome.fa",
        fai="resources/genome.fa.fai",
    log:
        "logs/prepare_reference.log",
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "(gunzip -c {input} > {output.fasta} && samtools faidx {output.fasta}) 2> {log}"


rule bwa_index:
    input:
        "resources/genome.fa",
    output:
        multiext("resources/genome.fa", ".amb", ".ann", ".bwt", ".pac", ".sa"),
    log:
        "logs/bwa_index.log",
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "bwa index {input} 2> {log}"
