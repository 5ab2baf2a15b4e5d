"""Set the repository URL of the book, in the one place it is set.

``_config.yml``'s ``repository.url`` is where the book's repository URL lives:
Jupyter Book's repository, issues, Binder and Colab buttons read it there. The
only other copy is derived from it: each chapter's first code cell (hidden,
tagged ``remove-cell``) installs the book's package on Colab with
``%pip install --quiet myst-nb "dropout_lib[book] @ git+<URL>"`` (no
TensorFlow: Colab has its own). This tool rewrites both, so they cannot
disagree; ``tests/test_setup.py`` fails if they do.

    python tools/set_repository_url.py https://github.com/someone/dropout-book
    python tools/set_repository_url.py --check     # print the URL; exit 1 if a chapter disagrees
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
# `repository:` then, indented under it, `url: ...` (anything may sit between).
URL_LINE = re.compile(r"(^repository:\s*\n(?:[ \t]+.*\n|\s*\n)*?[ \t]+url:[ \t]*)(\S+)", re.MULTILINE)
INSTALL = re.compile(r'("dropout_lib\[book\] @ git\+)([^"\s]+)(")')


def config_url(text: str | None = None) -> str:
    text = CONFIG.read_text(encoding="utf-8") if text is None else text
    match = URL_LINE.search(text)
    if match is None:
        raise SystemExit("_config.yml has no repository.url")
    return match.group(2).strip("'\"")


def install_cell(nb: dict) -> dict:
    """The chapter's first code cell: the Colab install cell."""
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    if not INSTALL.search("".join(cell["source"])):
        raise ValueError('first code cell has no %pip install ... "dropout_lib[book] @ git+URL"')
    return cell


def install_urls(nb: dict) -> list[str]:
    return [m.group(2) for m in INSTALL.finditer("".join(install_cell(nb)["source"]))]


def chapters(root: Path = ROOT) -> list[Path]:
    return sorted((root / "chapters").glob("*.ipynb"))


def set_url(url: str, root: Path = ROOT) -> list[Path]:
    """Write ``url`` into _config.yml and every chapter's install cell; return the files changed."""
    changed = []
    config = root / "_config.yml"
    text = config.read_text(encoding="utf-8")
    if URL_LINE.search(text) is None:
        raise SystemExit("_config.yml has no repository.url")
    new = URL_LINE.sub(lambda m: m.group(1) + url, text, count=1)
    if new != text:
        config.write_text(new, encoding="utf-8")
        changed.append(config)
    for path in chapters(root):
        raw = path.read_text(encoding="utf-8")
        nb = json.loads(raw)
        cell = install_cell(nb)
        source = "".join(cell["source"])
        replaced = INSTALL.sub(lambda m: m.group(1) + url + m.group(3), source)
        if replaced != source:
            cell["source"] = replaced.splitlines(keepends=True)
            # The layout nbformat and tools/execute_notebooks.py write.
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="e.g. https://github.com/someone/dropout-book")
    parser.add_argument("--check", action="store_true", help="only check that every chapter uses the URL")
    args = parser.parse_args(argv)
    if args.url and not args.check:
        if not re.fullmatch(r"https://\S+[^/]", args.url):
            raise SystemExit(f"not an https URL (without a trailing slash): {args.url}")
        for path in set_url(args.url):
            print(f"updated {path.relative_to(ROOT)}")
    url = config_url()
    wrong = [p.name for p in chapters() if set(install_urls(json.loads(p.read_text(encoding="utf-8")))) != {url}]
    print(f"repository.url: {url}")
    if wrong:
        print(f"chapters whose install cell uses another URL: {', '.join(wrong)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
