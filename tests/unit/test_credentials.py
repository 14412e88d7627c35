"""~/.azure/saje.json profiles and the credentials built from them."""

from __future__ import annotations

import json
import os
import traceback
from types import SimpleNamespace

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from snakemake_executor_saje import credentials
from snakemake_executor_saje.credentials import (
    CredentialProfile,
    CredentialsError,
    get_profile,
    load_profiles,
    resolve_batch_account_url,
    resolve_batch_credential,
    resolve_credential,
    resolve_storage_credential,
)

SECRET = "S3CRET-value-never-shown"
KEY = "S2hhcmVkS2V5LW5ldmVyLXNob3du"

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


def write(tmp_path, document, mode=0o600, raw=None):
    path = tmp_path / "saje.json"
    path.write_text(raw if raw is not None else json.dumps(document))
    path.chmod(mode)
    return path


DOC = {
    "credentials": [
        {
            "name": "admin",
            "subscription_id": "sub",
            "tenant_id": "tenant",
            "client_id": "client",
            "secret": SECRET,
            "level": "admin",
        },
        {
            "name": "batch",
            "subscription_id": "sub",
            "tenant_id": "tenant",
            "client_id": "app",
            "secret": SECRET,
            "level": "batch",
            "batch_account_url": "https://acct.eastus.batch.azure.com/",
        },
        {
            "name": "emulator",
            "batch_account_url": "http://127.0.0.1:10100/acct",
            "batch_account_name": "acct",
            "batch_account_key": KEY,
        },
    ]
}


def assert_no_secret(exc: BaseException):
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    assert SECRET not in text and KEY not in text


def test_loads_the_seed_format(tmp_path):
    profiles = load_profiles(write(tmp_path, DOC))
    assert set(profiles) == {"admin", "batch", "emulator"}
    assert profiles["batch"].client_id == "app"
    assert profiles["batch"].level == "batch"
    assert profiles["emulator"].has_shared_key
    assert profiles["admin"].has_service_principal


def test_seed_example_without_level_is_accepted(tmp_path):
    doc = {"credentials": [{"name": "default", "subscription_id": "s", "tenant_id": "t",
                            "client_id": "c", "secret": SECRET}]}
    assert load_profiles(write(tmp_path, doc))["default"].level is None


