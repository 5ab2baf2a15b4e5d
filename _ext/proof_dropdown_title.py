"""Sphinx extension: give a collapsed proof a title for sphinx-togglebutton.

A sphinx-proof block marked ``:class: dropdown`` renders as
``<div class="proof dropdown admonition">`` whose "Proof." opens the first
paragraph: it has no ``.admonition-title``. sphinx-togglebutton collapses every
``.admonition.dropdown`` by adding its button to that title, so on such a proof
it stopped with "Cannot read properties of null (reading 'insertAdjacentHTML')",
and every dropdown after it on the page stayed open. This adds a
``<p class="admonition-title">Proof</p>`` to each such block before
sphinx-togglebutton runs (the script is registered earlier, at a lower
priority, and runs on the same DOMContentLoaded event).
"""

from __future__ import annotations

from typing import Any

_SCRIPT = """
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".admonition.dropdown.proof").forEach((block) => {
    if (block.querySelector(":scope > .admonition-title")) return;
    const title = document.createElement("p");
    title.className = "admonition-title";
    title.textContent = "Proof";
    block.prepend(title);
  });
});
"""


def setup(app: Any) -> dict[str, Any]:
    # sphinx-togglebutton's script has the default priority (500): this one first.
    app.add_js_file(None, body=_SCRIPT, priority=200)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
