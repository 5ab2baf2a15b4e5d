"""Chapters re-run at another keep probability and seed (issue 18, section 7).

The README invites a reader to change a number and run the chapter; the
chapter's checks must still mean what they say there. Each chapter a reader may
change has ONE code cell tagged ``parameters`` holding those numbers. This test
injects a cell right after it with other values (papermill's convention,
without papermill: nbclient runs the notebook) and executes the chapter on the
project's kernel, ``dropout-book``, in memory: nothing is stored and nothing is
compared with the stored outputs (nbval does that at the stored values). It
asserts that every cell runs: no check fitted to the default values, and no
rounding refusal (outside the storing run a value near a rounding boundary
warns, see ``dropout_lib.book.publish``).

Only the cheap chapters run here, so that ``make test`` stays within its
budget (README); the others were run at other values by hand when their
parameters cell was written.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
KERNEL_NAME = "dropout-book"  # tools/execute_notebooks.py's kernel

# chapter -> the values injected after its parameters cell: another keep
# probability (including p = 1/2, where a two-point output is least like a
# normal one) and another seed
OTHER_VALUES = {
    "01_two_dropouts.ipynb": ("keras_rate = 0.5\nmc_rates = (0.5, 0.25, 0.01)\nn_draws = 5_000\nseed = 7"),
    "07_where_equivalence_ends.ipynb": "p = 0.5\nseed = 3",
    "09_ensemble_view.ipynb": "keep_prob = 0.7\np_in, p_hidden = 0.9, 0.6\nseed, net_seed = 7, 3",
}


def with_values(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    """``nb`` with a cell holding ``source`` right after its one ``parameters`` cell."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def test_with_values_injects_after_the_parameters_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import math"),
        nbformat.v4.new_code_cell("p = 0.5", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("assert p == 0.7"),
    ]
    sources = [c.source for c in with_values(nb, "p = 0.7").cells]
    assert sources == ["import math", "p = 0.5", "p = 0.7", "assert p == 0.7"]
    nb.cells[1].metadata["tags"] = []
    with pytest.raises(AssertionError, match="one cell tagged"):
        with_values(nb, "p = 0.7")


@pytest.mark.parametrize("chapter", sorted(OTHER_VALUES))
def test_chapter_runs_at_other_values(chapter, monkeypatch):
    from nbclient import NotebookClient

    # a reader's run, not the storing one: rounding refusals become warnings
    monkeypatch.delenv("DROPOUT_BOOK_STORING", raising=False)
    nb = with_values(nbformat.read(CHAPTERS / chapter, as_version=4), OTHER_VALUES[chapter])
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb, timeout=120, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(CHAPTERS)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
