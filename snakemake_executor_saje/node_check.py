"""The node's check: Snakemake on a Batch node runs exactly the job the submitting Snakemake planned.

SAJE runs this file on the node *instead of* ``python -m snakemake`` (it arrives as a resource
file; SAJE itself is not installed there), with the job's expected jobs, inputs and outputs in the
task environment (``SAJE_NODE_EXPECT``). It lets Snakemake parse the workflow and build the
job's DAG as usual, then compares before anything runs:

* the jobs the node would run must be exactly the task's target jobs: never an upstream job
  whose output the node happens to lack (a checkpoint, a file the Snakefile reads);
* each target job's inputs and outputs must be the ones the submitting side computed: a
  ``glob_wildcards`` over a folder the node does not have gives an empty sample list there,
  and the job would "succeed" with wrong (empty) results.

On a difference it prints what differs and the likely cause to stderr and exits with
``EXIT_CODE`` before any job starts. It needs only the standard library and Snakemake, and is
imported by the executor for the pieces both sides must agree on (`file_key`, `expected_jobs`,
`encode`).
"""
from __future__ import annotations

import base64
import json
import os
import runpy
import sys
import zlib
from typing import Any, Iterable, Mapping

ENV = "SAJE_NODE_EXPECT"
# sysexits' EX_DATAERR: the job's data differ from what was planned. Snakemake itself exits 0 or 1.
EXIT_CODE = 65
HEADER = "SAJE node check:"
FILE_PREFIX = "file:"
_LIST_AT_MOST = 10


# ----------------------------------------------------------------- what both sides compute
def file_key(f: Any, cwd: str | None = None) -> str:
    """How a job's file is compared: a storage file by its query (``az://...``: its local copy
    lives under different prefixes here and on the node), a path relative to the working
    directory when it lies under it (the node's working directory is not the local one)."""
    if getattr(f, "is_storage", False):
        return str(f.storage_object.query)
    path = str(f)
    cwd = cwd or os.getcwd()
    if os.path.isabs(path) and (path == cwd or path.startswith(cwd.rstrip("/") + "/")):
        path = os.path.relpath(path, cwd)
    return os.path.normpath(path)


def job_key(rule: str, wildcards: Mapping[str, Any]) -> str:
    """A job by its rule and wildcards, as messages name it: ``count (sample=A)``."""
    values = ", ".join(f"{k}={v}" for k, v in sorted((str(k), str(v)) for k, v in wildcards.items()))
    return f"{rule} ({values})" if values else rule


def describe_jobs(jobs: Iterable[Any], cwd: str | None = None) -> dict[str, dict[str, list[str]]]:
    """{job key: {"input": [...], "output": [...]}} of Snakemake jobs (sorted, for comparison)."""
    return {
        job_key(job.rule.name, job.wildcards_dict): {
            "input": sorted({file_key(f, cwd) for f in job.input}),
            "output": sorted({file_key(f, cwd) for f in job.output}),
        }
        for job in jobs
    }


def expected_jobs(job: Any) -> dict[str, dict[str, list[str]]]:
    """What the submitting Snakemake planned for one submitted job (all jobs of a group job)."""
    return describe_jobs(list(job.jobs) if job.is_group() else [job])


