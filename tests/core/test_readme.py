"""The documentation works as written: README.md and docs/*.md.

- Every ```python block runs as a user would run it: saved to a file in an empty directory
  and run with this interpreter (this checkout first on the path), under a timeout. A block
  that cannot run on its own (a fragment, or one that needs a server or an MCP client) is
  marked explicitly: ```python no-run, or ``<!-- no-run -->`` on the line before the fence.
  At least ``MIN_RUNNABLE`` blocks must run, so marking cannot silently skip everything.
- The README's blocks also work pasted into an interactive ``python3``, line by line.
- Every relative link points to a file that exists, and an ``#anchor`` to a heading in it.
- The README starts with the two commands a newcomer copies, and stays one page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from support import REPO, clean_environ

ROOT = REPO
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
NO_RUN = "no-run"
#: Fewer runnable blocks than this means someone marked too much as no-run.
MIN_RUNNABLE = 16
TIMEOUT = 120
DEMO_COMMAND = "python3 -m pip install -e '.[all]' && metricsfacade demo --duration 60"
TEST_COMMAND = "./scripts/install-test-deps && python3 -m pytest"


@attrs.frozen
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: str  # the fence's info string: "python", "python no-run", "toml"...
    code: str
    marked_no_run: bool

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def runnable(self) -> bool:
        return self.language == "python" and not self.marked_no_run

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<info>.*)$")


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip()
        previous = next((text.strip() for text in reversed(lines[:index]) if text.strip()), "")
        start = index + 1
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            text = lines[index]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            index += 1
        assert index < len(lines), f"{page.name}: a fence opened and never closed"
        found.append(
            Block(
                page=page,
                line=start,
                info=info,
                code="\n".join(body) + "\n",
                marked_no_run=NO_RUN in info.split() or previous == f"<!-- {NO_RUN} -->",
            )
        )
        index += 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
RUNNABLE = [block for block in ALL_BLOCKS if block.runnable]


def _environment() -> dict[str, str]:
    """This checkout first on the path; no METRICSFACADE_* settings from the caller's shell."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return clean_environ(PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")


def _report(block: Block, result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{block.name} failed (exit {result.returncode}):\n{block.code}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_enough_blocks_run() -> None:
    assert len(RUNNABLE) >= MIN_RUNNABLE, [block.name for block in RUNNABLE]


def test_no_run_marks_only_python_blocks() -> None:
    """A no-run mark on another language is a mistake: only Python blocks are run."""
    misplaced = [b.name for b in ALL_BLOCKS if b.marked_no_run and b.language != "python"]
    assert not misplaced


def _python(
    args: list[str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python3 args`` as a user runs it, in ``cwd``, without this shell's METRICSFACADE_*."""
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.name)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    result = _python([str(script)], tmp_path)
    assert result.returncode == 0, _report(block, result)


@pytest.mark.parametrize(
    "block", [b for b in RUNNABLE if b.page == README], ids=lambda block: block.name
)
def test_readme_block_pastes_into_the_interpreter(block: Block, tmp_path: Path) -> None:
    """Pasted into ``python3``: compound statements must end with a blank line there."""
    result = _python(["-i", "-q"], tmp_path, stdin=block.code + "\n")
    assert result.returncode == 0, _report(block, result)
    assert "Traceback" not in result.stderr, _report(block, result)
    assert "Error" not in result.stderr, _report(block, result)


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    without_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return LINK.findall(without_code)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.name}: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in _links(README)}
    orphans = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not orphans


def test_readme_starts_with_the_two_commands() -> None:
    blocks = blocks_of(README)
    assert [block.code.strip() for block in blocks[:2]] == [DEMO_COMMAND, TEST_COMMAND]
    assert all(block.language == "bash" for block in blocks[:2])
    first_python = next(block for block in blocks if block.language == "python")
    assert len(first_python.code.strip().splitlines()) <= 15, "the quick start is short"


def test_readme_is_one_page() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 200


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_project_history_words(page: Path) -> None:
    """The docs say what the code does, not which task asked for it."""
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bthe brief\b|\bStep \d|\bthe issue\b", text, re.IGNORECASE)
