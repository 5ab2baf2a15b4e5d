"""Sphinx extension: re-read a page that pastes glued values from other pages
whenever one of those pages changes.

myst-nb pastes ``{glue:text}`other.ipynb::key:fmt``` in a post-transform, from
the other page's glue data, but records no dependency between the two pages.
An incremental build that re-reads the other page therefore does not rewrite
the pasting page, which keeps showing the old numbers. This extension records,
for each page, the pages it pastes from, and marks it outdated when one of
them is added, changed or removed.
"""

from __future__ import annotations

from typing import Any

from myst_nb.ext.glue.utils import PendingGlueReference

_ATTR = "glue_paste_sources"   # env attribute: {docname: {docname it pastes from}}


def _sources(env: Any) -> dict[str, set[str]]:
    if not hasattr(env, _ATTR):
        setattr(env, _ATTR, {})
    return getattr(env, _ATTR)


def _record(app: Any, doctree: Any) -> None:
    refdocs = {node.refdoc for node in doctree.findall(PendingGlueReference)}
    sources = _sources(app.env)
    sources.pop(app.env.docname, None)
    if refdocs:
        sources[app.env.docname] = refdocs


def _purge(app: Any, env: Any, docname: str) -> None:
    _sources(env).pop(docname, None)


def _merge(app: Any, env: Any, docnames: set[str], other: Any) -> None:
    _sources(env).update({d: s for d, s in _sources(other).items() if d in docnames})


def _outdated(app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    touched = added | changed | removed
    return sorted(doc for doc, refdocs in _sources(env).items()
                  if doc not in touched and refdocs & touched)


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", _record)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-get-outdated", _outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