def encode(expected: Mapping[str, Any]) -> str:
    """Compact text for an environment variable: zlib-compressed JSON in base64."""
    raw = json.dumps(expected, separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def decode(value: str) -> dict[str, Any]:
    """The inverse of `encode`; ``file:PATH`` reads the same text from a file (large jobs)."""
    if value.startswith(FILE_PREFIX):
        with open(value[len(FILE_PREFIX):], encoding="ascii") as fh:
            value = fh.read()
    return json.loads(zlib.decompress(base64.b64decode(value)))


# ----------------------------------------------------------------- the comparison
def compare(expected: Mapping[str, Mapping[str, list[str]]], planned: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every difference between the expected jobs and those the node's Snakemake would run.

    ``planned`` maps job keys to {"input", "output", and for jobs not expected, "reason"}."""
    problems = []
    for key in sorted(set(planned) - set(expected)):
        reason = planned[key].get("reason")
        problems.append(f"the node would also run job {key}, which is not this task's job"
                        + (f" ({reason})" if reason else ""))
    for key in sorted(set(expected) - set(planned)):
        problems.append(f"the node would not run job {key} at all")
    for key in sorted(set(expected) & set(planned)):
        for kind in ("input", "output"):
            here, there = set(expected[key][kind]), set(planned[key][kind])
            if here - there:
                problems.append(f"job {key}: {len(here - there)} {kind} file(s) planned by the submitting Snakemake "
                                f"but not by the node's: {_some(here - there)}")
            if there - here:
                problems.append(f"job {key}: {len(there - here)} {kind} file(s) the node's Snakemake adds: "
                                f"{_some(there - here)}")
    return problems


def _some(files: set[str]) -> str:
    shown = sorted(files)[:_LIST_AT_MOST]
    more = len(files) - len(shown)
    return ", ".join(shown) + (f" (and {more} more)" if more else "")


def failure_message(problems: list[str]) -> str:
    """What the task's stderr (and so SAJE's error) says when the check fails."""
    lines = [f"{HEADER} refused to run the job: the workflow evaluates differently on this node than where "
             "Snakemake was started."]
    lines += [f"  - {p}" for p in problems]
    if any(" also run " in p for p in problems):
        lines.append("Likely cause: a file the node needs to evaluate the job (one an input function reads, or a "
                     "checkpoint's output) is missing on the node, so its Snakemake wants to make it again; SAJE "
                     "never runs a job's upstream jobs on its node. Declare such a file as an input of the rule.")
    else:
        lines.append("Likely cause: the Snakefile lists files when it is parsed or in an input function "
                     "(glob, glob_wildcards, os.listdir, os.path.exists) over files the nodes do not have "
                     "(not tracked by git, or excluded from the sources archive). Use a sample sheet under "
                     "version control, or declare the files as inputs of the rules that need them.")
    return "\n".join(lines)


# ----------------------------------------------------------------- the hook into Snakemake
def planned_jobs(dag: Any) -> dict[str, dict[str, Any]]:
    """What the node's Snakemake is about to run, with the reason of any job beyond its targets."""
    jobs = list(dag.needrun_jobs())
    planned: dict[str, dict[str, Any]] = dict(describe_jobs(jobs))
    for job in jobs:
        planned[job_key(job.rule.name, job.wildcards_dict)]["reason"] = str(dag.reason(job))
    return planned


def install(expected: Mapping[str, Any]) -> None:
    """Check the DAG right after Snakemake built it, before it schedules anything."""
    import snakemake.cli  # noqa: F401 - imports snakemake.workflow in the order Snakemake's own modules need
    from snakemake.workflow import Workflow

    build = Workflow._build_dag

    def checked_build_dag(workflow: Any) -> None:
        build(workflow)
        problems = compare(expected, planned_jobs(workflow.dag))
        if problems:
            sys.stdout.flush()
            print(failure_message(problems), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CODE)  # not an Exception: Snakemake's handlers let it through

    Workflow._build_dag = checked_build_dag


def patch_azure_directory_exists() -> bool:
    """snakemake-storage-plugin-azure <= 0.4.4 reports every directory() output as missing: its
    ``exists`` reads a cache (``_is_dir``) that only an upload fills. Correct that one method, so
    a directory counts as existing when blobs lie under it. True if the patch was applied."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        installed = version("snakemake-storage-plugin-azure")
    except (ImportError, PackageNotFoundError):
        return False
    if _version_tuple(installed) > (0, 4, 4):
        return False
    try:
        from snakemake_interface_storage_plugins.storage_object import retry_decorator
        from snakemake_storage_plugin_azure import StorageObject
    except ImportError:
        return False
    if getattr(StorageObject.exists, "saje_fixed", False):
        return True

    @retry_decorator
    def exists(self) -> bool:
        if not self.container_client().exists():
            return False
        if self.blob_client().exists():
            return True
        self._is_dir = any(self.get_prefix_blobs())
        return self._is_dir

    exists.saje_fixed = True  # type: ignore[attr-defined]
    StorageObject.exists = exists
    return True


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def main(argv: list[str]) -> None:
    """``python node_check.py SNAKEMAKE-ARGS...``: as ``python -m snakemake SNAKEMAKE-ARGS...``, checked."""
    value = os.environ.get(ENV)
    if not value:
        print(f"{HEADER} {ENV} is not set: SAJE starts this file itself, with the job's expected files.",
              file=sys.stderr)
        raise SystemExit(EXIT_CODE)
    try:
        expected = decode(value)
    except (OSError, ValueError, zlib.error) as exc:
        print(f"{HEADER} cannot read the job's expected files ({exc}).", file=sys.stderr)
        raise SystemExit(EXIT_CODE) from None
    try:
        install(expected)
    except (ImportError, AttributeError) as exc:
        print(f"{HEADER} cannot hook into this node's Snakemake ({exc}); SAJE needs Snakemake 9 on the nodes "
              "(--saje-snakemake-install pip installs the version running here).", file=sys.stderr)
        raise SystemExit(EXIT_CODE) from None
    patch_azure_directory_exists()
    sys.path[0] = os.getcwd()  # as `python -m` has it: the working directory, not this file's folder
    sys.argv = ["snakemake", *argv]
    runpy.run_module("snakemake", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
