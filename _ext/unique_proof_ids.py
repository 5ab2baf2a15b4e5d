"""Sphinx extension: give every sphinx-proof block on a page its own HTML id.

sphinx-proof 0.4.0 gives every ``prf:proof`` block the same id, its type
(``nodes.admonition(classes=classes, ids=[realtyp])`` in ``ProofDirective``:
``id="proof"``), and the body of every theorem-like block the id
``proof-content`` (``nodes.section(..., ids=["proof-content"])``). A page with
seven proofs had seven ``id="proof"``. sphinx-togglebutton keys each
collapsed block by its id (``button-<id>``, ``data-target="<id>"``,
``document.getElementById``), so on such a page every proof's button toggled
the first proof, and the other proofs showed "Click to show" while open.

Upstream: the collapsed-proof problem is executablebooks/sphinx-proof#86
("Hide Content Only Works For Non-Proof Directives",
https://github.com/executablebooks/sphinx-proof/issues/86, open; its missing
title is worked around by ``proof_dropdown_title.py``). A search of the
project's issues found no report of the repeated ids themselves; the cause is
the two ``ids=[...]`` constants in ``sphinx_proof/directive.py`` quoted above.

This renames them after the references are resolved and before HTML is
written: the n-th proof of a page becomes ``proof-n`` (with the class
``prf-proof``, which ``book_style.py`` styles as sphinx-proof's
``div#proof`` rule did), and a theorem's body ``<label>-content``. Nothing
links to either id (theorems are cited by their own label, which is kept).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes


def _rename(app: Any, doctree: nodes.document, docname: str) -> None:
    n = 0
    for node in doctree.findall(nodes.Element):
        ids = node.get("ids", [])
        if isinstance(node, nodes.admonition) and ids == ["proof"] and "proof" in node["classes"]:
            n += 1
            node["ids"] = [f"proof-{n}"]
            node["classes"].append("prf-proof")
        elif isinstance(node, nodes.section) and ids == ["proof-content"]:
            parent_ids = node.parent.get("ids", []) if node.parent is not None else []
            node["ids"] = [f"{parent_ids[0]}-content"] if parent_ids else []


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-resolved", _rename)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
