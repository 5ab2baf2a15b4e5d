"""Mark the book out of date when what the chapters run on changes.

Jupyter Book's execution cache (jupyter-cache) keys a notebook on its code
cells only: with ``dropout_lib`` or a pinned package changed, ``make book``
would render the outputs the old code computed. This hashes the given files
and folders (every file under a folder, by path and content; bytecode
skipped) and compares the hash with the one stored at ``--stamp``. When they
differ, the paths given to ``--clear`` (the execution cache and the marker of
the last good build) are removed, so every chapter is executed again and every
page rendered again, and the new hash is stored.

    python tools/book_inputs.py --stamp _build/.book-inputs.sha256 \\
        --clear _build/.jupyter_cache _build/.book-built -- dropout_lib requirements.txt
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def files_under(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [
                p for p in path.rglob("*")
                if p.is_file() and p.suffix not in SKIP_SUFFIXES
                and not SKIP_DIRS.intersection(p.parts) and not any(part.endswith(".egg-info") for part in p.parts)
            ]
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"book_inputs: {path} does not exist")
    return sorted(set(found))


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files_under(paths):
        h.update(path.as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True, help="file holding the last hash")
    parser.add_argument("--clear", type=Path, nargs="*", default=[], help="removed when the hash changes")
    parser.add_argument("inputs", type=Path, nargs="+", help="files and folders the chapters depend on")
    args = parser.parse_args(argv)
    new = digest(args.inputs)
    old = args.stamp.read_text().strip() if args.stamp.is_file() else None
    if new == old:
        return 0
    if old is not None:
        print(f"{', '.join(map(str, args.inputs))} changed: every chapter will be executed again")
    for path in args.clear:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    args.stamp.parent.mkdir(parents=True, exist_ok=True)
    args.stamp.write_text(new + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