def test_repr_never_shows_secrets(tmp_path):
    profiles = load_profiles(write(tmp_path, DOC))
    for profile in profiles.values():
        assert SECRET not in repr(profile) and KEY not in repr(profile)
        assert SECRET not in str(profile) and KEY not in str(profile)
    assert SECRET not in repr(profiles)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_group_or_world_readable_file_is_refused(tmp_path, mode):
    path = write(tmp_path, DOC, mode=mode)
    with pytest.raises(CredentialsError) as info:
        load_profiles(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message
    assert_no_secret(info.value)


def test_permission_checked_before_parsing(tmp_path):
    path = write(tmp_path, None, mode=0o644, raw="{not json " + SECRET)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_profiles(path)


def test_malformed_json_reports_line_and_column_without_secret(tmp_path):
    raw = '{\n  "credentials": [\n    {"name": "x", "secret": "' + SECRET + '",}\n  ]\n}\n'
    path = write(tmp_path, None, raw=raw)
    with pytest.raises(CredentialsError) as info:
        load_profiles(path)
    message = str(info.value)
    assert "not valid JSON" in message and "line 3" in message and "column" in message
    assert '"credentials"' in message  # says what is expected
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert_no_secret(info.value)


@pytest.mark.parametrize(
    "document, fragment",
    [
        ([], '"credentials" list'),
        ({"creds": []}, '"credentials" list'),
        ({"credentials": ["x"]}, "must be an object"),
        ({"credentials": [{"secret": SECRET}]}, '"name"'),
        ({"credentials": [{"name": "a", "tenant_id": "t", "secret": SECRET}]}, "client_id"),
        ({"credentials": [{"name": "a", "tenant_id": 5}]}, "tenant_id"),
        ({"credentials": [{"name": "a", "level": "root"}]}, "level"),
        ({"credentials": [{"name": "a", "batch_account_key": KEY}]}, "batch_account_name"),
        ({"credentials": [{"name": "a"}, {"name": "a"}]}, "twice"),
    ],
)
def test_malformed_structure(tmp_path, document, fragment):
    with pytest.raises(CredentialsError, match=fragment) as info:
        load_profiles(write(tmp_path, document))
    assert_no_secret(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CredentialsError, match="not found"):
        load_profiles(tmp_path / "nope.json")


def test_missing_profile_lists_available(tmp_path):
    path = write(tmp_path, DOC)
    with pytest.raises(CredentialsError) as info:
        get_profile("prod", path)
    assert "admin, batch, emulator" in str(info.value)
    assert_no_secret(info.value)


def test_shared_key_from_settings():
    cred = resolve_batch_credential(SimpleNamespace(account_name="acct", account_key=KEY))
    assert isinstance(cred, AzureNamedKeyCredential)
    assert cred.named_key.name == "acct"
    assert KEY not in repr(cred)


@pytest.mark.parametrize("bad", [KEY[:-1], KEY[:-2], "not base64 at all!"], ids=["cut", "cut-twice", "junk"])
def test_badly_copied_key_is_a_clear_error_without_the_key(bad):
    with pytest.raises(CredentialsError) as info:
        resolve_batch_credential(SimpleNamespace(account_name="acct", account_key=bad))
    assert "not valid base64" in str(info.value) and "SNAKEMAKE_SAJE_ACCOUNT_KEY" in str(info.value)
    assert bad not in str(info.value)


@pytest.mark.parametrize("url, complaint", [
    ("myaccount.eastus.batch.azure.com", "https://myaccount.eastus.batch.azure.com"),
    ("ftp://host", "not an http(s)://host URL"),
    ("https://", "no scheme"),
])
def test_account_url_without_scheme_says_what_to_write(url, complaint):
    with pytest.raises(CredentialsError) as info:
        resolve_batch_account_url(SimpleNamespace(account_url=url))
    assert complaint in str(info.value) and "--saje-account-url" in str(info.value)


def test_key_without_name_is_an_error():
    with pytest.raises(CredentialsError) as info:
        resolve_batch_credential(SimpleNamespace(account_key=KEY))
    assert_no_secret(info.value)


def test_shared_key_from_profile(tmp_path):
    settings = SimpleNamespace(credential_profile="emulator", credentials_file=write(tmp_path, DOC))
    cred = resolve_batch_credential(settings)
    assert isinstance(cred, AzureNamedKeyCredential)
    assert resolve_batch_account_url(settings) == "http://127.0.0.1:10100/acct"


def test_service_principal_from_profile(tmp_path):
    from azure.identity import ClientSecretCredential

    settings = SimpleNamespace(credential_profile="batch", credentials_file=write(tmp_path, DOC))
    cred = resolve_batch_credential(settings)
    assert isinstance(cred, ClientSecretCredential)
    assert SECRET not in repr(cred)
    assert resolve_batch_account_url(settings) == "https://acct.eastus.batch.azure.com"


def test_no_profile_means_default_azure_credential():
    from azure.identity import DefaultAzureCredential

    assert isinstance(resolve_batch_credential(SimpleNamespace()), DefaultAzureCredential)
    assert isinstance(resolve_credential(None), DefaultAzureCredential)


def test_staging_uses_the_profile_service_principal_else_default(tmp_path):
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    path = write(tmp_path, DOC)
    batch = SimpleNamespace(credential_profile="batch", credentials_file=path)
    assert isinstance(resolve_storage_credential(batch), ClientSecretCredential)
    shared_key_only = SimpleNamespace(credential_profile="emulator", credentials_file=path)
    assert isinstance(resolve_storage_credential(shared_key_only), DefaultAzureCredential)
    assert isinstance(resolve_storage_credential(SimpleNamespace()), DefaultAzureCredential)


def test_account_url_setting_wins_and_missing_url_is_explained():
    assert resolve_batch_account_url(SimpleNamespace(account_url="http://x/acct/")) == "http://x/acct"
    with pytest.raises(CredentialsError, match="--saje-account-url"):
        resolve_batch_account_url(SimpleNamespace())


def test_batch_level_profile_refused_for_admin_work(tmp_path):
    profiles = load_profiles(write(tmp_path, DOC))
    with pytest.raises(CredentialsError, match="level 'batch'") as info:
        resolve_credential(profiles["batch"], purpose="admin")
    assert_no_secret(info.value)
    assert resolve_credential(profiles["admin"], purpose="admin") is not None


def test_profile_with_nothing_usable(tmp_path):
    doc = {"credentials": [{"name": "empty", "subscription_id": "s"}]}
    settings = SimpleNamespace(credential_profile="empty", credentials_file=write(tmp_path, doc))
    with pytest.raises(CredentialsError, match="neither"):
        resolve_batch_credential(settings)


def test_world_readable_file_stops_credential_resolution(tmp_path):
    settings = SimpleNamespace(
        credential_profile="batch", credentials_file=write(tmp_path, DOC, mode=0o644)
    )
    with pytest.raises(CredentialsError, match="chmod 600"):
        resolve_batch_credential(settings)


def test_profile_dataclass_repr_fields():
    p = CredentialProfile(name="n", secret=SECRET, batch_account_key=KEY)
    assert "name='n'" in repr(p)
    assert credentials.DEFAULT_CREDENTIALS_FILE.name == "saje.json"
