"""Check that requirements.txt installs, in hash-checking mode, on every
platform and Python the README supports, without installing anything.

For each target (Linux x86-64 and aarch64 with manylinux wheels, macOS arm64;
Python 3.11.2 as Debian 12 has it, a later 3.11, 3.12, 3.13) this runs pip's
resolver with ``--dry-run --only-binary=:all: --require-hashes`` for that
platform, so a pin without a wheel there, or a wheel whose hash is missing,
fails here rather than on a reader's machine. pip fetches wheel metadata only
(PEP 658) where the index serves it.

pip's ``--platform`` picks wheels but evaluates environment markers for the
machine it runs on, so the markers of requirements.txt (``tensorflow-cpu`` on
Linux x86-64 only, ``soupsieve`` by Python version, ...) are evaluated here for
the target first, with ``packaging`` as pip itself does on that machine, and
pip is given the requirements that apply there, hashes and all. pip also
evaluates the markers *inside* each package's dependencies for the machine it
runs on, so for a target other than this machine's own platform and Python
(minor version) the pins are checked one by one (``--no-deps``: a wheel for
the target exists, its hash is the pinned one, its Requires-Python admits the
target); the dependency closure there is uv's resolution, which is universal.
On this machine's own platform and Python the full resolution is checked.

    .venv/bin/python tools/check_pins.py            # every target
    .venv/bin/python tools/check_pins.py --python 3.12 --target linux-aarch64

The Python running this script is checked too, as itself (for example Debian
12's /usr/bin/python3, 3.11.2, for which a few packages need older versions):
run it with ``--native`` from that interpreter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Debian 12's own Python is 3.11.2 (some packages need 3.11.5 or later: the
# pins fork on python_full_version); Ubuntu 24.04's is 3.12.3.
PYTHONS = ("3.11.2", "3.11.9", "3.12.3", "3.13.1")


def _manylinux(arch: str, newest_glibc: int = 36) -> list[str]:
    # pip does not widen --platform to older tags: list every tag a Linux with
    # glibc 2.36 (Debian 12; Ubuntu 24.04 has 2.39) accepts.
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest_glibc, 16, -1)]
    tags += [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += [f"manylinux2010_{arch}", f"manylinux_2_12_{arch}", f"manylinux1_{arch}", f"manylinux_2_5_{arch}"]
    return tags


def _macos_arm64(newest: int = 14) -> list[str]:
    tags = []
    for major in range(newest, 10, -1):
        tags += [f"macosx_{major}_0_arm64", f"macosx_{major}_0_universal2"]
    tags += [f"macosx_10_{minor}_universal2" for minor in range(16, 8, -1)]
    return tags


TARGETS = {
    "linux-x86_64": _manylinux("x86_64"),
    "linux-aarch64": _manylinux("aarch64"),
    "macos-arm64": _macos_arm64(),
}
# Marker environment of each target (PEP 508), beside the Python version.
MARKER_ENV = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
}


def requirements_for(requirements: Path, target: str, python: str) -> str:
    """The lines of ``requirements`` whose markers hold on ``target`` with ``python``, markers removed."""
    from packaging.markers import Marker

    env = {
        **MARKER_ENV[target], "os_name": "posix", "python_full_version": python,
        "python_version": ".".join(python.split(".")[:2]), "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "implementation_version": python,
    }
    text = requirements.read_text().replace("\\\n", " ")
    kept = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--hash") else line.strip()
        if not line:
            continue
        spec, _, rest = line.partition(" --hash")
        rest = " --hash" + rest if rest else ""
        name, _, marker = spec.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(env):
            continue
        kept.append(name.strip() + rest)
    return "\n".join(kept) + "\n"


def _is_host(target: str, python: str) -> bool:
    import platform

    env = MARKER_ENV[target]
    return (sys.platform == env["sys_platform"] and platform.machine() == env["platform_machine"]
            and python.split(".")[:2] == [str(v) for v in sys.version_info[:2]])


def check(requirements: Path, target: str | None, python: str | None) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="check-pins-") as tmp:
        report = Path(tmp) / "report.json"
        if target is not None:
            filtered = Path(tmp) / "requirements.txt"
            filtered.write_text(requirements_for(requirements, target, python))
            requirements = filtered
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--require-hashes", "--report", str(report), "-r", str(requirements)]
        if target is not None:
            cmd += ["--target", str(Path(tmp) / "target"), "--implementation", "cp", "--python-version", python]
            for tag in TARGETS[target]:
                cmd += ["--platform", tag]
            if not _is_host(target, python):
                cmd.append("--no-deps")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error" in line]
            return False, "\n    ".join(errors[-5:]) or proc.stderr[-2000:]
        installed = json.loads(report.read_text())["install"]
        mode = "full resolution" if target is None or _is_host(target, python) else "each pin, --no-deps"
        tf = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installed
                    if i["metadata"]["name"].lower().startswith("tensorflow"))
        return True, f"{len(installed)} packages ({mode}), {', '.join(tf) or 'no tensorflow'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--python", action="append", choices=PYTHONS, help="default: all")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: all")
    parser.add_argument("--native", action="store_true", help="check this interpreter and machine only")
    args = parser.parse_args(argv)
    if args.native:
        runs = [(f"this Python {sys.version.split()[0]} ({sys.platform})", None, None)]
    else:
        runs = [(f"{target} Python {py}", target, py)
                for target in (args.target or TARGETS) for py in (args.python or PYTHONS)]
    failed = 0
    for label, target, python in runs:
        ok, detail = check(args.requirements, target, python)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {label}: {detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
