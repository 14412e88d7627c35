checkpoint split_regions:
    """Windows of config["region_size"] bases over every contig of the reference index, one
    BED file each: how many there are is known only once the reference is indexed."""
    input:
        "resources/genome.fa.fai",
    output:
        directory("results/regions"),
    params:
        size=config["region_size"],
    log:
        "logs/split_regions.log",
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "mkdir -p {output} && awk -v size={params.size} -v out={output} -F'\\t' '"
        "{{for (start = 0; start < $2; start += size) {{"
        "  end = start + size < $2 ? start + size : $2;"
        "  file = sprintf(\"%s/%03d_%s_%d_%d.bed\", out, n++, $1, start, end);"
        "  print $1 \"\\t\" start \"\\t\" end > file; close(file) }}}}' {input} 2> {log}"


rule call_region:
    """Joint calling of all samples in one region."""
    input:
        bed="results/regions/{region}.bed",
        fasta="resources/genome.fa",
        fai="resources/genome.fa.fai",
        bams=expand("results/mapped/{sample}.bam", sample=SAMPLES),
        bais=expand("results/mapped/{sample}.bam.bai", sample=SAMPLES),
    output:
        "results/calls/regions/{region}.bcf",
    log:
        "logs/call_region/{region}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "(bcftools mpileup --no-version -f {input.fasta} -R {input.bed} -a AD,DP -Ou {input.bams}"
        " | bcftools call --no-version -mv -Ob -o {output}) 2> {log}"


def region_calls(wildcards):
    """The aggregating input: one BCF per region the checkpoint wrote, in genome order (the
    regions' names start with their rank)."""
    regions = checkpoints.split_regions.get().output[0]
    names = glob_wildcards(f"{regions}/{{region}}.bed").region
    return expand("results/calls/regions/{region}.bcf", region=sorted(names))


rule concat_calls:
    input:
        region_calls,
    output:
        "results/calls/all.bcf",
    log:
        "logs/concat_calls.log",
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "bcftools concat --no-version -Ob -o {output} {input} 2> {log}"


rule filter_calls:
    """Normalised (left-aligned, multiallelic sites split) and filtered on QUAL and depth."""
    input:
        bcf="results/calls/all.bcf",
        fasta="resources/genome.fa",
        fai="resources/genome.fa.fai",
    output:
        vcf="results/variants.vcf.gz",
        tbi="results/variants.vcf.gz.tbi",
    params:
        keep=f"QUAL>={config['min_qual']} && INFO/DP>={config['min_depth']}",
    log:
        "logs/filter_calls.log",
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "(bcftools norm --no-version -f {input.fasta} -m -any -Ou {input.bcf}"
        " | bcftools view --no-version -i '{params.keep}' -Oz -o {output.vcf}"
        " && bcftools index -t {output.vcf}) 2> {log}"


rule variant_table:
    input:
        "results/variants.vcf.gz",
    output:
        "results/variants.tsv",
    log:
        "logs/variant_table.log",
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "bcftools query -H -f '%CHROM\\t%POS\\t%REF\\t%ALT\\t%QUAL\\t%INFO/DP[\\t%GT]\\n' {input} > {output} 2> {log}"
