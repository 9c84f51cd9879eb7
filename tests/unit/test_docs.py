"""The documents: every relative link resolves, the README stays a front page.

Links are checked as GitHub renders them: a path relative to the document, and
an anchor that is the slug of one of the target's headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nomad_pginit.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTS = sorted(
    [
        README,
        ROOT / "CONTRIBUTING.md",
        ROOT / "templates" / "README.md",
        ROOT / "jobs" / "services" / "databases" / "postgresql" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)

_LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6} (.*)", line)
        if match:
            name = slug(match.group(1))
            suffix, candidate = 0, name
            while candidate in found:  # GitHub numbers repeated headings
                suffix += 1
                candidate = f"{name}-{suffix}"
            found.add(candidate)
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in _prose(path.read_text(encoding="utf-8")):
        targets.extend(_LINK.findall(_INLINE_CODE.sub("", line)))
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def test_slug_follows_github() -> None:
    assert slug("Choosing a mode: oneshot or live") == "choosing-a-mode-oneshot-or-live"
    assert (
        slug("Adding a service: `nomad-pginit add-service NAME`")
        == "adding-a-service-nomad-pginit-add-service-name"
    )
    assert slug("Every supported major: `make test-matrix`") == (
        "every-supported-major-make-test-matrix"
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(document: Path) -> None:
    assert document.is_file()
    broken = []
    for target in links(document):
        path_part, _, anchor = target.partition("#")
        resolved = (document.parent / path_part).resolve() if path_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.is_dir() or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(README)}
    unlinked = [path.name for path in (ROOT / "docs").glob("*.md") if path not in linked]
    assert not unlinked


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first_screen = "\n".join(text.splitlines()[:12])
    assert "make demo" in first_screen
    assert "make test" in first_screen


def test_the_readme_lists_every_exit_code() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    table = lines[lines.index("### Exit codes") :]
    rows = {line.split("|")[1].strip() for line in table if line.startswith("| ")}
    codes = {code.strip() for row in rows for code in row.split(",")}
    assert {str(int(code)) for code in ExitCode} <= codes
