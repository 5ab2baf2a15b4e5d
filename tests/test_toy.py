"""Tests of dropout_lib.book.toy, the shared problem of chapters 4-6, and of plotting.gap_panels."""

import numpy as np
import pytest

from dropout_lib.book.toy import KEEP_PROBS, SIZES, toy_problem
from dropout_lib.exact import mlp
from dropout_lib.exact.optimizers import SGD


def test_toy_problem_shapes_and_stream_order():
    toy = toy_problem(6, n_test=5)
    assert toy.sizes == SIZES and toy.keep_probs == KEEP_PROBS
    assert toy.consumers == {"W1": 0.8, "W3": 0.6}
    assert len(toy.batches) == toy.n_batches and len(toy.masks) == 6
    assert toy.x_test.shape == (5, 8) and toy.y_test.shape == (5, 4)
    x, y = toy.batches[0]
    assert np.array_equal(y, toy.labels(x))
    # the first steps' masks do not depend on how many steps are drawn
    longer = toy_problem(10)
    for a, b in zip(toy.masks, longer.masks[:6]):
        assert all((u is None and v is None) or np.array_equal(u, v) for u, v in zip(a, b))
    assert all(np.array_equal(toy.params_inv[n], longer.params_inv[n]) for n in toy.params_inv)


def test_toy_matches_a_hand_built_setup():
    # the set-up chapters 4-6 used to type out, draw by draw
    rng = np.random.default_rng(2014)
    params = mlp.init_params(SIZES, rng, bias_scale=0.1)
    teacher = rng.normal(size=(SIZES[0], SIZES[-1]))
    xs = rng.normal(size=(8, 32, SIZES[0]))
    masks = [mlp.sample_masks(SIZES, KEEP_PROBS, 32, rng) for _ in range(3)]
    toy = toy_problem(3)
    assert np.array_equal(toy.teacher, teacher) and np.array_equal(toy.batches[7][0], xs[7])
    assert np.array_equal(toy.params_std["W3"], params["W3"] / 0.6)
    assert np.array_equal(toy.masks[2][2], masks[2][2])


def test_frozen_and_validated():
    toy = toy_problem(1)
    with pytest.raises(AttributeError):
        toy.n_steps = 2
    with pytest.raises(ValueError):
        toy_problem(-1)


def test_mapped_run_matches_and_wrong_map_does_not():
    toy = toy_problem(20)
    mapped = toy.compare(SGD(0.05), SGD(toy.per_parameter(0.05, -2)))
    assert mapped.worst <= 1e-13
    wrong = toy.control_gaps(mapped, SGD(toy.per_parameter(0.05, -1)))
    assert wrong[-1] > 1e-3 and wrong[0] <= 1e-15  # the start: W / p mapped back by p
    many = toy.compare_many(SGD(0.05), {"mapped": SGD(toy.per_parameter(0.05, -2)), "same": SGD(0.05)})
    assert many["mapped"].worst <= 1e-13 < 1e-3 < many["same"].final


def test_mask_stream_is_independent_and_train_uses_it():
    toy = toy_problem(5)
    other = toy.mask_stream(1)
    assert len(other) == 5 and not np.array_equal(other[0][0], toy.masks[0][0])
    a = toy.train("inverted", SGD(0.05), masks=other, record=False)
    b = toy.train("inverted", SGD(0.05), record=False)
    assert a.losses.shape == (5,) and not np.array_equal(a.params["W1"], b.params["W1"])
    loss, grads = toy.loss_and_grads("standard", 1)
    assert np.isfinite(loss) and set(grads) == set(toy.params_inv)


def test_gap_panels_draws_one_panel_per_entry():
    import matplotlib

    matplotlib.use("Agg")
    from dropout_lib.book.plotting import gap_panels

    gaps = np.array([0.0, 1e-16, 2e-16, 3e-16])
    fig, axes = gap_panels(
        {
            "a": [("x", gaps, "mapped", "-")],
            "b": [("y", gaps, "control", "--")],
            "c": [("z", gaps, "#123456", ":")],
        },
        ncols=2,
        nrows=2,
        tolerance=1e-12,
        guides={"u": np.ones(3)},
    )
    assert axes.shape == (2, 2) and not axes[1, 1].get_visible()
    assert len(axes[0, 0].get_lines()) == 3  # the gaps, one guide, the tolerance
    fig, ax = gap_panels({"": [("x", gaps, "mapped", "-")]}, steps=np.arange(4), xlog=False)
    assert ax.get_xscale() == "linear"


