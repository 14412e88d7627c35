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
import subprocess
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from snakemake_interface_common.exceptions import WorkflowError

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


# xz level of the sources archive. Snakemake's own writer uses the default level 6, whose
# compressor takes about 23 MiB of memory while it runs (an 8 MiB dictionary and the hash table
# zeroed for it), the Snakemake process's high-water mark at the start of a large run; level 1
# takes 7 MiB and packs workflow sources (text, a few MB at most) as tightly.
SOURCES_XZ_PRESET = 1


def write_source_archive(workflow: Any, archive: Path, warn: Callable[[str], None]) -> None:
    """Snakemake's source archive of the workflow, with two git file-name cases made clear.

    The files are Snakemake's own choice (`dag.get_sources()`: the Snakefile, its includes,
    scripts, config files, git-tracked files), left out as `Workflow.write_source_archive`
    leaves them out, with its warnings; only the xz level differs (SOURCES_XZ_PRESET).

    Snakemake lists git-tracked files with `git ls-files`, which quotes "unusual" names, and adds
    them as printed. Non-ASCII names (`données.csv`) are unusual only under git's default
    core.quotePath, turned off here for this call; names with `"`, `\\` or control characters
    are always quoted, and are refused with their names and what to do.
    """
    try:
        with _git_config("core.quotePath", "false"), tarfile.open(archive, "w:xz", preset=SOURCES_XZ_PRESET) as tar:
            for name in _source_files(workflow.dag.get_sources(), warn):
                tar.add(name)
    except OSError:
        odd = _unquotable_git_names()
        if not odd:
            raise
        raise WorkflowError(
            "SAJE cannot put the workflow's git-tracked files into the source archive the jobs run from: "
            f"Snakemake cannot read these names back from git ({len(odd)}): {', '.join(map(repr, odd[:5]))}"
            + (" ..." if len(odd) > 5 else "")
            + ". Names with '\"', '\\' or control characters are quoted by git. Rename them (git mv) or stop "
            "tracking them (git rm --cached)."
        ) from None


def _source_files(names: Iterable[str], warn: Callable[[str], None]) -> Iterator[str]:
    """The sources Snakemake would archive: below the working directory and at most
    SNAKEMAKE_MAX_SOURCE_BYTES (larger files are for inputs, not the archive)."""
    for name in names:
        if name.startswith(".."):
            warn(f"SAJE: source file {name} is outside the working directory and does not reach the nodes; start "
                 "the workflow from a directory below which all its sources (and config files) are.")
        elif (size := os.path.getsize(name)) > SNAKEMAKE_MAX_SOURCE_BYTES:
            warn(f"SAJE: source file {name} ({size:,} bytes) is larger than the {SNAKEMAKE_MAX_SOURCE_BYTES:,} bytes "
                 "Snakemake puts in the source archive and does not reach the nodes; make it an input of the rules "
                 "that read it.")
        else:
            yield name


@contextmanager
def _git_config(key: str, value: str) -> Iterator[None]:
    """A git setting for the git commands this process starts meanwhile (GIT_CONFIG_COUNT/KEY/VALUE)."""
    count = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    names = ("GIT_CONFIG_COUNT", f"GIT_CONFIG_KEY_{count}", f"GIT_CONFIG_VALUE_{count}")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(zip(names, (str(count + 1), key, value)))
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _unquotable_git_names() -> list[str]:
    """Tracked names git always quotes in `ls-files` output, from its NUL-separated form."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--recurse-submodules", "."], capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    names = [n.decode(errors="replace") for n in out.split(b"\0") if n]
    return [n for n in names if '"' in n or "\\" in n or any(ord(c) < 32 or ord(c) == 127 for c in n)]
