"""The deploy workflow's steps: each makes (or finds) one thing in Azure and returns its marker.

Order (workflows/deploy/Snakefile): provider registration and resource group, then the role
assignment (the step most often refused: it needs Owner or User Access Administrator, so it comes
before anything costly), storage account, containers, Batch account, and last the profile files.

Every step looks before it writes: a GET (or checkNameAvailability) first, a PUT only for what is
missing, so re-running against what exists makes no ARM write. ``teardown`` deletes, newest first,
what the markers say SAJE created (``created: true``) and nothing else; ``rollback`` does the same
for one run's markers only (a failed deploy leaves nothing half-made).
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import names
from .clients import Arm, principal_of
from .markers import SetupError, existing, explain, is_not_found, markers_in, read_marker, wait_until

__all__ = ["Plan", "plan", "STEPS", "register_provider", "ensure_resource_group", "ensure_role_assignment",
           "ensure_storage", "ensure_containers", "ensure_batch_account", "write_profile", "teardown", "rollback"]

# Marker file stems, in creation order (teardown walks them backwards).
STEPS = ("provider", "resource_group", "role_assignment", "storage", "containers", "batch_account", "profile")
ALLOCATION_MODES = ("BatchService", "UserSubscription")
PROFILE_CREDENTIALS = ("auto", "shared-key", "service-principal", "none")


@dataclass
class Plan:
    """A deploy's names and choices, checked against Azure's rules before any call."""

    name: str
    location: str
    resource_group: str
    storage_account: str
    batch_account: str
    containers: list[str]
    pool_allocation_mode: str = "BatchService"
    role: str = "Contributor"
    principal_id: str | None = None
    principal_profile: str | None = None
    principal_client_id: str | None = None
    profile_credential: str = "auto"
    state_dir: Path = Path(".saje/deploy/saje")
    profile_path: Path = Path("profiles/saje/config.yaml")
    saje_json: Path = Path("~/.azure/saje.json")
    write_saje_json: bool = True
    credentials_file: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def marker(self, step: str) -> Path:
        return self.state_dir / f"{step}.json"

    @property
    def has_principal(self) -> bool:
        return bool(self.principal_id or self.principal_profile or self.principal_client_id)


def plan(config: Mapping[str, Any], subscription_id: str | None = None) -> Plan:
    """The Plan of a deploy config; NameRuleError (a ValueError) for anything Azure would refuse."""
    name = names.check_deployment_name(config.get("name") or "saje")
    defaults = names.default_names(name, subscription_id or config.get("subscription_id"))
    mode = config.get("pool_allocation_mode") or "BatchService"
    if mode not in ALLOCATION_MODES:
        raise names.NameRuleError(f"pool_allocation_mode {mode!r} must be one of {', '.join(ALLOCATION_MODES)}.")
    principal = config.get("batch_principal") or {}
    principal_id = principal.get("principal_id") or None
    if principal_id:
        principal_id = names.check_guid("batch_principal.principal_id (an object id)", principal_id)
    client_id = principal.get("managed_identity_client_id") or None
    if client_id:
        client_id = names.check_guid("batch_principal.managed_identity_client_id", client_id)
    credential = config.get("profile_credential") or "auto"
    if credential not in PROFILE_CREDENTIALS:
        raise names.NameRuleError(f"profile_credential {credential!r} must be one of {', '.join(PROFILE_CREDENTIALS)}.")
    containers = [names.check_container(c) for c in (config.get("containers") or ["snakemake"])]
    state_root = Path(config.get("state_dir") or ".saje")
    profiles_dir = Path(config.get("profiles_dir") or "profiles")
    return Plan(
        name=name,
        location=names.normalize_location(config.get("location") or "westeurope"),
        resource_group=names.check_resource_group(config.get("resource_group") or defaults["resource_group"]),
        storage_account=names.check_storage_account(config.get("storage_account") or defaults["storage_account"]),
        batch_account=names.check_batch_account(config.get("batch_account") or defaults["batch_account"]),
        containers=containers,
        pool_allocation_mode=mode,
        role=str(config.get("role") or "Contributor"),
        principal_id=principal_id,
        principal_profile=principal.get("profile") or None,
        principal_client_id=client_id,
        profile_credential=credential,
        state_dir=state_root / "deploy" / name,
        profile_path=profiles_dir / name / "config.yaml",
        saje_json=Path(os.path.expanduser(str(config.get("saje_json") or "~/.azure/saje.json"))),
        write_saje_json=bool(config.get("write_saje_json", True)),
        credentials_file=config.get("credentials_file") or None,
        tags={"saje-deployment": name, **{str(k): str(v) for k, v in (config.get("tags") or {}).items()}},
    )


def _hint(p: Plan) -> str:
    return (f"What exists is recorded in {p.state_dir}/; `saje teardown --name {p.name}` (or the workflow's"
            " `teardown` target) removes what SAJE made.")


def _call(p: Plan, doing: str, fn: Callable[[], Any]) -> Any:
    from azure.core.exceptions import AzureError

    try:
        return fn()
    except AzureError as exc:
        raise explain(exc, doing, state_hint=_hint(p)) from None


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


def _existing(p: Plan, doing: str, get: Callable[[], Any]) -> Any:
    """What ``get`` returns, or None when Azure answers 404."""
    return existing(get, doing, _hint(p))


def _base(p: Plan, kind: str, rid: str, name: str, created: bool, run_id: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "id": rid, "name": name, "created": created, "run_id": run_id if created else None,
            "deployment": p.name, **extra}


# ----------------------------------------------------------------------------- steps
def register_provider(arm: Arm, p: Plan, run_id: str, *, namespace: str = "Microsoft.Batch",
                      timeout: float = 600.0) -> dict[str, Any]:
    """Register the Batch resource provider if it is not (a subscription-level, free, one-off step)."""
    state = _call(p, f"reading the {namespace} provider", lambda: arm.resource.providers.get(namespace)).registration_state
    created = state != "Registered"
    if created:
        _call(p, f"registering the {namespace} resource provider", lambda: arm.resource.providers.register(namespace))
        wait_until(f"{namespace} to be registered", lambda: _call(
            p, f"reading the {namespace} provider",
            lambda: arm.resource.providers.get(namespace)).registration_state == "Registered", timeout)
    # Registration is never undone by teardown: other deployments of the subscription rely on it.
    return {"kind": "provider", "id": f"/subscriptions/{arm.subscription_id}/providers/{namespace}",
            "name": namespace, "created": False, "registered_now": created, "deployment": p.name}


def ensure_resource_group(arm: Arm, p: Plan, run_id: str) -> dict[str, Any]:
    groups = arm.resource.resource_groups
    # GET rather than HEAD: a refusal then carries ARM's error body (AuthorizationFailed names the action).
    group = _existing(p, f"reading resource group {p.resource_group}", lambda: groups.get(p.resource_group))
    if group is not None:
        return _base(p, "resource_group", group.id, group.name, False, run_id, location=group.location)
    group = _call(p, f"creating resource group {p.resource_group}", lambda: groups.create_or_update(
        p.resource_group, {"location": p.location, "tags": p.tags}))
    return _base(p, "resource_group", group.id, group.name, True, run_id, location=group.location)


def batch_principal(arm: Arm, p: Plan) -> str | None:
    """The object id of the batch-level identity: given, or read from a token of its credential."""
    if p.principal_id:
        return p.principal_id
    if p.principal_client_id:
        from azure.identity import ManagedIdentityCredential

        return principal_of(ManagedIdentityCredential(client_id=p.principal_client_id))
    if p.principal_profile:
        from ..credentials import get_profile, resolve_credential

        profile = get_profile(p.principal_profile, p.credentials_file)
        if not profile.has_service_principal:
            raise SetupError(f"batch_principal.profile {p.principal_profile!r} has no service principal"
                             " (tenant_id, client_id, secret) to read an object id from.")
        return principal_of(resolve_credential(profile, purpose="batch"))
    return None


def _role_definition_id(arm: Arm, p: Plan, scope: str) -> str:
    found = _call(p, f"looking up role {p.role}", lambda: list(
        arm.auth.role_definitions.list(scope, filter=f"roleName eq '{p.role}'")))
    if not found:
        raise SetupError(f"No role definition named {p.role!r} (e.g. Contributor, Owner).")
    return found[0].id


def ensure_role_assignment(arm: Arm, p: Plan, run_id: str) -> dict[str, Any]:
    """Let the batch-level identity be ``p.role`` (Contributor) on the resource group."""
    scope = arm.group_scope(p.resource_group)
    try:
        principal = batch_principal(arm, p)
    except SetupError:
        raise
    except Exception as exc:  # token errors of the batch-level credential
        raise explain(exc, "signing in as the batch-level identity", state_hint=_hint(p)) from None
    if principal is None:
        return {"kind": "role_assignment", "id": None, "name": None, "created": False, "skipped": True,
                "reason": "no batch_principal configured", "deployment": p.name}
    role_id = _role_definition_id(arm, p, scope)
    existing = _call(p, "listing role assignments", lambda: [
        a for a in arm.auth.role_assignments.list_for_scope(scope, filter=f"principalId eq '{principal}'")
        if a.role_definition_id.rsplit("/", 1)[-1].lower() == role_id.rsplit("/", 1)[-1].lower()
        and names_equal(a.scope, scope)])
    if existing:
        a = existing[0]
        return _base(p, "role_assignment", a.id, a.name, False, run_id, principal_id=principal, role=p.role, scope=scope)
    a = _call(p, f"assigning {p.role} on {p.resource_group} to the batch-level identity",
              lambda: arm.auth.role_assignments.create(scope, str(uuid.uuid4()), {"properties": {
                  "roleDefinitionId": role_id, "principalId": principal, "principalType": "ServicePrincipal"}}))
    return _base(p, "role_assignment", a.id, a.name, True, run_id, principal_id=principal, role=p.role, scope=scope)


def names_equal(a: str | None, b: str | None) -> bool:
    return (a or "").rstrip("/").lower() == (b or "").rstrip("/").lower()


def _storage_view(account: Any) -> dict[str, Any]:
    return {"blob_endpoint": account.primary_endpoints.blob if account.primary_endpoints else None,
            "location": account.location}


def ensure_storage(arm: Arm, p: Plan, run_id: str) -> dict[str, Any]:
    accounts = arm.storage.storage_accounts
    account = _existing(p, f"reading storage account {p.storage_account}",
                        lambda: accounts.get_properties(p.resource_group, p.storage_account))
    if account is not None:
        return _base(p, "storage_account", account.id, account.name, False, run_id, **_storage_view(account))
    check = _call(p, "checking the storage account name", lambda: accounts.check_name_availability(
        {"name": p.storage_account, "type": "Microsoft.Storage/storageAccounts"}))
    if not check.name_available:
        raise SetupError(f"Storage account name {p.storage_account!r} is not available ({_value(check.reason)}:"
                         f" {check.message}). Storage names are unique across all of Azure: choose another"
                         " (storage_account in the config, --storage-account).")
    account = _call(p, f"creating storage account {p.storage_account}", lambda: accounts.begin_create(
        p.resource_group, p.storage_account, {"location": p.location, "sku": {"name": "Standard_LRS"},
                                              "kind": "StorageV2", "tags": p.tags,
                                              "properties": {"minimumTlsVersion": "TLS1_2",
                                                             "allowBlobPublicAccess": False}}).result())
    return _base(p, "storage_account", account.id, account.name, True, run_id, **_storage_view(account))


def ensure_containers(arm: Arm, p: Plan, run_id: str, storage: Mapping[str, Any]) -> dict[str, Any]:
    containers = arm.storage.blob_containers
    items = []
    for name in p.containers:
        got = _existing(p, f"reading container {name}",
                        lambda: containers.get(p.resource_group, p.storage_account, name))
        if got is not None:
            items.append({"id": got.id, "name": name, "created": False})
            continue
        made = _call(p, f"creating container {name}", lambda: containers.create(
            p.resource_group, p.storage_account, name, {}))
        items.append({"id": made.id, "name": name, "created": True, "run_id": run_id})
    return {"kind": "containers", "id": storage["id"], "name": p.storage_account, "deployment": p.name,
            "created": any(i["created"] for i in items), "run_id": run_id, "containers": items}


def _batch_view(account: Any) -> dict[str, Any]:
    return {"account_endpoint": account.account_endpoint, "location": account.location,
            "pool_allocation_mode": str(getattr(account.pool_allocation_mode, "value", account.pool_allocation_mode))}


def ensure_batch_account(arm: Arm, p: Plan, run_id: str, storage: Mapping[str, Any]) -> dict[str, Any]:
    accounts = arm.batch.batch_account
    account = _existing(p, f"reading Batch account {p.batch_account}",
                        lambda: accounts.get(p.resource_group, p.batch_account))
    if account is not None:
        return _base(p, "batch_account", account.id, account.name, False, run_id, **_batch_view(account))
    check = _call(p, "checking the Batch account name", lambda: arm.batch.location.check_name_availability(
        p.location, {"name": p.batch_account, "type": "Microsoft.Batch/batchAccounts"}))
    if not check.name_available:
        raise SetupError(f"Batch account name {p.batch_account!r} is not available in {p.location}"
                         f" ({_value(check.reason)}: {check.message}). Choose another (batch_account, --batch-account).")
    body = {"location": p.location, "tags": p.tags, "properties": {
        "autoStorage": {"storageAccountId": storage["id"]}, "poolAllocationMode": p.pool_allocation_mode}}
    account = _call(p, f"creating Batch account {p.batch_account}", lambda: accounts.begin_create(
        p.resource_group, p.batch_account, body).result())
    return _base(p, "batch_account", account.id, account.name, True, run_id, **_batch_view(account))


# ----------------------------------------------------------------------------- profile files
def _write_private_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_saje_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"credentials": []}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SetupError(f"{path} is readable by group or others (mode {mode:04o}); fix it with chmod 600 {path}.")
    try:
        document = json.loads(path.read_text())
    except ValueError:
        raise SetupError(f"{path} is not valid JSON; fix or move it before deploying.") from None
    if not isinstance(document, dict) or not isinstance(document.get("credentials"), list):
        raise SetupError(f"{path} has no \"credentials\" list.")
    return document


def _profile_entry(arm: Arm, p: Plan, batch: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    url = batch["account_endpoint"]
    entry: dict[str, Any] = {"name": p.name, "level": "batch", "subscription_id": arm.subscription_id,
                             "batch_account_url": url if "://" in url else f"https://{url}",
                             "batch_account_name": p.batch_account}
    choice = p.profile_credential
    if choice == "auto":
        if p.principal_profile:
            choice = "service-principal"
        elif p.pool_allocation_mode == "BatchService":
            choice = "shared-key"
        else:
            choice = "none"
    if choice == "service-principal":
        from ..credentials import get_profile

        if not p.principal_profile:
            raise SetupError("profile_credential service-principal needs batch_principal.profile.")
        source = get_profile(p.principal_profile, p.credentials_file)
        entry.update({"tenant_id": source.tenant_id, "client_id": source.client_id, "secret": source.secret})
        del entry["batch_account_name"]
    elif choice == "shared-key":
        if p.pool_allocation_mode != "BatchService":
            raise SetupError("UserSubscription Batch accounts accept Entra ID only, not shared keys: use"
                             " profile_credential service-principal or none.")
        keys = _call(p, f"reading the keys of Batch account {p.batch_account}",
                     lambda: arm.batch.batch_account.get_keys(p.resource_group, p.batch_account))
        entry["batch_account_key"] = keys.primary
    else:
        del entry["batch_account_name"]
    return entry, choice


def write_profile(arm: Arm, p: Plan, run_id: str, batch: Mapping[str, Any], storage: Mapping[str, Any],
                  containers: Mapping[str, Any]) -> dict[str, Any]:
    """profiles/<name>/config.yaml and the saje.json entry <name>: the next command is
    `snakemake --executor saje --workflow-profile profiles/<name>`. No secret is printed or put in the
    profile; the saje.json entry (mode 600) holds the batch-level credential."""
    entry, choice = _profile_entry(arm, p, batch)
    wrote_entry = False
    if p.write_saje_json and choice != "none":
        document = _load_saje_json(p.saje_json)
        document["credentials"] = [c for c in document["credentials"] if c.get("name") != p.name] + [entry]
        _write_private_json(p.saje_json, document)
        wrote_entry = True
    lines = [
        f"# Written by the SAJE deploy workflow for deployment {p.name!r} (resource group {p.resource_group},",
        f"# Batch account {p.batch_account}, {p.location}). Use it with:",
        f"#   snakemake --executor saje --workflow-profile {p.profile_path.parent}",
        "# Secrets are not here: the credential is the saje.json entry named below"
        + (f" ({p.saje_json})." if wrote_entry else " (none written: DefaultAzureCredential is used)."),
        "executor: saje",
        "jobs: 100",
        f"saje-account-url: {entry['batch_account_url']}",
    ]
    if wrote_entry:
        lines.append(f"saje-credential-profile: {p.name}")
        if p.saje_json != Path(os.path.expanduser("~/.azure/saje.json")):
            lines.append(f"saje-credentials-file: {p.saje_json}")
    if storage.get("blob_endpoint"):
        lines.append(f"saje-storage-account-url: {storage['blob_endpoint']}")
    if p.containers:
        lines.append(f"saje-storage-container: {p.containers[0]}")
    p.profile_path.parent.mkdir(parents=True, exist_ok=True)
    p.profile_path.write_text("\n".join(lines) + "\n")
    return {"kind": "profile", "id": str(p.profile_path), "name": p.name, "created": True, "run_id": run_id,
            "deployment": p.name, "profile_path": str(p.profile_path), "credential": choice,
            "saje_json": str(p.saje_json) if wrote_entry else None,
            "batch_account_url": entry["batch_account_url"]}


# ----------------------------------------------------------------------------- teardown
def _delete(arm: Arm, p: Plan, record: Mapping[str, Any], log: Callable[[str], None]) -> None:
    kind, rid = record["kind"], record["id"]
    from azure.core.exceptions import AzureError

    # The names come from the marker (what was made), not from today's config.
    rg = rid.split("/")[4] if kind in ("batch_account", "containers", "storage_account") else None

    try:
        if kind == "role_assignment":
            arm.auth.role_assignments.delete_by_id(rid)
        elif kind == "batch_account":
            arm.batch.batch_account.begin_delete(rg, record["name"]).result()
        elif kind == "containers":
            for item in reversed(record.get("containers", [])):
                if item.get("created"):
                    try:
                        arm.storage.blob_containers.delete(rg, record["name"], item["name"])
                    except AzureError as exc:
                        if not is_not_found(exc):
                            raise
        elif kind == "storage_account":
            arm.storage.storage_accounts.delete(rg, record["name"])
        elif kind == "resource_group":
            arm.resource.resource_groups.begin_delete(record["name"]).result()
        elif kind == "profile":
            _remove_profile(p, record)
        log(f"deleted {kind} {record.get('name')}")
    except AzureError as exc:
        if is_not_found(exc):
            log(f"{kind} {record.get('name')} was already gone")
            return
        raise explain(exc, f"deleting {kind} {record.get('name')}",
                      state_hint=f"Markers of what remains are kept in {p.state_dir}/.") from None


def _remove_profile(p: Plan, record: Mapping[str, Any]) -> None:
    path = Path(record.get("profile_path") or p.profile_path)
    path.unlink(missing_ok=True)
    if path.parent.exists() and not any(path.parent.iterdir()):
        path.parent.rmdir()
    if record.get("saje_json"):
        sj = Path(record["saje_json"])
        if sj.exists():
            document = _load_saje_json(sj)
            document["credentials"] = [c for c in document["credentials"] if c.get("name") != p.name]
            _write_private_json(sj, document)


INSIDE_GROUP = ("storage", "containers", "batch_account")


def _undo(arm: Arm, p: Plan, select: Callable[[Mapping[str, Any]], bool], log: Callable[[str], None]) -> list[str]:
    records = markers_in(p.state_dir, STEPS)
    group = records.get("resource_group")
    group_goes = bool(group and group.get("created") and select(group))
    removed = []
    for step in reversed(STEPS):
        record = records.get(step)
        if record is None or not select(record):
            continue
        # What sits in a group SAJE made goes with the group (one delete instead of one per resource);
        # role assignments are deleted on their own, as Azure leaves them orphaned otherwise.
        if record.get("created") and not (group_goes and step in INSIDE_GROUP):
            _delete(arm, p, record, log)
            removed.append(step)
        p.marker(step).unlink(missing_ok=True)
    if group_goes:  # whatever the other markers said was inside the group is gone with it
        for step in STEPS[1:]:
            p.marker(step).unlink(missing_ok=True)
    return removed


def teardown(arm: Arm, p: Plan, log: Callable[[str], None] = print) -> list[str]:
    """Delete what the markers say this deployment created, newest first; keep what existed before."""
    return _undo(arm, p, lambda record: True, log)


def rollback(arm: Arm, p: Plan, run_id: str, log: Callable[[str], None] = print) -> list[str]:
    """After a failed run: delete what that run (``run_id``) created, nothing older."""
    return _undo(arm, p, lambda record: record.get("run_id") == run_id, log)


def summary(p: Plan) -> dict[str, Any]:
    """What the markers say exists (for `saje deploy --json` and the docs)."""
    return {step: read_marker(p.marker(step)) for step in STEPS}