def test_gap_panels_labels_do_not_overlap_and_legend_is_legible():
    """Fig. 5.1 (issue 21): with two rows, one y label for the figure, none per panel."""
    import matplotlib

    matplotlib.use("Agg")
    from dropout_lib.book.plotting import LEGEND_SIZE, gap_panels

    gaps = np.array([0.0, 1e-16, 2e-16])
    panels = {t: [("x", gaps, "mapped", "-")] for t in "abcdef"}
    fig, axes = gap_panels(panels, ncols=3, nrows=2, ylabel="relative gap")
    assert fig.get_supylabel() == "relative gap"
    assert all(ax.get_ylabel() == "" for ax in axes.flat)
    assert [ax.get_xlabel() for ax in axes[-1]] == ["step $t$"] * 3
    (legend,) = fig.legends
    assert all(t.get_fontsize() == LEGEND_SIZE >= 9 for t in legend.get_texts())
    fig, ax = gap_panels({"": [("x", gaps, "mapped", "-")]}, ylabel="gap")
    assert ax.get_ylabel() == "gap"


def test_start_draws_and_seed_are_the_problems_own():
    """Chapter 6 redraws the start with sigma/p from the toy's own seed (issue 18, section 7)."""
    for seed in (2014, 7):
        toy = toy_problem(2, seed=seed, keep_probs=(0.7, 1.0, 0.6))
        he = [np.sqrt(2.0 / n) for n in toy.sizes[:-1]]
        scaled = toy.start_draws([s / p for s, p in zip(he, toy.keep_probs)])
        assert toy.seed == seed
        for name, w in toy.params_std.items():
            np.testing.assert_allclose(scaled[name], w, rtol=4 * 2.0**-53, atol=0)


def test_disagreement_counts_differing_predictions():
    toy = toy_problem(2, n_test=50)
    assert toy.disagreement(toy.params_inv, "inverted", toy.params_std, "standard") == 0.0
    other = {n: -w for n, w in toy.params_inv.items()}
    assert 0 < toy.disagreement(toy.params_inv, "inverted", other, "inverted") <= 1


def test_keras_nesterov_form_is_dropout_libs_keras_form():
    pytest.importorskip("keras")
    from dropout_lib.book.keras_toy import sgd_forms_against_keras

    gaps = sgd_forms_against_keras(steps=5)
    assert gaps["keras"] <= 5 * 4 * 2.0**-53 < 1e-3 < min(gaps["paper"], gaps["heavy-ball"])


def test_against_reruns_and_unmapped_epsilon_on_a_short_run():
    """Chapter 5's noise floor and forgotten epsilon, on 20 steps."""
    from dropout_lib.book.toy import against_reruns, unmapped_epsilon
    from dropout_lib.exact.optimizers import Adam

    toy = toy_problem(20, n_test=50)
    r = against_reruns(toy, (Adam, "keras", 0.01, 1e-2), 2)
    assert r["same"] > 1e-3 and len(r["reruns"]) == len(r["rerun_disagree"]) == 2
    assert all(d > 0 for d in r["reruns"]) and 0 <= r["disagree"] <= 1
    assert r["floor"] == np.mean(r["reruns"]) and r["floor_disagree"] == np.mean(r["rerun_disagree"])
    e = unmapped_epsilon(toy, (Adam, "keras", 0.01, 1e-2), eps=1e-7)
    assert e["gaps"].shape == (21,) and e["gaps"][0] < 1e-15 < 1e-12 < e["gaps"][1] < 0.1
    assert e["flip"] is None or 0 <= e["flip"] < 20
    assert e["perturbed"] > 0
    with pytest.raises(ValueError, match="held-out"):
        against_reruns(toy_problem(2), (Adam, "keras", 0.01, 1e-2), 1)


def test_kink_margin_is_the_smallest_hidden_pre_activation():
    from dropout_lib.exact import mlp

    toy = toy_problem(3, seed=1, keep_probs=(0.5, 1.0, 0.5))
    x, _ = toy.batches[0]
    _, cache = mlp.forward(
        toy.params_inv, x, variant="inverted", keep_probs=toy.keep_probs, masks=toy.masks[0], training=True
    )
    assert 0 < toy.kink_margin(0) <= min(np.abs(z).min() for z in cache["z"][:-1])
