"""Reading budgets of the book's pages: words of main text and visible code lines.

Main text is every markdown word outside a collapsed block (a ``{dropdown}``
directive, or any directive with ``:class: dropdown``) and outside code
fences. Visible code lines are the non-blank lines of code cells that the
rendered book shows (no ``remove-input``, ``remove-cell``, ``hide-input`` or
``hide-cell`` tag).

    python tools/budget.py chapters/*.ipynb intro.md

prints one line a page; ``tests/test_budgets.py`` holds the limits.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

HIDDEN_TAGS = {"remove-input", "remove-cell", "hide-input", "hide-cell"}
WORDS_PER_CHAPTER = 2500
CODE_LINES_PER_CHAPTER = 100
CODE_LINES_PER_CELL = 25
_FENCE = re.compile(r"^(\s*)(`{3,}|:{3,})\s*(\{[\w:-]+\})?(.*)$")


@dataclass(frozen=True)
class Budget:
    path: str
    words: int
    code_lines: int
    longest_cell: int


def main_text_words(markdown: str) -> int:
    """Words outside collapsed blocks and outside code/directive fences' code."""
    words = 0
    stack: list[tuple[str, bool]] = []  # (fence, collapsed)
    pending_dropdown_check: list[int] = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if m:
            fence, directive = m.group(2), m.group(3)
            if stack and fence == stack[-1][0] and not directive and not m.group(4).strip():
                stack.pop()
                continue
            collapsed = directive == "{dropdown}"
            if directive and not collapsed:  # look ahead for ":class: dropdown" options
                for opt in lines[i + 1 : i + 8]:
                    if not opt.strip().startswith(":"):
                        break
                    if re.match(r"\s*:class:.*\bdropdown\b", opt):
                        collapsed = True
            is_code = directive is None or directive in ("{code-cell}", "{code-block}", "{code}")
            stack.append((fence, collapsed or is_code))
            continue
        if any(hidden for _, hidden in stack):
            continue
        if line.strip().startswith(":") and stack:  # directive option
            continue
        words += len(re.findall(r"[A-Za-z0-9][\w'’-]*", line))
    del pending_dropdown_check
    return words


def measure(path: Path) -> Budget:
    if path.suffix == ".md":
        return Budget(str(path), main_text_words(path.read_text(encoding="utf-8")), 0, 0)
    import nbformat

    nb = nbformat.read(path, as_version=4)
    words = sum(main_text_words(c.source) for c in nb.cells if c.cell_type == "markdown")
    visible = [
        c for c in nb.cells if c.cell_type == "code" and not HIDDEN_TAGS & set(c.metadata.get("tags", []))
    ]
    counts = [sum(1 for line in c.source.splitlines() if line.strip()) for c in visible]
    return Budget(str(path), words, sum(counts), max(counts, default=0))


def main(argv: list[str]) -> int:
    for arg in argv:
        b = measure(Path(arg))
        print(f"{b.path}: {b.words} words, {b.code_lines} visible code lines, longest cell {b.longest_cell}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
