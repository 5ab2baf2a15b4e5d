"""Theory helpers: the exact quantities the book's theorems are about.

Not part of the public API. Moments of a dropped unit, the ensemble of
sub-networks, the structures where the equivalence ends, the variance shift
that BatchNorm sees, and the Monte Carlo statistics that test them.

moments
    Exact mean and variance of a unit's output under the two variants.
ensemble
    Every sub-network, enumerated exactly (AM, NWGM, weight scaling, MC).
limits
    Where the equivalence between the two dropout variants ends.
homogeneous
    The global map for global-norm clipping on bias-free ReLU nets.
stats
    Monte Carlo summaries with standard errors, and the z-scores that test them.
variance_shift
    The train/test variance shift of a unit after dropout, and BatchNorm.
"""
