"""The `.saje/` folder: SAJE's local state (the emulator's data, the setup workflows' markers).

It ignores itself: whenever SAJE makes a directory in or under a folder named `.saje`, that
folder gets a `.gitignore` holding `*` (as pytest does for `.pytest_cache`). So `git add -A` in a
workflow's repository never takes it, and Snakemake's source archive, which ships the Snakefile,
scripts, config files and every file `git ls-files` lists to the nodes, never carries it.
"""
from __future__ import annotations

from pathlib import Path

NAME = ".saje"
IGNORE_ALL = "# Made by SAJE: its local state (emulator data, setup markers) is never versioned.\n*\n"

__all__ = ["NAME", "ensure"]


def ensure(directory: Path | str) -> Path:
    """Create `directory` (and its parents); each `.saje` folder on its path ignores itself."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = directory.parts
    for i, part in enumerate(parts):
        if part == NAME:
            ignore = Path(*parts[: i + 1]) / ".gitignore"
            if not ignore.exists():
                ignore.write_text(IGNORE_ALL)
    return directory
