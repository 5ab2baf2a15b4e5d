"""Sphinx extension: emit each inline ``<script>`` block once per page.

Under Sphinx 7, sphinx-thebe 0.3.1 and sphinx-togglebutton (both loaded by
Jupyter Book 1) register their inline configuration scripts twice, once with
each of two priorities, so every page declared ``const THEBE_JS_URL`` twice
and the browser stopped that script with "Identifier 'THEBE_JS_URL' has
already been declared". No release of sphinx-thebe fixes it; this drops the
repeats, keeping the first of each (file name, inline body) pair.
"""

from __future__ import annotations

from typing import Any


def _drop_repeated_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    seen: set[tuple[str, str | None]] = set()
    unique = []
    for script in context.get("script_files", []):
        # The first registration has filename None, the repeat ''.
        key = (script.filename or "", script.attributes.get("body"))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: it is the builder's own list


def setup(app: Any) -> dict[str, Any]:
    # Late, after sphinx.ext.mathjax and the themes have added their scripts.
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
