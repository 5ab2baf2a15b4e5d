"""Sphinx extension: the book's own CSS, kept here so that a change to it
rebuilds the book (``make`` watches ``_ext/*.py``; a ``_static/`` folder it
does not watch).

The rules:

* ``div.prf-proof``: sphinx-proof styles its proofs by id (``div#proof``);
  ``unique_proof_ids.py`` gives each proof its own id and this class instead.
* glued numbers (myst-nb's ``span.pasted-text``, bold by default) in the weight
  of the text around them: with 864 of them bold, test counts and ulps stood
  out more than the hyperparameters a reader came for. Bold only where the
  source asks for it (``**`` around the glue).
* figure captions in the text's colour (the theme's muted grey made them
  pale: issue 21, Fig. 5.1).
* search: a page whose title holds more of the query's words ranks higher.
  Sphinx scores a page by its *best* matching word (a title match 15, a text
  match 5), so for "learning rate keras" every page with "Keras" in its title
  tied at 15 and the ties went alphabetically: the recipe, the page that
  answers it, came 8th of 14. The scorer (``html_search_scorer``, which Sphinx
  pastes into ``language_data.js``) adds 5 for each query word of three or
  more letters whose first four letters appear in the result's title.
* code cells fit their box: a chapter's visible code lines are at most 88
  characters (ruff's line length for the notebooks), and at 1280 px the
  theme's 14 px monospace fits about 74 of them; code-cell inputs use 0.75rem
  (12 px) with narrower side padding, so 88 fit. ``tests/test_browser.py``
  checks every visible code-cell line of every chapter at 1280 px.
* tables fit their column: a long identifier in a cell may break rather than
  push the table wider than the text; on a phone-width screen tables use a
  smaller font and padding. ``tests/test_browser.py`` checks that no table is
  wider than its container at 1280 px.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CSS_FILE = "book_style.css"
CSS = """\
div.prf-proof {
  padding: .4rem .6rem .4rem 2rem !important;
  border-color: #ccc;
}
span.pasted-text {
  font-weight: inherit;
}
figcaption {
  color: var(--pst-color-text-base);
}
div.cell_input div.highlight pre {
  font-size: 0.75rem;
  padding-left: .5rem;
  padding-right: .5rem;
}
article table.table td code, article table.table th code {
  overflow-wrap: anywhere;
}
article table.table td code .pre, article table.table th code .pre {
  white-space: normal;
}
@media (max-width: 600px) {
  article table.table { font-size: 0.85em; }
  article table.table td, article table.table th { padding: 0.25rem 0.3rem; }
}
"""


SCORER = """\
var Scorer = {
  objNameMatch: 11, objPartialMatch: 6, objPrio: {0: 15, 1: 5, 2: -5}, objPrioDefault: 0,
  title: 15, partialTitle: 7, term: 5, partialTerm: 2,
  score: (result) => {
    const title = (result[1] || "").toLowerCase();
    const query = new URLSearchParams(window.location.search).get("q") || "";
    const words = query.toLowerCase().split(/[^a-z0-9_]+/).filter((w) => w.length > 2);
    return result[4] + 5 * words.filter((w) => title.includes(w.slice(0, 4))).length;
  },
};
"""


def _use_scorer(app: Any, config: Any) -> None:
    path = Path(app.doctreedir) / "book_search_scorer.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SCORER, encoding="utf-8")
    config.html_search_scorer = str(path)


def _write_css(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.builder.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / CSS_FILE).write_text(CSS, encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    app.add_css_file(CSS_FILE, priority=900)  # after the theme's and myst-nb's
    app.connect("build-finished", _write_css)
    app.connect("config-inited", _use_scorer)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
