"""dropout_lib: every implementation the book runs.

Notation used throughout (the 2014 paper's):

* ``keep_prob`` is ``p``, the probability that a unit is *kept*;
* Keras's ``rate`` is the probability that a unit is *dropped*, ``rate = 1 - p``.

Every public function says which of the two it takes.

Modules
-------
adaptive
    The dropout map for adaptive optimizers (Adam, RMSprop, Adagrad) on the numpy nets.
clipping
    Gradient clipping in front of an optimizer, in Keras's three forms, recording when it acts.
compare
    Compare an inverted-dropout run with a standard-dropout run, step by step, under a map.
conversion
    Convert a Keras model's weights, penalties, constraints, initialisers between variants.
datasets
    Real data the book trains on: scikit-learn's bundled handwritten digits.
divergence
    Where two training runs part: hidden units that are active in one run and not in the other.
ensemble
    The ensemble view of dropout: every sub-network, enumerated exactly.
ensemble_checks
    How the ensemble chapter decides: twins, rounding bounds, convergence rates.
experiment
    The four-way training run on real data: Keras's dropout, the paper's (mapped and not), none.
glued
    The numbers an executed chapter glued, read back so that another chapter can check them.
keras_probe
    What the installed Keras executes when a ``Dropout`` layer runs (result #12).
keras_trajectories
    Record the weights Keras's ``model.fit`` visits, and compare two such trajectories.
layers
    The paper's dropout as a Keras layer: a mask-for-mask twin of ``keras.layers.Dropout``.
limits
    Where the equivalence between the two dropout variants ends.
mapping
    Map a Keras optimizer between inverted and standard dropout, exactly.
mlp
    An exact float64 numpy MLP with hand-written backprop, for both dropout variants.
moments
    Exact mean and variance of a unit's output under the two dropout variants.
optimizers
    numpy optimizers with per-parameter hyperparameters, in their papers' and Keras's forms.
plotting
    The book's plotting style: one look for every figure.
reference
    numpy reference implementations of the two dropout variants.
stats
    Monte Carlo summaries with standard errors, and the z-scores that test them.
training
    A training loop for the numpy MLP on given batches and given masks.
twins
    Twin Keras models: the same net with Keras's dropout and with the paper's, on shared masks.
variance_shift
    The train/test variance shift of a unit after dropout, and what BatchNorm does with it.
"""

import os as _os

# TensorFlow prints absl/oneDNN banners to stderr on import; notebooks store their
# outputs, so silence it before anything imports TensorFlow. Both are needed.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
