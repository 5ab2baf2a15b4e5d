"""The numbers the torch checks use, in a module without torch (tests/test_recipe.py reads them).

A mapped run and its source run compute the same real numbers (the book's
theorems); in float64 they round differently (a division by the keep
probability sits in another place), by a few units of u = 2**-53 per
operation. If each of the T steps added a few u and nothing cancelled, the
relative gap after T steps would be a few times T u; MAP_TOL = 30 T u is the
book's rule for a trajectory (chapters 10 and 11; appendix/tolerances.md): an
estimate with room for the dynamics to amplify rounding, not a proved bound
(rounding propagates through the update's Jacobian). A wrong map changes a
hyperparameter by a factor p or p**2 with p <= 0.8, a relative change of 20 %
or more, and must leave the runs at least CONTROL_GAP apart: 1e-3, more than
10**9 times MAP_TOL. MIN_MOVED: every source run moved its consuming kernels
by at least 5 % of their norm, so a small gap cannot come from a net that did
not train.
"""

U = 2.0**-53  # float64 unit roundoff
STEPS = 60  # training steps per run
MAP_TOL = 30 * STEPS * U  # 30 T u = 2.0e-13
CONTROL_GAP = 1e-3
MIN_MOVED = 0.05
