"""The numbers an executed chapter glued, read back so that another chapter can check them.

A chapter publishes a number with ``myst_nb.glue(name, value, display=False)``.
That stores ``repr(value)`` as the ``text/plain`` entry of a display output
whose metadata hold ``{"scrapbook": {"name": name, "mime_prefix": prefix}}``,
the entry's key being ``prefix + "text/plain"``. The book's text pastes it,
from the same chapter as ``{glue:text}`name:fmt``` or from another one as
``{glue:text}`chapter.ipynb::name:fmt```.

:func:`read_glued` reads those stored entries back from an executed notebook,
as the values they stand for (``ast.literal_eval`` of the stored text: the
numbers, strings and booleans that chapters glue). The verdict chapter pastes
the deciding numbers of the earlier chapters and uses this module to assert,
on the very same stored numbers, that each verdict follows from them. Like
myst-nb, a name glued twice keeps its last value.

Nothing here runs a notebook: it reads what ``tools/execute_notebooks.py``
stored, so a chapter must be executed (``make refresh``) before it is read.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Glued", "read_glued", "read_chapters"]

TEXT = "text/plain"


class Glued(Mapping[str, Any]):
    """The values glued by one executed notebook: ``{name: value}``, read-only.

    Parameters
    ----------
    source : str
        The notebook's name (its file stem), used in error messages and by
        :meth:`paste_prefix`.
    values : Mapping[str, Any]
        The glued values.
    """

    def __init__(self, source: str, values: Mapping[str, Any]) -> None:
        self.source = source
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(
                f"{self.source} glues no value named {name!r}; it glues "
                f"{len(self._values)} values: {', '.join(sorted(self._values))}. "
                "Re-execute that chapter if it should (make refresh)."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Glued({self.source!r}, {len(self)} values)"

    def paste_prefix(self) -> str:
        """Return ``"<source>.ipynb::"``, the prefix that pastes from this notebook."""
        return f"{self.source}.ipynb::"


def _value(text: str) -> Any:
    """Return the Python literal that ``text`` (a stored ``repr``) spells, else ``text``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_glued(path: str | Path) -> Glued:
    """Read every value glued in the executed notebook at ``path``.

    Parameters
    ----------
    path : str or Path
        An executed ``.ipynb`` file.

    Returns
    -------
    Glued
        ``{name: value}``, each value the literal its stored ``text/plain``
        spells (``0.64``, ``'8-16-16-4'``, ``True``), or that text itself if
        it is not a literal (the repr of a Markdown object, say). A name glued
        twice keeps its last value, as in myst-nb.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If ``path`` is not an ``.ipynb`` file, or if the notebook has no
        outputs at all (it was stored unexecuted).
    """
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"expected an executed .ipynb notebook; got {str(path)!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {str(path)!r}: check the name and the folder.")
    # Plain JSON, not nbformat: importing nbformat costs about 3 s (its jsonschema
    # builds rfc3987-syntax's parsers), in the kernel of the chapter that reads.
    nb = json.loads(path.read_text(encoding="utf-8"))
    if nb.get("nbformat") != 4:
        raise ValueError(f"{path.name} is not an nbformat 4 notebook; open and save it in Jupyter first.")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if code and not any(c.get("outputs") for c in code):
        raise ValueError(
            f"{path.name} has no outputs: it is stored unexecuted. Execute it first "
            f"(.venv/bin/python tools/execute_notebooks.py {path})."
        )
    values: dict[str, Any] = {}
    for cell in code:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta is None:
                continue
            key = meta.get("mime_prefix", "") + TEXT
            if key in output.get("data", {}):
                text = output["data"][key]  # on disk, multi-line text may be a list of lines
                values[meta["name"]] = _value(text if isinstance(text, str) else "".join(text))
    return Glued(path.stem, values)


def read_chapters(folder: str | Path, names: Sequence[str]) -> dict[str, Glued]:
    """Read the glued values of several executed chapters in ``folder``.

    Parameters
    ----------
    folder : str or Path
        The folder that holds the notebooks.
    names : sequence of str
        Notebook stems, e.g. ``["04_gradients_and_sgd"]`` (no ``.ipynb``).

    Returns
    -------
    dict
        ``{name: Glued}``, in the order given.

    Raises
    ------
    ValueError
        If a name is given twice or carries the ``.ipynb`` suffix.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"each chapter once, please; got {list(names)}.")
    for name in names:
        if name.endswith(".ipynb"):
            raise ValueError(f"give the notebook's stem, without .ipynb; got {name!r}.")
    return {name: read_glued(Path(folder) / f"{name}.ipynb") for name in names}
