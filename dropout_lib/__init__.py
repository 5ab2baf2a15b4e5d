"""dropout_lib: port a model between the paper's dropout and Keras's, exactly.

Notation used throughout (the 2014 paper's):

* ``keep_prob`` is ``p``, the probability that a unit is *kept*;
* Keras's ``rate`` is the probability that a unit is *dropped*, ``rate = 1 - p``.

Every public function says which of the two it takes.

Public API
----------
``import dropout_lib as dl`` gives:

convert_model
    One call ports a Keras model and its optimizer to the other dropout
    variant: ``dl.convert_model(model, to="inverted", optimizer=opt)`` returns
    ``.model`` (same function, consuming kernels rescaled, their regularisers,
    constraints and initialisers mapped) and ``.optimizer`` (a per-variable
    optimizer that reproduces ``model``'s training), or raises
    ``NotConvertibleError`` naming the layer and the reason.
StandardDropout
    The paper's dropout as a Keras layer (``m * x`` in training, ``(1 - rate) * x``
    at inference), a mask-for-mask twin of ``keras.layers.Dropout(rate)``.
to_standard, to_inverted
    The optimizer for the kernels that consume dropped units ONLY, mapped
    between the two variants (learning rate, epsilon, weight decay, clipping);
    compiling a whole model with it is wrong: use ``convert_model``.
NoExactMapError, NotConvertibleError
    Raised instead of returning an approximation.
verify
    Trains copies of a model and of its conversion in step and reports the
    weight gap per step beside a one-ulp control: exactness made visible on
    a model whose float64 training is chaotic.

The public modules are :mod:`dropout_lib.layers`, :mod:`dropout_lib.mapping`,
:mod:`dropout_lib.conversion`, :mod:`dropout_lib.twins`,
:mod:`dropout_lib.reference` (numpy reference dropouts) and
:mod:`dropout_lib.validation` (argument checks and the two errors). Everything else is
the book's: :mod:`dropout_lib.exact` (the float64 numpy harness behind the
proofs), :mod:`dropout_lib.theory` (moments, ensembles, limits, statistics)
and :mod:`dropout_lib.book` (the chapters' machinery).

Importing the package imports neither Keras nor TensorFlow, and changes no
environment variable; the Keras names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_PUBLIC = {
    "StandardDropout": "dropout_lib.layers",
    "to_standard": "dropout_lib.mapping",
    "to_inverted": "dropout_lib.mapping",
    "NoExactMapError": "dropout_lib.validation",
    "convert_model": "dropout_lib.twins",
    "NotConvertibleError": "dropout_lib.validation",
    "verify": "dropout_lib.twins",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Load a public Keras-backed name on first use (PEP 562)."""
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'dropout_lib' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
