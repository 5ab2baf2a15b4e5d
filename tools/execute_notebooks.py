"""Re-execute chapters in place, deterministically (``make refresh``).

Each notebook is run top to bottom in a fresh kernel started from this
environment, with its folder as working directory, and written back with:

* no execution timestamps (``record_timing=False`` and ``metadata.execution``
  removed from every cell),
* a fixed kernelspec and language_info (no interpreter path in metadata),
* execution counts numbered 1, 2, 3, ... as a clean run gives them.

Running it twice on unchanged sources gives byte-identical files, so ``git
diff`` after a refresh shows only real changes in outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def normalise(nb: nbformat.NotebookNode) -> None:
    """Drop run-dependent metadata from ``nb`` in place."""
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    info = nb.metadata.get("language_info", {})
    nb.metadata["language_info"] = {
        "name": "python",
        "version": ".".join(map(str, sys.version_info[:3])),
        **{k: info[k] for k in ("mimetype", "file_extension", "pygments_lexer", "nbconvert_exporter", "codemirror_mode") if k in info},
    }
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        cell.metadata.pop("collapsed", None)
        cell.metadata.pop("scrolled", None)
        cell.pop("id", None)
    nb.nbformat, nb.nbformat_minor = 4, 4


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    elapsed = time.perf_counter() - start
    normalise(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        elapsed = execute(path, args.timeout)
        print(f"{path}: executed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
