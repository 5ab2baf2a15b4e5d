"""The reading budgets of issue 10, held as tests (tools/budget.py measures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("budget", ROOT / "tools" / "budget.py")
budget = importlib.util.module_from_spec(_spec)
sys.modules["budget"] = budget  # dataclasses look their module up there
_spec.loader.exec_module(budget)

CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_within_budget(path):
    b = budget.measure(path)
    assert b.words <= budget.WORDS_PER_CHAPTER, f"{path.name}: {b.words} words of main text"
    assert b.code_lines <= budget.CODE_LINES_PER_CHAPTER, f"{path.name}: {b.code_lines} visible code lines"
    assert b.longest_cell <= budget.CODE_LINES_PER_CELL, (
        f"{path.name}: a visible cell of {b.longest_cell} lines"
    )


def test_intro_is_short():
    assert budget.measure(ROOT / "intro.md").words <= 1300  # "about 1,200 words"


def test_install_cell_is_hidden_in_every_chapter():
    import nbformat

    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "%pip install" in first.source and "remove-cell" in first.metadata.get("tags", []), path.name
