"""File patterns, upload conditions and failure shapes of the emulated node agent (no storage needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from snakemake_executor_saje.emulator import azurite, blobio


@pytest.fixture
def task(tmp_path: Path) -> tuple[Path, Path]:
    """A task directory laid out like a node's: stdout/stderr beside wd/."""
    task_dir = tmp_path / "task"
    wd = task_dir / "wd"
    files = {
        "a.txt": "a", "b.txt": "b", "ab.txt": "ab", "c.csv": "c", ".hidden.txt": "h",
        "sub/d.txt": "d", "sub/deep/e.txt": "e", "sub/.dot/f.txt": "f", "abc*": "star",
        "br[1].txt": "br", "qm?x.txt": "qm", "cost$HOME.txt": "cost", "ou[t]/z.txt": "z",
    }
    for rel, text in files.items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text(text)
    (task_dir / "stdout.txt").write_text("out")
    (task_dir / "stderr.txt").write_text("err")
    return wd, task_dir


def names(pattern: str, task: tuple[Path, Path]) -> list[str]:
    wd, task_dir = task
    return [rel for _, rel in blobio.match_files(pattern, wd, task_dir)]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.txt", ["a.txt", "ab.txt", "b.txt", "br[1].txt", "cost$HOME.txt", "qm?x.txt"]),  # no dot files
        ("?.txt", ["a.txt", "b.txt"]),
        ("br[1].txt", []),  # unescaped, '[1]' is a class: it matches br1.txt, not br[1].txt
        ("[ab].txt", ["a.txt", "b.txt"]),
        ("[a-b]b.txt", ["ab.txt"]),
        ("[!a].txt", ["b.txt"]),
        (".*.txt", [".hidden.txt"]),  # a spelled-out dot matches
        ("**/*.txt", ["a.txt", "ab.txt", "b.txt", "br[1].txt", "cost$HOME.txt", "ou[t]/z.txt", "qm?x.txt",
                      "sub/d.txt", "sub/deep/e.txt"]),  # no hidden dirs
        ("sub/**/*.txt", ["d.txt", "deep/e.txt"]),  # relative to the fixed part
        ("sub/**", ["d.txt", "deep/e.txt"]),
        ("sub/*/e.txt", ["deep/e.txt"]),
        ("abc[*]", ["abc*"]),  # brackets escape a wildcard
        ("br[[]1].txt", ["br[1].txt"]),  # '[' escaped; the ']' after it is a plain character
        ("qm[?]x.txt", ["qm?x.txt"]),
        ("cost[$]HOME.txt", ["cost$HOME.txt"]),  # '[$]' is no variable to expand
        ("ou[[]t]/z.txt", ["ou[t]/z.txt"]),  # relative to the fixed part: none before the escape
        ("../std*.txt", ["stderr.txt", "stdout.txt"]),  # '..' is the task directory
        ("nothing/*.txt", []),
    ],
)
def test_wildcards(pattern: str, expected: list[str], task: tuple[Path, Path]) -> None:
    assert names(pattern, task) == expected


def test_plain_names_and_absolute_paths(task: tuple[Path, Path]) -> None:
    wd, task_dir = task
    assert blobio.match_files("sub/d.txt", wd, task_dir) == [(wd / "sub/d.txt", "d.txt")]
    assert blobio.match_files("../stdout.txt", wd, task_dir) == [(task_dir / "stdout.txt", "stdout.txt")]
    assert blobio.match_files(str(wd / "sub" / "*.txt"), wd, task_dir) == [(wd / "sub/d.txt", "d.txt")]
    assert blobio.match_files("missing.txt", wd, task_dir) == []
    assert blobio.match_files("sub", wd, task_dir) == []  # a directory is not a file


def test_env_vars_expand_before_matching(task: tuple[Path, Path]) -> None:
    wd, task_dir = task
    env = {"AZ_BATCH_TASK_WORKING_DIR": str(wd), "EXT": "csv"}
    assert blobio.expand_env("$AZ_BATCH_TASK_WORKING_DIR/*.${EXT}", env) == f"{wd}/*.csv"
    assert blobio.expand_env("$UNKNOWN/x", env) == "$UNKNOWN/x"


@pytest.mark.parametrize(
    ("condition", "exit_code", "failed", "expected"),
    [
        ("taskSuccess", 0, False, True),
        ("taskSuccess", 1, False, False),
        ("taskSuccess", None, True, False),
        ("taskFailure", 0, False, False),
        ("taskFailure", 2, False, True),
        ("taskfailure", None, True, True),  # the 2024+ API spells enums in lower case
        ("taskCompletion", 0, False, True),
        ("TASKCOMPLETION", 3, False, True),
    ],
)
def test_upload_conditions(condition: str, exit_code: int | None, failed: bool, expected: bool) -> None:
    assert blobio.condition_holds(condition, exit_code=exit_code, failed=failed) is expected


def test_unknown_condition_is_rejected() -> None:
    with pytest.raises(ValueError):
        blobio.condition_holds("whenever", exit_code=0, failed=False)


def test_failure_info_has_the_rest_shape() -> None:
    err = blobio.ResourceFileError("BlobNotFound", details={"FilePath": "x"})
    assert err.failure_info() == {
        "category": "usererror",
        "code": "BlobNotFound",
        "message": "One of the specified Azure Blob(s) is not found.",
        "details": [{"name": "FilePath", "value": "x"}],
    }
    assert blobio.ResourceFileError("BlobDownloadMiscError").category == "servererror"
    assert blobio.OutputFileError("FileUploadAccessDenied").category == "usererror"


def test_redact_drops_the_sas() -> None:
    url = "https://acct.blob.core.windows.net/c/b.txt?sv=2024&sig=SECRET"
    assert blobio.redact(url) == "https://acct.blob.core.windows.net/c/b.txt"


def test_resource_paths_stay_in_the_working_dir(tmp_path: Path) -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(blobio.ResourceFileError) as info:
            blobio.download_resource_files([{"httpUrl": "http://127.0.0.1:9/x", "filePath": bad}], tmp_path)
        assert info.value.code == "ResourceFileCreateFailed"


def test_http_url_needs_a_file_path(tmp_path: Path) -> None:
    with pytest.raises(blobio.ResourceFileError):
        blobio.download_resource_files([{"httpUrl": "http://127.0.0.1:9/x"}], tmp_path)


def test_auto_storage_repr_hides_secrets() -> None:
    store = blobio.AutoStorage(connection_string="AccountKey=SECRET", credential="SECRET2")
    assert "SECRET" not in repr(store)


def test_find_azurite_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "package.json").write_text("{}")
    monkeypatch.setattr(azurite, "_repo_roots", lambda: [tmp_path])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(azurite.AzuriteError, match="npm install") as info:
        azurite.find_azurite()
    assert str(tmp_path) in str(info.value)


def test_find_azurite_prefers_the_repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "node_modules" / ".bin" / "azurite-blob"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setattr(azurite, "_repo_roots", lambda: [tmp_path / "pkg", tmp_path])
    assert azurite.find_azurite() == [str(binary)]


def test_argv_flags_and_no_key() -> None:
    store = azurite.Azurite(command=["azurite-blob"])
    argv = store.argv()
    for flag in ("--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent", "--inMemoryPersistence"):
        assert flag in argv
    assert argv[argv.index("--blobPort") + 1] == "0"
    assert azurite.ACCOUNT_KEY not in " ".join(argv) + repr(store)
    on_disk = azurite.Azurite("/tmp/x", command=["azurite-blob"]).argv()
    assert "--inMemoryPersistence" not in on_disk and on_disk[on_disk.index("--location") + 1] == "/tmp/x"
