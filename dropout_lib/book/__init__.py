"""The book's own machinery: what the chapters need to run, check and show.

Not part of the public API. Glued numbers (how a stored output stays the same
on every machine), plotting style, the real data set, the real-data
experiment, probes of the installed Keras, and Keras training trajectories.

publish
    Glue a number into the book in a form every correct machine reproduces.
glued
    The numbers an executed chapter glued, read back for another chapter.
plotting
    The book's plotting style: one look for every figure.
datasets
    scikit-learn's bundled handwritten digits.
experiment
    The four-way training run on real data.
keras_probe
    What the installed Keras executes when a ``Dropout`` layer runs.
keras_trajectories
    Record the weights Keras's ``model.fit`` visits, and compare trajectories.
ensemble_checks
    How the ensemble chapter decides: twins, rounding bounds, convergence rates.
limits_checks
    The experiments of the chapter on where the equivalence ends.
"""
