"""Container images the tests build on this machine: no registry is reachable, so an image is a root
file system made of this machine's own programs (and, for the Snakemake image, its own Python and
Snakemake), imported into podman's local storage under a tag derived from what went into it.

Each image holds a marker file only the image has (``MARKER``), so a test can prove that a task ran
inside it. Images stay in podman's storage between sessions (an unchanged image is not rebuilt);
building one takes seconds (the small one) to about a minute (the Snakemake one).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pytest

MARKER = "/opt/saje-image/marker"
LOCK = Path(tempfile.gettempdir()) / "saje-test-images.lock"
PROGRAMS = ("bash", "sh", "cat", "ls", "echo", "mkdir", "cp", "mv", "rm", "touch", "head", "tail", "wc", "sort",
            "env", "sleep", "true", "false", "printf", "dirname", "basename", "readlink", "ln", "chmod", "id",
            "date", "uname", "grep", "sed", "tr", "cut", "tee", "tar", "xz", "gzip", "stat", "pwd")
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "__pycache__", "lib2to3"}


def podman() -> str:
    """podman's path; a test that needs it and finds none fails, naming the fix."""
    found = shutil.which("podman")
    if found is None:
        pytest.fail("podman is not installed: run `bash scripts/setup.sh` as root (it apt-installs podman and runc)")
    return found


def image_exists(tag: str) -> bool:
    return subprocess.run([podman(), "image", "exists", tag]).returncode == 0


def marker_text(tag: str) -> str:
    return f"inside image {tag}\n"


def _ldd(paths: list[Path]) -> set[Path]:
    """The shared libraries (and loader) ELF files need, by the paths the loader resolves."""
    found: set[Path] = set()
    for chunk in range(0, len(paths), 200):
        batch = [str(p) for p in paths[chunk:chunk + 200]]
        out = subprocess.run(["ldd", *batch], text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        found.update(Path(m) for m in re.findall(r"(/\S+)\s+\(0x", out))
    return found


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _copy(source: Path, root: Path, at: Path | None = None) -> Path:
    target = root / (at or source).relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(source, target, follow_symlinks=True)
    return target


def _programs(root: Path) -> list[Path]:
    copied = []
    for name in PROGRAMS:
        found = shutil.which(name, path="/usr/bin:/bin")
        if found is None:
            continue
        real = Path(found).resolve()
        for at in {Path("/usr/bin") / name, Path("/bin") / name}:
            copied.append(_copy(real, root, at))
    return copied


def _python(root: Path) -> list[Path]:
    """This interpreter, its standard library, and Snakemake with what it requires, at the same paths;
    `python` and `python3` on PATH."""
    interpreter = Path(sys.executable).resolve()
    copied = [_copy(interpreter, root)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib.rglob("*"):
        parts = set(path.relative_to(stdlib).parts)
        if path.is_file() and not parts & STDLIB_SKIP:
            copied.append(_copy(path, root))
    purelib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"])
    for dist in _closure("snakemake"):
        site = Path(dist.locate_file("")).resolve()
        for file in dist.files or []:
            source = Path(dist.locate_file(file)).resolve()
            # the packages' own files; their console scripts (outside site-packages) are not needed
            if source.is_file() and source.is_relative_to(site) and "__pycache__" not in source.parts:
                copied.append(_copy(source, root, purelib / source.relative_to(site)))
    for name in ("python", "python3"):
        link = root / "usr/bin" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(interpreter)
    # Byte-compiled as an image ships them: without, every task's Python compiles Snakemake anew
    # (40 s of a loaded 2-core machine). The .pyc files check the sources' copied mtimes.
    for tree in (stdlib, purelib):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-d", str(tree),
                        str(root / tree.relative_to("/"))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return copied


def _closure(name: str) -> list[importlib.metadata.Distribution]:
    """A distribution and everything it requires (markers evaluated here, extras left out)."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _rootfs(root: Path, tag: str, with_python: bool) -> None:
    elves = [p for p in [*_programs(root), *(_python(root) if with_python else [])] if _is_elf(p)]
    for lib in _ldd(elves):
        _copy(lib.resolve(), root, lib)
    for directory, mode in (("tmp", 0o1777), ("root", 0o700), ("etc", 0o755)):
        (root / directory).mkdir(exist_ok=True)
        (root / directory).chmod(mode)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    marker = root / MARKER.lstrip("/")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(marker_text(tag))


def _tag(name: str, with_python: bool) -> str:
    key = hashlib.sha256()
    key.update(Path(__file__).read_bytes())
    if with_python:
        key.update(f"{sys.version}|{importlib.metadata.version('snakemake')}|{sys.executable}".encode())
    return f"localhost/saje-tests/{name}:{key.hexdigest()[:12]}"


def ensure_image(name: str, *, with_python: bool = False) -> str:
    """The tag of a test image built from this machine (built now unless podman has it already)."""
    tag = _tag(name, with_python)
    with open(LOCK, "w") as lock:  # parallel test sessions build an image once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="saje-image-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            _rootfs(root, tag, with_python)
            archive = Path(tmp) / "rootfs.tar"
            with tarfile.open(archive, "w") as tar:
                for entry in sorted(root.iterdir()):
                    tar.add(entry, arcname=entry.name)
            done = subprocess.run([podman(), "import", str(archive), tag], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                pytest.fail(f"podman import of test image {tag} failed:\n{done.stdout}")
        _remove_stale(tag)
    return tag


def _remove_stale(tag: str) -> None:
    """Earlier builds of the same image (other tags under its name): one copy of each image is kept."""
    name = tag.rsplit(":", 1)[0]
    listed = subprocess.run([podman(), "images", "--format", "{{.Repository}}:{{.Tag}}", name], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.split()
    for old in (t for t in listed if t != tag):
        subprocess.run([podman(), "rmi", "--force", old], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def small_image() -> str:
    """bash and coreutils from this machine, and the marker."""
    return ensure_image("small")


def snakemake_image() -> str:
    """This machine's Python and Snakemake (with what Snakemake requires), bash, tar, xz, and the marker."""
    return ensure_image("snakemake", with_python=True)


