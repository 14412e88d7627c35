"""Pure: which container image a job's task runs in, and what that changes in its Snakemake command.

One concept, three ways to ask for it, first match wins per job:

1. ``resources: saje_container="IMAGE"`` on the rule;
2. the rule's own ``container: "docker://IMAGE"`` when Snakemake's software deployment method asks
   for it (``--sdm apptainer``): the job's task runs in that image, as apptainer would have run the
   rule's command in it, and the node's Snakemake no longer uses apptainer itself;
3. the run's image: Snakemake's standard ``--container-image`` (what the kubernetes, googlebatch
   and azure-batch executor plugins run jobs in). Snakemake always sets it (its default is
   ``snakemake/snakemake:v<version>``); SAJE takes a value other than that default as asking for
   containers, and ``--saje-snakemake-install container`` takes the default too.

In every case the task's command is Snakemake's job command, so the image must hold Python and
Snakemake (and the default storage provider's plugin, with default storage), as for those plugins.
Batch runs OCI images only: a rule's ``library://``, ``shub://``, ``oras://`` or ``.sif`` image is
refused before anything is submitted.
"""
from __future__ import annotations

import re
from typing import Iterable

from snakemake_interface_common.exceptions import WorkflowError

__all__ = ["ContainerChoiceError", "snakemake_default_image", "run_image", "rule_image", "job_image",
           "without_apptainer", "check_existing_pool"]

_OTHER_SCHEMES = ("library://", "shub://", "oras://", "http://", "https://", "file://")
_DEPLOYMENT = re.compile(r" --(?:software-)?deployment-method((?: +(?:conda|apptainer|env-modules))+)(?= |$)")


class ContainerChoiceError(WorkflowError):
    """A job whose container image SAJE cannot run it in; the message says what to change."""


def snakemake_default_image() -> str:
    """Snakemake's own --container-image default, snakemake/snakemake:v<its version>."""
    from snakemake.common import get_container_image

    return get_container_image()


def run_image(snakemake_install: str, requested: str | None, default: str | None = None) -> str | None:
    """The run's image (3. above), or None when jobs run on the node itself."""
    default = default or snakemake_default_image()
    if snakemake_install == "container":
        return requested or default
    if requested and requested != default:
        return requested
    return None


def rule_image(url: str, rule: str) -> str:
    """The image a rule's ``container:`` names, as Batch takes it (no docker:// scheme)."""
    text = str(url).strip()
    if text.startswith("docker://"):
        return text[len("docker://"):]
    if text.startswith(_OTHER_SCHEMES) or text.endswith((".sif", ".simg")) or text.startswith(("/", "./", "../")):
        raise ContainerChoiceError(
            f"Rule {rule}: container {text!r} is not an OCI image reference. Azure Batch runs tasks in Docker/OCI "
            "images only (docker://IMAGE or IMAGE, from Docker Hub or a registry given with --saje-container-registry); "
            "push the image to a registry, or leave --sdm apptainer out so that the rule runs without it."
        )
    return text


def job_image(rule: str, resources: dict, rule_containers: Iterable[str | None], run: str | None) -> str | None:
    """The image a job's task runs in: saje_container, else its rules' ``container:`` (already
    restricted to --sdm apptainer by the caller; one image for all the jobs of a group), else the
    run's image, else None."""
    chosen = resources.get("saje_container")
    if chosen:
        return str(chosen)
    urls = set(rule_containers)
    named = {u for u in urls if u}
    if len(named) > 1 or (named and None in urls):
        raise ContainerChoiceError(
            f"Group {rule}: its rules ask for different containers ({', '.join(sorted(map(str, urls)))}), but a group "
            "runs as one Batch task in one container. Give them the same container: or put them in separate groups."
        )
    if named:
        return rule_image(named.pop(), rule)
    return run


def without_apptainer(command: str) -> str:
    """The job's command with apptainer taken out of its --deployment-method (the task already runs
    in the rule's image, where no apptainer is); other methods stay."""
    def drop(match: re.Match) -> str:
        kept = [m for m in match.group(1).split() if m != "apptainer"]
        return f" --deployment-method {' '.join(kept)}" if kept else ""

    return _DEPLOYMENT.sub(drop, command)


def check_existing_pool(pool_id: str, configuration: object | None, image: str | None, rule: str) -> None:
    """A pool SAJE did not create runs the job only if it agrees about containers: Batch requires
    containerSettings on every task of a pool with a containerConfiguration, and refuses them on
    any other pool (REST reference, BatchTaskCreateOptions.containerSettings)."""
    if configuration is not None and not image:
        raise ContainerChoiceError(
            f"Rule {rule}: pool {pool_id} runs container tasks only (it has a containerConfiguration), but the job"
            " names no container image. Give one (--container-image, resources saje_container) or use another pool."
        )
    if configuration is None and image:
        raise ContainerChoiceError(
            f"Rule {rule}: the job runs in container image {image!r}, but pool {pool_id} has no containerConfiguration,"
            " so Batch cannot run container tasks on it. Use a container pool (saje pool create --container-image) or"
            " leave saje_pool / --saje-pool-id out so that SAJE creates one."
        )
