"""Run a test command as other machines would: ``make test-portability``.

The stored notebooks must pass strict nbval, unchanged, under each of:

* OpenBLAS's Sandybridge kernels (AVX, no FMA): ``OPENBLAS_CORETYPE=Sandybridge``;
* OpenBLAS's Haswell kernels (AVX2 + FMA, what many laptops and CI runners
  use), unless Haswell is what this machine runs natively (then the plain
  ``make test`` covered it);
* TensorFlow and BLAS on one thread: ``TF_NUM_INTRAOP_THREADS=1
  TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``.

They simulate other machines (another CPU, another core count); the goal is
every machine, so a chapter stores what every correct run reproduces
(CONTRIBUTING.md, "What a stored output may contain"), not digits tuned to
pass these.

    python tools/test_portability.py -- python -m pytest ... chapters/*.ipynb
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

SINGLE_THREAD = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def native_openblas() -> str | None:
    """The OpenBLAS kernel numpy uses on this machine (e.g. 'Haswell'), if known."""
    code = (
        "import numpy, threadpoolctl\n"
        "print(next((i.get('architecture') or '' for i in threadpoolctl.threadpool_info()"
        " if i.get('internal_api') == 'openblas'), ''))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip() or None


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        raise SystemExit("usage: test_portability.py -- COMMAND ...")
    native = native_openblas()
    runs = [("OpenBLAS Sandybridge kernels", {"OPENBLAS_CORETYPE": "Sandybridge"})]
    if native != "Haswell":
        runs.append(("OpenBLAS Haswell kernels", {"OPENBLAS_CORETYPE": "Haswell"}))
    runs.append(("TensorFlow and BLAS on one thread", SINGLE_THREAD))
    print(f"native OpenBLAS kernels here: {native or 'unknown'}", flush=True)
    failed = []
    for label, extra in runs:
        setting = " ".join(f"{k}={v}" for k, v in extra.items())
        print(f"\n=== {label}: {setting}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(argv, env={**os.environ, **extra}).returncode
        print(f"=== {label}: {'passed' if code == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(label)
    if failed:
        print(f"\nfailed under: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
