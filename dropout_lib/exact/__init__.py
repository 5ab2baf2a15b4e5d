"""The exact float64 numpy harness behind the proofs.

Not part of the public API (``import dropout_lib as dl`` is): these modules
let the book train both dropout variants on identical randomness and compare
them step by step, with hand-written backprop and optimizers whose every
operation is visible.

mlp
    An exact float64 numpy MLP with hand-written backprop, for both variants.
optimizers
    numpy optimizers with per-parameter hyperparameters, paper and Keras forms.
training
    A training loop for the numpy MLP on given batches and given masks.
compare
    Compare an inverted-dropout run with a standard-dropout run under a map.
adaptive
    The dropout map for adaptive optimizers (Adam, RMSprop, Adagrad).
clipping
    Gradient clipping in front of an optimizer, in Keras's three forms.
divergence
    Where two training runs part: hidden units active in one run only.
"""
