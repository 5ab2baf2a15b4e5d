"""dropout_lib.book.publish: what a glue call stores."""

from __future__ import annotations

import IPython.display
import numpy as np
import pytest
from myst_nb.ext import glue as myst_glue

from dropout_lib.book import publish


def _captured(monkeypatch, target, attribute, call):
    outputs = []
    monkeypatch.setattr(
        target, attribute, lambda bundle, raw, metadata: outputs.append((bundle, raw, metadata))
    )
    call()
    return outputs


@pytest.mark.parametrize("value", [0.1, 2.0**-53, 3, True, "8-16-16-4", np.float64(0.7), np.int64(12), None])
def test_glue_displays_what_myst_nb_glue_displays(monkeypatch, value):
    # publish writes myst-nb's glue protocol out (importing it costs ~3 s a kernel):
    # the stored output must be the one myst_nb.glue(display=False) stores.
    ours = _captured(monkeypatch, IPython.display, "display", lambda: publish.glue_exact("x", value))
    theirs = _captured(
        monkeypatch, myst_glue, "ipy_display", lambda: myst_glue.glue("x", value, display=False)
    )
    assert ours == theirs
    assert publish.GLUE_PREFIX == myst_glue.GLUE_PREFIX
