"""dropout_lib: every implementation the book runs.

Notation used throughout (the 2014 paper's):

* ``keep_prob`` is ``p``, the probability that a unit is *kept*;
* Keras's ``rate`` is the probability that a unit is *dropped*, ``rate = 1 - p``.

Every public function says which of the two it takes.

Modules
-------
reference
    numpy reference implementations of standard (the paper's) and inverted
    (Keras's) dropout, and mask sampling.
stats
    Monte Carlo summaries with standard errors.
layers
    ``StandardDropout``, the paper's variant as a Keras layer, a mask-for-mask
    twin of ``keras.layers.Dropout``.
"""

import os as _os

# TensorFlow prints absl/oneDNN banners to stderr on import; notebooks store their
# outputs, so silence it before anything imports TensorFlow. Both are needed.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
