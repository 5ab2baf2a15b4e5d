"""Open every page of the built book in headless Chromium, as a reader would.

Each page is loaded from ``file://`` (offline, no server) and must show:

* typeset math: every Sphinx math element holds a MathJax container;
* every image loaded (``naturalWidth > 0``);
* no cell with an error or stderr output;
* no script or other resource loaded from the network;
* no severe message in the browser console (a missing file, a blocked load);
* no raw LaTeX in the text (``\\texttt``, ``\\_``, a ``$`` outside math and code);
* no table wider than its container at 1280 px (every number readable without
  scrolling sideways), and on the first page and the recipe no code line wider
  than its box;
* every collapsed proof has its own id, starts collapsed, and its title toggles
  it and no other block (sphinx-proof repeated ``id="proof"``, so every
  button toggled the first proof: ``_ext/unique_proof_ids.py``).

Needs ``make book`` first, and Debian's ``chromium`` and ``chromium-driver``.
``DROPOUT_BOOK_HTML=/path/to/html`` tests another build of the book.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("DROPOUT_BOOK_HTML") or ROOT / "_build" / "html")
# Debian's chromium and chromium-driver; Chrome where that is what the machine has.
CHROMIUM = os.environ.get("CHROME_BIN") or shutil.which("chromium") or shutil.which("google-chrome")
CHROMEDRIVER = (
    os.environ.get("CHROMEDRIVER")
    or shutil.which("chromedriver")
    or (
        shutil.which("chromedriver", path=os.environ["CHROMEWEBDRIVER"])
        if os.environ.get("CHROMEWEBDRIVER")
        else None
    )
)
SKIP_PAGES = {"search.html", "genindex.html"}
# Pages whose every code line must fit its box at 1280 px (a comment cut off
# in the box was how the recipe's no-map pair read). The chapters have code
# lines up to 88 characters (CONTRIBUTING), wider than the box's ~76.
CODE_FITS = {"intro.html", "recipe.html"}
# pydata-sphinx-theme logs this on a browser profile's first page (no stored
# light/dark choice yet) and then picks "auto"; it is not a fault of the book.
HARMLESS_CONSOLE = ("Got invalid theme mode",)


def _pages() -> list[Path]:
    if not HTML.is_dir():
        return []
    return sorted(
        p
        for p in HTML.rglob("*.html")
        if p.name not in SKIP_PAGES and "_static" not in p.parts and "_sources" not in p.parts
    )


PAGES = _pages()

# `make test` sets DROPOUT_BOOK_BROWSER=required: there a missing book or
# browser is a failure, not a skip.
_REQUIRED = os.environ.get("DROPOUT_BOOK_BROWSER") == "required"
_MISSING = (
    "no built book: run `make book` first"
    if not PAGES
    else "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if CHROMIUM is None or CHROMEDRIVER is None
    else None
)
if _MISSING and _REQUIRED:
    raise RuntimeError(_MISSING)
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="dropout-book-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => done(true), () => done(false));
} else {
  done(null);
}
"""

