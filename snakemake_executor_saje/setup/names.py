"""Azure's naming rules for what the setup workflows create, checked before anything is made.

Each check returns nothing or raises `NameRuleError` whose message names the kind of resource,
the value, the rule it breaks and a valid example, so a deploy stops before its first ARM call
instead of after half of it. Global uniqueness (storage accounts everywhere, Batch accounts per
region) can only be asked of Azure: `setup.deploy.check_names_available` does that with
checkNameAvailability.

Rules (Azure's documentation "Naming rules and restrictions for Azure resources"):
  resource group      1-90: letters, digits, '_', '-', '.', '(', ')'; not ending with '.'
  storage account     3-24: lower-case letters and digits; globally unique
  Batch account       3-24: lower-case letters and digits; unique per region
  blob container      3-63: lower-case letters, digits, '-'; starts with a letter or digit; no '--'
  VM name (Linux)     1-64: letters, digits, '-', '_', '.'; not starting with '_' nor ending '.'/'-'
  gallery             1-80: letters, digits, '_', '.'; not starting or ending with '_' or '.'
  image definition    1-80: letters, digits, '-', '_', '.'; starting and ending with letter/digit
  image version       Major.Minor.Patch, each a 32-bit integer
  deployment name     (SAJE's own) 1-40: letters, digits, '-', '_' (used in paths and profile names)
  location            letters and digits once spaces are removed ("West Europe" -> westeurope)
"""
from __future__ import annotations

import re
import uuid

__all__ = [
    "NameRuleError",
    "check_resource_group",
    "check_storage_account",
    "check_batch_account",
    "check_container",
    "check_vm_name",
    "check_gallery",
    "check_image_definition",
    "check_image_version",
    "check_deployment_name",
    "check_guid",
    "normalize_location",
    "default_names",
]


class NameRuleError(ValueError):
    """A name Azure would refuse; the message says which rule and gives an example."""


_RG = re.compile(r"^[-\w.()]{1,90}$")
_LOWER_ALNUM = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_VM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$")
_GALLERY = re.compile(r"^[A-Za-z0-9]+([_.][A-Za-z0-9]+)*$")
_IMAGE = re.compile(r"^[A-Za-z0-9]+([-_.][A-Za-z0-9]+)*$")
_VERSION = re.compile(r"^(\d{1,10})\.(\d{1,10})\.(\d{1,10})$")
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _fail(kind: str, value: object, rule: str, example: str) -> NameRuleError:
    return NameRuleError(f"{kind} name {value!r} is not allowed by Azure: {rule}. Example: {example!r}.")


def _text(kind: str, value: object, example: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(kind, value, "a non-empty string is required", example)
    return value


def check_resource_group(name: object) -> str:
    text = _text("Resource group", name, "saje-rg")
    if not _RG.match(text) or text.endswith("."):
        raise _fail("Resource group", text, "1-90 letters, digits, '_', '-', '.', '(' and ')', not ending"
                    " with '.'", "saje-rg")
    return text


def _lower_alnum(kind: str, name: object, example: str, unique: str) -> str:
    text = _text(kind, name, example)
    if not _LOWER_ALNUM.match(text):
        problems = []
        if not 3 <= len(text) <= 24:
            problems.append(f"it has {len(text)} characters, not 3-24")
        if text != text.lower():
            problems.append("it has upper-case letters")
        if re.search(r"[^A-Za-z0-9]", text):
            bad = "".join(sorted(set(re.findall(r"[^A-Za-z0-9]", text))))
            problems.append(f"it has characters other than letters and digits ({bad!r})")
        raise _fail(kind, text, f"3-24 lower-case letters and digits, {unique} ({'; '.join(problems)})", example)
    return text


def check_storage_account(name: object) -> str:
    return _lower_alnum("Storage account", name, "sajestore1234", "unique across all of Azure")


def check_batch_account(name: object) -> str:
    return _lower_alnum("Batch account", name, "sajebatch1234", "unique within the region")


def check_container(name: object) -> str:
    text = _text("Blob container", name, "snakemake")
    if not _CONTAINER.match(text):
        raise _fail("Blob container", text, "3-63 lower-case letters, digits and single '-', starting and ending"
                    " with a letter or digit", "snakemake")
    return text


def check_vm_name(name: object) -> str:
    text = _text("Virtual machine", name, "saje-build")
    if not _VM.match(text):
        raise _fail("Virtual machine", text, "1-64 letters, digits, '-', '_' and '.', not starting with '_' nor"
                    " ending with '.' or '-'", "saje-build")
    return text


def check_gallery(name: object) -> str:
    text = _text("Compute gallery", name, "saje_gallery")
    if not _GALLERY.match(text) or len(text) > 80:
        raise _fail("Compute gallery", text, "1-80 letters, digits, '_' and '.', not starting or ending with '_'"
                    " or '.' (no '-')", "saje_gallery")
    return text


def check_image_definition(name: object) -> str:
    text = _text("Image definition", name, "ubuntu-hpc-mpi")
    if not _IMAGE.match(text) or len(text) > 80:
        raise _fail("Image definition", text, "1-80 letters, digits, '-', '_' and '.', starting and ending with a"
                    " letter or digit", "ubuntu-hpc-mpi")
    return text


def check_image_version(name: object) -> str:
    text = _text("Image version", str(name) if isinstance(name, (int, float)) else name, "1.0.0")
    match = _VERSION.match(text)
    if not match or any(int(part) > 2**31 - 1 for part in match.groups()):
        raise _fail("Image version", text, "Major.Minor.Patch, each a 32-bit integer", "1.0.0")
    return text


def check_deployment_name(name: object) -> str:
    text = _text("Deployment", name, "saje")
    if not _DEPLOYMENT.match(text):
        raise _fail("Deployment", text, "1-40 letters, digits, '-' and '_', starting with a letter or digit (it"
                    " names the state directory, the profile and the saje.json entry)", "saje")
    return text


def check_guid(what: str, value: object) -> str:
    if not isinstance(value, str) or not _GUID.match(value):
        raise NameRuleError(f"{what} {value!r} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).")
    return value.lower()


def normalize_location(location: object) -> str:
    """'West Europe' -> 'westeurope', as ARM stores it; refuses what no region can be."""
    text = re.sub(r"\s+", "", str(location or "")).lower()
    if not text or not re.match(r"^[a-z0-9]+$", text):
        raise NameRuleError(f"Location {location!r} is not an Azure region name (e.g. 'westeurope', 'eastus').")
    return text


def default_names(deployment: str, subscription_id: str | None = None) -> dict[str, str]:
    """Names derived from the deployment name, stable per subscription.

    Storage and Batch names must be globally (or regionally) unique, so they carry a short
    hash of the subscription and deployment: the same deployment always gets the same names
    (re-running finds what it made) and two users' "saje" deployments do not collide.
    """
    check_deployment_name(deployment)
    seed = uuid.uuid5(uuid.NAMESPACE_URL, f"saje/{subscription_id or ''}/{deployment}").hex[:8]
    stem = re.sub(r"[^a-z0-9]", "", deployment.lower())[:10] or "saje"
    return {
        "resource_group": f"{deployment}-rg",
        "storage_account": f"{stem}st{seed}"[:24],
        "batch_account": f"{stem}ba{seed}"[:24],
    }
