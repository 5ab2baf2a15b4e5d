"""The set-up the two commands rely on: pins, kernel, install cells, preflight, cache invalidation.

None of these needs the network or a build; they check the committed files
(and, where it exists, the installed kernel) against what README and
CONTRIBUTING promise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import book_inputs  # noqa: E402
import set_repository_url  # noqa: E402

CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
KERNEL = "dropout-book"
KERNEL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def _requirements() -> list[str]:
    """requirements.txt as one string per requirement (continuation lines joined)."""
    text = (ROOT / "requirements.txt").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_every_pin_is_exact_and_hashed() -> None:
    reqs = _requirements()
    assert len(reqs) > 100, "requirements.txt looks truncated"
    for req in reqs:
        assert re.match(r"^[A-Za-z0-9_.\-]+==\S+", req), f"not an exact pin: {req[:80]}"
        assert "--hash=sha256:" in req, f"no hash: {req.split()[0]}"
    names = {re.split(r"[=;\s]", r, maxsplit=1)[0].lower() for r in reqs}
    # Pulled in implicitly (TensorFlow; the editable install of dropout_lib): pinned too.
    assert {"setuptools", "pip"} <= names


def test_requirements_txt_is_generated_from_requirements_in() -> None:
    header = (ROOT / "requirements.txt").read_text().splitlines()[:3]
    assert any("make pins" in line for line in header), "requirements.txt must come from `make pins`"
    pinned = {}
    for req in _requirements():
        name, version = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", req).groups()
        pinned.setdefault(name.lower().replace("_", "-"), set()).add(version)
    for line in (ROOT / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            name, version = match.group(1).lower().replace("_", "-"), match.group(2)
            assert pinned.get(name) == {version}, (
                f"{name}: requirements.in says {version}, txt {pinned.get(name)}"
            )


def test_mathjax_is_locked_with_an_integrity_hash() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/mathjax"]
    assert entry["version"] == package["dependencies"]["mathjax"]
    assert entry["integrity"].startswith("sha512-")
    assert "npm ci" in (ROOT / "Makefile").read_text()


def test_workflow_actions_are_pinned_to_commits() -> None:
    workflow = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", workflow)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), f"not pinned to a commit: {action}"
        assert re.search(r"#\s*v\d", comment), f"no version comment: {action}"
    assert workflow.count("persist-credentials: false") == workflow.count("actions/checkout@")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_install_cell_uses_the_configured_repository(chapter: Path) -> None:
    """Each chapter's first code cell is the hidden Colab install cell, with _config.yml's URL."""
    url = set_repository_url.config_url()
    nb = json.loads(chapter.read_text(encoding="utf-8"))
    cell = set_repository_url.install_cell(nb)
    source = "".join(cell["source"])
    assert "remove-cell" in cell["metadata"].get("tags", []), "install cell must be hidden (remove-cell)"
    assert set_repository_url.install_urls(nb) == [url], f"install cell does not use {url}"
    pip_lines = [line for line in source.splitlines() if "%pip" in line]
    assert pip_lines and not any("tensorflow" in line for line in pip_lines), (
        "the install cell must not install TensorFlow over Colab's own"
    )


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_chapter_runs_on_the_project_kernel(chapter: Path) -> None:
    spec = json.loads(chapter.read_text(encoding="utf-8"))["metadata"]["kernelspec"]
    assert spec["name"] == KERNEL, (
        f"stored with kernel {spec['name']!r}: re-execute with tools/execute_notebooks.py"
    )


def test_project_kernel_is_installed_with_its_environment() -> None:
    pytest.importorskip("jupyter_client")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.skip("no .venv kernel here (make book installs it)")
    assert Path(spec.resource_dir).is_relative_to(Path(sys.prefix)), (
        f"{KERNEL} kernel not from this environment"
    )
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()
    for name, value in KERNEL_ENV.items():
        assert spec.env.get(name) == value, f"kernel must set {name}={value}"


def test_import_dropout_lib_changes_no_environment_variable() -> None:
    code = (
        "import os, json; before = dict(os.environ); import dropout_lib; "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == []


def _fake_python(tmp_path: Path, version: str) -> Path:
    fake = tmp_path / f"python{version}"
    fake.write_text(f'#!/bin/sh\necho "{version}"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("version", ["2.7", "3.10"])
def test_preflight_refuses_an_unsupported_python_at_once(tmp_path: Path, version: str) -> None:
    fake = _fake_python(tmp_path, version)
    env = {**os.environ, "VENV": str(tmp_path / "no-venv")}
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "preflight.sh"), str(fake), "book"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "3.11, 3.12 or 3.13" in proc.stderr and f"Python {version}" in proc.stderr


def test_book_inputs_clear_the_cache_when_the_library_changes(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "sub" / "m.py").write_text("def keep_prob_from_rate(rate):\n    return 1 - rate\n")
    (lib / "__pycache__").mkdir()
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.4.6\n")
    cache, built, stamp = tmp_path / "cache", tmp_path / "built", tmp_path / "stamp"

    def run() -> bool:
        """Run the tool; True when it cleared the cache and the build marker."""
        cache.mkdir(exist_ok=True)
        built.touch()
        book_inputs.main(
            ["--stamp", str(stamp), "--clear", str(cache), str(built), "--", str(lib), str(reqs)]
        )
        return not cache.exists() and not built.exists()

    assert run()  # first run: nothing known yet
    assert not run()  # unchanged
    (lib / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"bytecode")
    assert not run()  # bytecode does not count
    (lib / "sub" / "m.py").write_text("def keep_prob_from_rate(rate):\n    return 0.75\n")
    assert run()
    assert not run()
    reqs.write_text("numpy==2.4.7\n")
    assert run()
