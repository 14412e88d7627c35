"""Which files of the workflow's folder reach the nodes, and what to say when a node lacked one.

A node gets the workflow through Snakemake's source archive: the Snakefile, its includes,
scripts (with their folders), config files, and the files git tracks in the working directory.
A file the Snakefile reads while it is parsed (a sample sheet) but git does not track stays
behind, and every job then fails on its node with a FileNotFoundError that says nothing of why.
`missing_source_hint` turns that into the cause and the fix.
"""
from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Iterable

# Snakemake leaves source files larger than this out of the archive (workflow.write_source_archive).
SNAKEMAKE_MAX_SOURCE_BYTES = 10_000_000
# How Python reports a missing file: "[Errno 2] No such file or directory: 'config/samples.tsv'"
_NOT_FOUND = re.compile(r"No such file or directory: '([^']+)'")


def archive_members(archive: Path) -> frozenset[str]:
    """The relative paths of the files in a source archive."""
    with tarfile.open(archive) as tar:
        return frozenset(os.path.normpath(m.name) for m in tar.getmembers() if m.isfile())


def missing_source_hint(stderr: str, shipped: Iterable[str], workdir: Path) -> str:
    """The cause and the fix when a task's stderr says it lacked a file that exists here but was
    not in the source archive; "" otherwise (a file missing here too is the workflow's own error)."""
    shipped = set(shipped)
    hints = []
    for name in dict.fromkeys(_NOT_FOUND.findall(stderr)):
        if os.path.isabs(name) or os.path.normpath(name) in shipped:
            continue
        local = workdir / name
        if not local.is_file():
            continue
        if local.stat().st_size > SNAKEMAKE_MAX_SOURCE_BYTES:
            why = "it is larger than the 10 MB Snakemake puts in the workflow's source archive"
            fix = "make it an input of the rules that read it"
        else:
            why = "the nodes get the Snakefile, its includes, scripts and config files, and the files git tracks"
            fix = f"track it (git add {name}; in a folder that is no git repository, git init first) or make it an input"
        hints.append(f"{name} exists here but not on the node: {why}. A file read while the Snakefile is parsed "
                     f"must reach every node: {fix}.")
    return "\n".join(hints)
