"""Tests of dropout_lib.book.glued: the values a chapter glued, read back from its notebook.

The notebooks here are built from outputs that ``myst_nb.glue`` itself produces
(its display call is captured), so the reader is tested against the real format,
and against myst-nb's own extraction.
"""

from __future__ import annotations

import copy
import math

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from myst_nb.ext import glue as myst_glue

from dropout_lib.book import glued

fast = settings(max_examples=60, deadline=None)


def glue_outputs(monkeypatch, items, display=False):
    """The display outputs that ``myst_nb.glue(name, value, display)`` stores, per item."""
    captured = []

    def fake_display(bundle, raw, metadata):
        assert raw
        captured.append(nbformat.v4.new_output("display_data", data=bundle, metadata=metadata))

    monkeypatch.setattr(myst_glue, "ipy_display", fake_display)
    for name, value in items:
        myst_glue.glue(name, value, display=display)
    return captured


def write_notebook(tmp_path, outputs, name="07_chapter"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A chapter"),
        nbformat.v4.new_code_cell("glue(...)", outputs=outputs, execution_count=1),
    ]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.text(max_size=20),
)


@fast
@given(values=st.lists(scalars, min_size=1, max_size=5), display=st.booleans())
def test_values_round_trip(tmp_path_factory, values, display):
    # floats round-trip exactly: repr of a float64 is its shortest exact spelling
    with pytest.MonkeyPatch.context() as mp:
        items = [(f"v{i}", v) for i, v in enumerate(values)]
        path = write_notebook(tmp_path_factory.mktemp("nb"), glue_outputs(mp, items, display))
    read = glued.read_glued(path)
    assert dict(read) == dict(items)
    assert all(type(read[k]) is type(v) for k, v in items)


def test_agrees_with_myst_nb_extraction(tmp_path, monkeypatch):
    items = [("a", 0.64), ("b", "8-16-16-4"), ("c", 3), ("a", 0.36)]  # "a" twice: last wins
    outputs = glue_outputs(monkeypatch, items)
    outputs.insert(1, nbformat.v4.new_output("stream", text="not glued\n"))
    path = write_notebook(tmp_path, outputs)
    nb = nbformat.read(path, as_version=4)
    warnings = []

    class Logger:  # myst-nb's logger interface: warning(msg, subtype=..., line=...)
        def warning(self, msg, **kw):
            warnings.append(msg)

    theirs = myst_glue.extract_glue_data(copy.deepcopy(nb), [0, 1], Logger())
    assert warnings == ["glue key 'a' duplicate"]
    read = glued.read_glued(path)
    assert set(read) == set(theirs) == {"a", "b", "c"}
    for key, output in theirs.items():
        assert repr(read[key]) == output["data"]["text/plain"]
    assert read["a"] == 0.36


def test_non_literal_is_kept_as_text(tmp_path, monkeypatch):
    class Thing:
        def __repr__(self):
            return "<Thing object>"

    path = write_notebook(tmp_path, glue_outputs(monkeypatch, [("t", Thing()), ("x", math.pi)]))
    read = glued.read_glued(path)
    assert read["t"] == "<Thing object>" and read["x"] == math.pi


def test_missing_name_says_what_exists(tmp_path, monkeypatch):
    path = write_notebook(tmp_path, glue_outputs(monkeypatch, [("gap", 0.5)]))
    read = glued.read_glued(path)
    with pytest.raises(KeyError, match=r"07_chapter glues no value named 'gaps'.*gap"):
        read["gaps"]
    assert read.paste_prefix() == "07_chapter.ipynb::"
    assert repr(read) == "Glued('07_chapter', 1 values)"


def test_bad_paths_and_unexecuted_notebooks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        glued.read_glued(tmp_path / "absent.ipynb")
    with pytest.raises(ValueError, match=r"\.ipynb"):
        glued.read_glued(tmp_path / "chapter.md")
    path = write_notebook(tmp_path, [])
    with pytest.raises(ValueError, match="unexecuted"):
        glued.read_glued(path)


def test_read_chapters(tmp_path, monkeypatch):
    write_notebook(tmp_path, glue_outputs(monkeypatch, [("x", 1.5)]), "01_one")
    write_notebook(tmp_path, glue_outputs(monkeypatch, [("y", 2)]), "02_two")
    chapters = glued.read_chapters(tmp_path, ["02_two", "01_one"])
    assert list(chapters) == ["02_two", "01_one"]
    assert chapters["01_one"]["x"] == 1.5 and chapters["02_two"]["y"] == 2
    with pytest.raises(ValueError, match="once"):
        glued.read_chapters(tmp_path, ["01_one", "01_one"])
    with pytest.raises(ValueError, match="stem"):
        glued.read_chapters(tmp_path, ["01_one.ipynb"])