INSPECT_PAGE = r"""
const math = Array.from(document.querySelectorAll('.math'));
const imgs = Array.from(document.images);
return {
  math: math.length,
  untypeset: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
  mjx: document.querySelectorAll('mjx-container svg').length,
  images: imgs.length,
  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  errors: Array.from(document.querySelectorAll('.output.error, .output.traceback, .output.stderr'))
               .map(e => e.textContent.slice(0, 200)),
  remote: performance.getEntriesByType('resource').map(r => r.name)
               .filter(n => !n.startsWith('file:') && !n.startsWith('data:')),
  remote_scripts: Array.from(document.scripts).map(s => s.src)
               .filter(s => s && !s.startsWith('file:')),
  raw_latex: rawLatex(),
  wide_tables: Array.from(document.querySelectorAll('article table')).map(t => ({
      width: t.getBoundingClientRect().width, room: t.parentElement.clientWidth,
      head: t.textContent.trim().slice(0, 60)})).filter(t => t.width > t.room + 1),
  proofs: proofToggles(),
  wide_code: wideCodeLines('article div.highlight pre'),
  wide_cells: wideCodeLines('article div.cell_input div.highlight pre'),
};

function wideCodeLines(selector) {
  // Code lines wider than their box (measured in the box's own font), in the
  // boxes a reader sees (a collapsed cell is measured when opened: not here).
  const out = [];
  document.querySelectorAll(selector).forEach(pre => {
    if (!pre.offsetParent) return;
    const cs = getComputedStyle(pre);
    const ctx = document.createElement('canvas').getContext('2d');
    ctx.font = cs.font;
    const room = pre.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    pre.textContent.split('\n').forEach(line => {
      if (ctx.measureText(line).width > room + 1) out.push(line);
    });
  });
  return out;
}

function rawLatex() {
  // The text a reader sees, outside math, code and scripts.
  const skip = 'script, style, code, pre, .math, mjx-container, .highlight, .MathJax';
  const walker = document.createTreeWalker(document.querySelector('article') || document.body,
                                           NodeFilter.SHOW_TEXT);
  const leaks = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest(skip)) continue;
    const m = n.textContent.match(/\\texttt|\\_|\\[a-zA-Z]+\{|\$/);
    if (m) leaks.push(n.textContent.slice(Math.max(0, m.index - 30), m.index + 30));
  }
  return leaks;
}

function proofToggles() {
  // Each collapsed proof: own id, collapsed at first, its title toggles it alone.
  const blocks = Array.from(document.querySelectorAll('.admonition.dropdown.proof'));
  const ids = blocks.map(b => b.id);
  const faults = [];
  if (new Set(ids).size !== ids.length) faults.push('repeated ids: ' + ids.join(' '));
  const hidden = () => blocks.map(b => b.classList.contains('toggle-hidden'));
  blocks.forEach((b, i) => {
    const before = hidden();
    if (!before[i]) faults.push(b.id + ' is not collapsed at first');
    const title = b.querySelector(':scope > .admonition-title');
    if (!title) { faults.push(b.id + ' has no title to click'); return; }
    title.click();
    const after = hidden();
    after.forEach((h, j) => {
      if (j === i && h === before[j]) faults.push('clicking ' + b.id + ' did not toggle it');
      if (j !== i && h !== before[j]) faults.push('clicking ' + b.id + ' toggled ' + blocks[j].id);
    });
    title.click();
  });
  return {count: blocks.length, faults: faults};
}
"""


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(HTML)) for p in PAGES])
def test_page_renders_offline(browser, page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', html)
    if redirect:  # index.html only forwards to the root page, which is tested itself
        assert (page.parent / redirect.group(1)).is_file(), f"{page.name} redirects to a missing page"
        return
    # MathJax shows "\_" inside \text{...} as a backslash and an underscore.
    escaped = re.findall(r"\\(?:text|textrm|mathrm|texttt|mbox)\{[^}]*\\_[^}]*\}", html)
    assert not escaped, f"escaped underscores in math text: {escaped}"
    browser.get(page.as_uri())
    mathjax = browser.execute_async_script(WAIT_FOR_MATHJAX)
    info = browser.execute_script(INSPECT_PAGE)
    console = [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and not any(h in e["message"] for h in HARMLESS_CONSOLE)
    ]

    assert not info["remote_scripts"], f"scripts from the network: {info['remote_scripts']}"
    assert not info["remote"], f"resources from the network: {info['remote']}"
    if info["math"]:
        assert mathjax is True, "MathJax did not load or failed to start (is it in _static/mathjax?)"
        assert not info["untypeset"], f"math left untypeset: {info['untypeset']}"
        assert info["mjx"] >= info["math"], f"{info['mjx']} typeset formulas for {info['math']} math elements"
    assert not info["broken"], f"images that did not load: {info['broken']}"
    assert not info["errors"], f"cells showing an error or stderr: {info['errors']}"
    assert not console, f"severe console messages: {console}"
    assert not info["raw_latex"], f"raw LaTeX in the text: {info['raw_latex']}"
    assert not info["wide_tables"], f"tables wider than their container at 1280 px: {info['wide_tables']}"
    assert not info["proofs"]["faults"], f"proof toggles: {info['proofs']['faults']}"
    if page.name in CODE_FITS and page.parent == HTML:
        assert not info["wide_code"], f"code lines wider than their box at 1280 px: {info['wide_code']}"
    assert not info["wide_cells"], f"code-cell lines wider than their box at 1280 px: {info['wide_cells']}"


def test_chapters_have_math_and_figures() -> None:
    """The chapters render theorems (math) and at least one figure between them."""
    chapters = [p for p in PAGES if p.parent.name == "chapters"]
    assert chapters, "no chapter pages were built"
    text = "".join(p.read_text(encoding="utf-8") for p in chapters)
    assert 'class="math' in text, "no math in any chapter"
    assert "<img" in text, "no figure in any chapter"
    assert "proof" in text, "no sphinx-proof block in any chapter"
