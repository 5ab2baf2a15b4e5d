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


# --------------------------------------------------------------------------- #
# a value near a rounding boundary: refused while storing, a warning otherwise
# --------------------------------------------------------------------------- #


@pytest.fixture
def storing(monkeypatch):
    monkeypatch.setenv(publish.STORING, "1")


@pytest.fixture
def not_storing(monkeypatch):
    monkeypatch.delenv(publish.STORING, raising=False)


def test_storing_refuses_a_value_near_a_boundary(storing, monkeypatch):
    glued = _captured(monkeypatch, IPython.display, "display", lambda: None)
    with pytest.raises(ValueError, match="rounding boundary"):
        publish.glue_rounded("x", 0.12345, 4, 1e-3)
    with pytest.raises(ValueError, match="rounding boundary"):
        publish.stable_text(0.12345, 4, 1e-3)
    with pytest.raises(ValueError, match="multiple of"):
        publish.stable_floor(27.0, 0, 1e-9)
    assert glued == []
    # twice the noise while storing: 0.12337 +- 2.5e-5 crosses 0.12335; +- 1.2e-5 does not
    with pytest.raises(ValueError):
        publish.round_stable(0.12337, 4, 1e-4)


def test_outside_storing_a_value_near_a_boundary_warns_and_keeps_fewer_digits(not_storing, monkeypatch):
    assert publish.round_stable(0.12337, 4, 1e-4) == 0.1234  # margin noise, not 2 noise
    with pytest.warns(publish.UnstableRoundingWarning, match="2 significant digit") as caught:
        assert publish.round_stable(0.12345, 4, 1e-3) == 0.12
    assert caught[0].filename == __file__  # the caller's line, not publish.py's
    with pytest.warns(publish.UnstableRoundingWarning):
        assert publish.stable_text(0.12345, 4, 1e-3) == "0.12"
    with pytest.warns(publish.UnstableRoundingWarning, match="2 significant digit"):
        out = _captured(
            monkeypatch, IPython.display, "display", lambda: publish.glue_rounded("x", 0.99951, 4, 1e-3)
        )
    # 0.99951 +- 1e-3 (0.99851 .. 1.00051) straddles a boundary at 4 and 3 digits; at 2, all is 1.0
    ((bundle, _, metadata),) = out
    assert bundle[publish.GLUE_PREFIX + "text/plain"] == "1.0" and metadata["scrapbook"]["name"] == "x"


@pytest.mark.parametrize("value", [27.0, 26.9999999999, 1.33, -0.5, 1e-7])
@pytest.mark.parametrize("decimals", [0, 2])
def test_outside_storing_floor_and_ceil_stay_bounds(not_storing, value, decimals):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", publish.UnstableRoundingWarning)
        low = publish.stable_floor(value, decimals, 1e-9)
        high = publish.stable_ceil(value, decimals, 1e-9)
    assert low <= value <= high
