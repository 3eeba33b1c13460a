"""The documentation site: every public name is in the API reference, links resolve,
and `mkdocs build --strict` passes where mkdocs is installed.

The coverage and link checks only read files, so they run in any environment
(`python3 dev.py test` runs them once, in the TF 2.21 suite: ``tf_independent``).
The build needs the `docs` extra (mkdocs, mkdocstrings[python], mkdocs-material);
in the TensorFlow environments it usually is not installed and that test skips.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_ENTRY = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
pytestmark = pytest.mark.tf_independent


def _public_names() -> list[str]:
    """`kerasfed.__all__`, read from the source (importing kerasfed is not needed)."""
    tree = ast.parse((ROOT / "kerasfed" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ["__version__", *ast.literal_eval(node.value)]
    raise AssertionError("kerasfed/__init__.py has no `_EXPORTS = {...}` dict")


def _api_entries() -> list[str]:
    return [m for page in sorted((DOCS / "api").glob("*.md")) for m in API_ENTRY.findall(page.read_text())]


def _defining_file(path: str) -> Path | None:
    """The source file of the longest module prefix of a dotted path, or None."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:end])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def test_public_names_match_the_imported_package():
    kerasfed = pytest.importorskip("kerasfed")
    assert sorted(_public_names()) == sorted(kerasfed.__all__)


def test_every_public_name_has_an_api_entry():
    documented = {entry.rsplit(".", 1)[-1] for entry in _api_entries()}
    missing = [name for name in _public_names() if name not in documented]
    assert not missing, (
        f"Expected every name in kerasfed.__all__ to have a `::: module.Name` entry in docs/api/*.md. "
        f"Missing: {missing}. Add `::: <defining module>.<Name>` (the module in kerasfed/__init__.py's "
        f"_EXPORTS) to the fitting page under docs/api/."
    )


def test_every_api_entry_points_at_a_kerasfed_source_file():
    entries = _api_entries()
    assert entries
    bad = [e for e in entries if not e.startswith("kerasfed.") or _defining_file(e) is None]
    assert not bad, f"API entries whose module is not a file under kerasfed/: {bad}"


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))])
def test_relative_links_point_at_existing_files(page):
    path = ROOT / page
    broken = []
    for target in MARKDOWN_LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{page} links to files that do not exist: {broken}"


def _heading_anchors(page: Path) -> set[str]:
    """The anchors MkDocs (Python-Markdown's toc) and GitHub give a page's headings."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            text = re.sub(r"[^\w\s-]", "", line.lstrip("#").strip()).strip().lower()
            anchors.add(re.sub(r"[\s-]+", "-", text))
    return anchors


def test_readme_anchors_into_the_docs_exist():
    # mkdocs checks the anchors between docs pages; the README is not one of them.
    missing = []
    for target in MARKDOWN_LINK.findall((ROOT / "README.md").read_text()):
        path, _, anchor = target.partition("#")
        if anchor and path.startswith("docs/") and anchor not in _heading_anchors(ROOT / path):
            missing.append(target)
    assert not missing, f"README.md links to headings that do not exist: {missing}"


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")]
    assert [p for p in pages if p not in nav] == []


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs and mkdocstrings[python] are not installed here (the `docs` extra)",
)
def test_mkdocs_build_strict_passes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "site" / "api" / "federated" / "index.html").is_file()
