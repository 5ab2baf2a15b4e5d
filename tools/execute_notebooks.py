"""Execute the chapters: in place, deterministically (``make refresh``), or
into Jupyter Book's execution cache, in parallel (``make book``).

Each notebook is run top to bottom in a fresh kernel started from this
environment, with its folder as working directory, and written back with:

* no execution timestamps (``record_timing=False`` and ``metadata.execution``
  removed from every cell),
* a fixed kernelspec and language_info (no interpreter path in metadata),
* execution counts numbered 1, 2, 3, ... as a clean run gives them,
* consecutive stream outputs of a cell merged into one (how the kernel splits
  printed text into messages varies from run to run).

Running it twice on unchanged sources gives byte-identical files, so ``git
diff`` after a refresh shows only real changes in outputs.

With ``--cache DIR`` the notebooks are not rewritten: the outdated ones are
executed in parallel (one process per core) into the jupyter-cache at DIR, the
cache Jupyter Book reads with ``execute_notebooks: cache``, so the book build
that follows finds every chapter executed and only renders it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

# The project's own kernel, installed into .venv by `make` (see the Makefile's
# kernel step): named for the project, so a user-level "python3" kernel elsewhere
# on the machine cannot take its place, and carrying the environment the
# chapters need (TF_CPP_MIN_LOG_LEVEL=2, TF_ENABLE_ONEDNN_OPTS=0, PYTHONHASHSEED=0).
KERNEL_NAME = "dropout-book"
KERNELSPEC = {"display_name": "Python 3 (dropout-book)", "language": "python", "name": KERNEL_NAME}


def merge_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) outputs into one, as nbval compares them."""
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None
                and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
            prev["text"] = "".join(prev["text"]) + "".join(out["text"])
        else:
            merged.append(out)
    return merged


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
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
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
        kernel_name=KERNEL_NAME,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    elapsed = time.perf_counter() - start
    normalise(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return elapsed


def execute_into_cache(paths: list[Path], cache_dir: Path, timeout: int) -> int:
    """Execute the outdated notebooks among ``paths`` into the jupyter-cache at ``cache_dir``.

    Returns the number of notebooks that failed, after printing each failure's
    notebook and traceback.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor

    cache = get_cache(str(cache_dir))
    for path in paths:
        cache.add_nb_to_project(str(path.resolve()))
    executor = load_executor("local-parallel", cache=cache)
    start = time.perf_counter()
    result = executor.run_and_cache(
        filter_uris=[str(p.resolve()) for p in paths], timeout=timeout, allow_errors=False
    )
    elapsed = time.perf_counter() - start
    failed = result.excepted + result.errored
    for uri in failed:
        record = cache.get_project_record(uri)
        print(f"FAILED {Path(uri).relative_to(Path.cwd())}:\n{record.traceback}", file=sys.stderr)
    print(f"executed {len(result.succeeded)} outdated chapter(s) in {elapsed:.1f} s; "
          f"{len(paths) - len(result.succeeded) - len(failed)} already cached; {len(failed)} failed")
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    parser.add_argument("--cache", type=Path, help="execute into this jupyter-cache instead of in place")
    args = parser.parse_args(argv)
    if args.cache is not None:
        return 1 if execute_into_cache(args.notebooks, args.cache, args.timeout) else 0
    # Executed to be stored: dropout_lib.book.publish.round_stable demands twice
    # the stated noise as margin, so every machine within the noise reproduces
    # the stored rounding (and its own check there passes).
    os.environ["DROPOUT_BOOK_STORING"] = "1"
    for path in args.notebooks:
        elapsed = execute(path, args.timeout)
        print(f"{path}: executed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
