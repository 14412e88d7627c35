"""What the Snakemake plugin catalog reads of this plugin, checked the way the catalog uses it.

The catalog (snakemake/snakemake-plugin-catalog, source/collect_plugins.py) takes the PyPI
metadata's `project_urls["Repository"]`, fetches `docs/intro.md` and `docs/further.md` from that
GitHub repository's main branch, converts them to reStructuredText with m2r2 and renders them in
its own site under the plugin's page. So: both files exist, they render without reStructuredText
errors, every link in them is absolute (a relative one would point into the catalog's site) and
every link into this repository names a file (and heading) that exists here.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["project"]["urls"]["Repository"]
CATALOG_FILES = ("intro.md", "further.md")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def check_link(target: Path | str) -> str | None:
    """None when `target` (a path in the repository, maybe with #anchor) exists, else why not."""
    path, _, anchor = str(target).partition("#")
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    if anchor and (path.is_dir() or anchor not in anchors(path)):
        return f"{path} has no heading #{anchor}"
    return None


def repository_path(url: str) -> str | None:
    """For a link into this repository (blob/tree on main), its path in the repository."""
    for kind in ("blob", "tree"):
        prefix = f"{REPOSITORY}/{kind}/main/"
        if url.startswith(prefix):
            return url[len(prefix):]
    return None


def test_project_urls_are_what_the_catalog_needs():
    urls = PYPROJECT["project"]["urls"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", urls["Repository"])
    assert re.fullmatch(r"https://[\w.-]+(/[\w.%/-]*)?(\.html)?", urls["Documentation"])


def test_azure_is_searchable():
    project = PYPROJECT["project"]
    assert "Azure" in project["description"]
    assert "azure" in project["keywords"] and "snakemake" in project["keywords"]


@pytest.mark.parametrize("name", CATALOG_FILES)
def test_catalog_docs_exist(name):
    text = (REPO / "docs" / name).read_text()
    assert len(text.split()) > 80, f"docs/{name} says too little for the catalog"
    if name == "intro.md":  # "some introductory sentences": one paragraph, no headings
        assert "\n\n" not in text.strip() and not text.lstrip().startswith("#")


@pytest.mark.parametrize("name", CATALOG_FILES)
def test_catalog_links_are_absolute_and_resolve(name):
    text = (REPO / "docs" / name).read_text()
    links = LINK.findall(text)
    assert links
    for url in links:
        assert re.match(r"https://", url), f"{url}: the catalog renders docs/{name} on its own site"
        path = repository_path(url)
        if url.startswith(REPOSITORY + "/") and not url.startswith(REPOSITORY + "/issues"):
            assert path is not None, f"{url}: link to main's blob/ or tree/"
        if path is not None:
            assert check_link(REPO / path) is None, (url, check_link(REPO / path))


def test_every_relative_link_in_the_docs_resolves():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for url in LINK.findall(page.read_text()):
            if re.match(r"\w+:", url):
                continue
            target = page.parent / url if not url.startswith("#") else Path(f"{page}{url}")
            assert check_link(target) is None, (page.name, url, check_link(target))


def test_catalog_rendering_has_no_restructuredtext_errors():
    """m2r2 (the catalog's converter) then docutils, as the catalog's page template nests them."""
    import docutils.core
    import docutils.utils
    import m2r2

    intro = m2r2.convert((REPO / "docs/intro.md").read_text())
    further = m2r2.convert((REPO / "docs/further.md").read_text())
    page = ("Snakemake executor plugin: saje\n" + "#" * 40 + "\n\n" + intro
            + "\n\nFurther details\n" + "*" * 15 + "\n\n" + further)
    docutils.core.publish_doctree(page, settings_overrides={
        "report_level": docutils.utils.Reporter.WARNING_LEVEL, "halt_level": docutils.utils.Reporter.WARNING_LEVEL})


def test_package_metadata_builds_without_deprecation_warnings(tmp_path):
    """What pip prints on install: the build backend's warnings. An SPDX license string and
    license-files leave setuptools nothing to warn about."""
    code = ("import warnings; warnings.simplefilter('error'); "
            "from setuptools import build_meta; import sys; print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, str(tmp_path)], cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Deprecat" not in out.stdout + out.stderr
    metadata = next(tmp_path.glob("*.dist-info/METADATA")).read_text()
    assert "License-Expression: MIT" in metadata
    assert f"Project-URL: Repository, {REPOSITORY}" in metadata
    assert re.search(r"^Keywords:.*azure", metadata, flags=re.M)
