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
environment variable; the Keras names load on first use. It does make
``keras.models.load_model`` find the package's Keras classes
(``StandardDropout``, ``StandardMultiHeadAttention``, ``ScaledInitializer``,
``EquivariantMaxNorm``, ``ScaledLearningRateSchedule``), which Keras registers
when their modules run: at once if Keras is already imported, otherwise right
after Keras's own import (a one-shot import hook), so a model converted to the
paper's dropout loads after a plain ``import dropout_lib``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
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


def _register_keras_classes() -> None:
    """Import the modules that register the package's Keras classes (Keras is loaded).

    ``dropout_lib.layers`` imports ``dropout_lib.conversion``, which imports
    ``dropout_lib.mapping``, at their ends (each a module whose classes carry
    ``keras.saving.register_keras_serializable``); if one of them is being
    imported right now (it imported Keras), it completes the chain itself.
    """
    importlib.import_module("dropout_lib.layers")


class _AfterKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs :func:`_register_keras_classes` right after ``keras`` is first imported.

    It finds ``keras``'s real spec with the other finders, keeps its loader
    and executes the module with it, then registers; it removes itself
    first, so it acts once and never on another module.
    """

    def __init__(self) -> None:
        self._loader: Any = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._loader
        module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        try:
            _register_keras_classes()
        except Exception as error:  # noqa: BLE001 - keras itself imported; say what did not
            warnings.warn(
                f"dropout_lib could not register its Keras classes ({error!r}): import "
                "dropout_lib.conversion before keras.models.load_model.",
                stacklevel=2,
            )


if "keras" in sys.modules:
    _register_keras_classes()
elif not any(isinstance(finder, _AfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterKeras())


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
