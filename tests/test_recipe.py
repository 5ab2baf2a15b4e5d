"""recipe.md: its tables equal what dropout_lib computes; its claims are checked here.

* The tables on the page are exactly ``dropout_lib.recipe``'s output,
  which is computed by the library's maps on real Keras optimizers (and
  ``dropout_lib.pytorch``), and every factor agrees with the book's theorems.
* Dropout(rate) followed by Rescaling(1 - rate) is the paper's dropout
  (thm-rescaling-paper, prop-rescaling-rounding): against StandardDropout with
  the same seed and against the numpy reference, float32 and float64, and in
  training with ``model.fit``.
* The page's Keras example runs, and the net it builds trains as the paper's.

Tolerance for the ``model.fit`` comparisons (float64): in exact arithmetic the
two runs are equal; each step rounds differently by a few units of
u = 2**-53 per operation, so after T = 30 steps ~T u = 3e-15 if nothing
cancels. FIT_TOL = 1e-12 leaves a factor ~300 for the dynamics to amplify
rounding; the controls (an unmapped hyperparameter) end at least 1e-3 apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dropout_lib import recipe, reference

PAGE = Path(__file__).resolve().parents[1] / "recipe.md"
FIT_TOL, CONTROL_GAP, FIT_STEPS = 1e-12, 1e-3, 30


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _table(name: str, page: str = "recipe.md") -> str:
    text = (PAGE.parent / page).read_text(encoding="utf-8")
    m = re.search(rf"<!-- recipe-table: {name} -->\n(.*?)\n<!-- end recipe-table -->", text, re.S)
    assert m, f"{page} has no table {name!r} between its markers"
    return m.group(1)


# ------------------------------------------------------------------ the tables


@pytest.mark.parametrize("direction", ["to_inverted", "to_standard"])
def test_page_tables_are_the_librarys(direction):
    assert _table(direction) == recipe.table_markdown(direction), (
        "recipe.md's table differs from dropout_lib.recipe; regenerate it with `python -m dropout_lib.recipe`"
    )


def test_page_other_table_is_the_librarys():
    assert _table("other") == recipe.other_table_markdown()


def test_intro_tables_are_the_librarys():
    """The first page's port (both directions, worked numbers) and the MNIST port."""
    assert _table("intro", "intro.md") == recipe.intro_table_markdown()
    assert _table("mnist", "intro.md") == recipe.mnist_port_markdown()
    intro = (PAGE.parent / "intro.md").read_text(encoding="utf-8")
    # paper -> Keras comes first on the page, before the short answer
    assert intro.index("recipe-table: intro") < intro.index("## The short answer")
    # the recipe the prose names is the one the table was computed from
    r = recipe.MNIST_RECIPE
    for page in (intro, _page()):
        text = " ".join(page.split())
        assert "-".join(map(str, r["widths"])) in text
        assert f"learning rate {r['learning_rate']:g}" in text and f"momentum {r['momentum']:g}" in text
        assert f"`L2({r['l2']:.0e})`".replace("e-0", "e-") in text  # `L2(1e-4)`


def test_tables_fit_a_page():
    """Few, short columns (issue 21: the 7-column table was clipped at 1280 px):
    at most 5 columns, and no cell of the mapped rows longer than the hyperparameter's name."""
    for name in ("to_inverted", "to_standard", "mnist"):
        head = _table(name).splitlines()[0]
        assert head.count("|") - 1 <= 5, f"{name}: {head}"
    assert _table("other").splitlines()[0].count("|") - 1 <= 2


def test_page_mnist_port_is_the_librarys_and_the_theorems():
    """The worked port: convert_model's result, per layer, equals the theorems' values:
    kernel times p (thm-same-function), SGD learning rate eta p^2 (thm-sgd-map), L2 factor
    lambda / p^2 (thm-l2-map), momentum unchanged; biases keep eta. Keras stores rates and
    L2 factors in float32 (relative 2**-24); the kernel factor is a ratio of float32 norms."""
    assert _table("mnist") == recipe.mnist_port_markdown()
    r = recipe.MNIST_RECIPE
    ported = recipe.mnist_port()
    keeps = [layer.keep_prob for layer in ported[:-1]]
    assert keeps == list(r["keep_probs"]), "the graph walk found other keep probabilities"
    for layer in ported[:-1]:
        p = layer.keep_prob
        assert layer.kernel_scale == pytest.approx(p, rel=1e-6)
        assert layer.learning_rate == pytest.approx(r["learning_rate"] * p**2, rel=2.0**-23)
        assert layer.l2 == pytest.approx(r["l2"] / p**2, rel=2.0**-23)
        assert layer.momentum == pytest.approx(r["momentum"], rel=2.0**-23)
    bias = ported[-1]
    assert bias.learning_rate == pytest.approx(r["learning_rate"], rel=2.0**-23) and bias.l2 is None
    assert "Momentum stays 0.9 on every variable" in _page() and r["momentum"] == 0.9


def test_page_pytorch_table_is_the_librarys():
    assert _table("pytorch") == recipe.torch_table_markdown()


# The exponent j of p^j paper -> Keras, from the book's theorems (thm-same-function,
# thm-sgd-map, thm-adaptive-map, thm-l2-map, thm-decay-map, thm-max-norm-map,
# prop-init-map, prop-clip-map, prop-layernorm-map); None: no map (prop-global-clip,
# thm-shared-no-map).
THEOREMS = {
    "weights": 1,
    "initialiser scale": 1,
    "VarianceScaling": 2,
    "SGD `learning_rate`": 2,
    "SGD `weight_decay`": -2,
    "Adam, AdamW `learning_rate`": 1,
    "Adam, AdamW `epsilon`": -1,
    "Adam, AdamW `weight_decay`": -1,
    "RMSprop `learning_rate`": 1,
    "RMSprop `epsilon`": -2,
    "Adagrad `learning_rate`": 1,
    "Adagrad `epsilon`": -2,
    "Adagrad `initial_accumulator": -2,
    "L2": -2,
    "L1": -1,
    "max-norm": 1,
    "`clipnorm`": -1,
    "`clipvalue`": -1,
    "`momentum`": 0,
    "`global_clipnorm`": None,
    "`LayerNormalization": -2,  # prop-layernorm-map: epsilon / p^2 paper -> Keras
    # thm-bn-same-network: epsilon / p^2, moving variance (and its initial value) / p^2,
    # moving mean / p paper -> Keras (to_inverted: t = 1/p, epsilon t^2, mean t, variance t^2)
    "`BatchNormalization(epsilon)`": -2,
    "its moving variance": -2,
    "its moving mean": -1,
    "a kernel shared": None,
}


def test_factors_are_the_theorems():
    to_inv, to_std = recipe.rows("to_inverted"), recipe.rows("to_standard")
    assert len(to_inv) == len(THEOREMS)
    for a, b in zip(to_inv, to_std):
        (key,) = [k for k in THEOREMS if a.what.startswith(k) or k in a.what]
        assert a.power == THEOREMS[key], f"{a.what}: p^{a.power}, theorem p^{THEOREMS[key]}"
        assert b.power == (None if a.power is None else -a.power), f"{a.what}: directions disagree"
        for p, m in zip(recipe.KEEP_PROBS, a.mapped):
            if a.power is not None:  # float32 learning-rate variables: 1e-7 relative
                assert m == pytest.approx(a.example * p**a.power, rel=1e-6)


VALUE = re.compile(r"<!-- value: (\w+) -->(.*?)<!-- end value -->")


@pytest.mark.parametrize("page", ["intro.md", "recipe.md"])
def test_page_values_are_the_librarys(page):
    """Every number the prose marks as ``<!-- value: NAME -->`` is dropout_lib.recipe.page_values'
    NAME (regenerate with `python -m dropout_lib.recipe`); a marker never starts a line
    (markdown would read the line as a raw HTML block)."""
    text = (PAGE.parent / page).read_text(encoding="utf-8")
    values = recipe.page_values()
    for name, shown in VALUE.findall(text):
        assert shown == values[name], f"{page}: {name} shows {shown!r}, the library gives {values[name]!r}"
    assert not re.search(r"^\s*<!-- value:", text, re.M), f"{page}: a value marker starts a line"
    if page == "recipe.md":
        assert set(values) == {name for name, _ in VALUE.findall(text)}, "a value the page no longer shows"


def test_page_values_are_the_checks():
    """The values themselves: the rounding bounds, the torch checks' numbers (tests_pytorch/,
    make test-pytorch, read from a module without torch), the frameworks' defaults."""
    import keras

    v, tp = recipe.page_values(), recipe._torch_tolerances()
    assert v["gamma3"] == f"{recipe.rescaling_bound('float64'):.2e}" == "3.33e-16"
    assert v["gamma5"] == f"{recipe.rescaling_bound('float32'):.2e}" == "2.98e-07"
    assert v["torch_steps"] == str(tp.STEPS) and tp.MAP_TOL == 30 * tp.STEPS * 2.0**-53
    assert (
        float(v["torch_tol"]) == pytest.approx(tp.MAP_TOL, rel=0.05)
        and float(v["torch_gap"]) == tp.CONTROL_GAP
    )
    assert v["keras_version"] == keras.__version__
    assert float(v["keras_adagrad0"]) == keras.optimizers.Adagrad().initial_accumulator_value
    page = " ".join(_page().split())
    assert "$30\\,T u$ for $T$ =" in page
    # torch's clip_grad_norm_ constant, typed in the page's formula: the torch check cancels it
    # (tests_pytorch/test_torch_maps.py hands torch ||g|| - 1e-6 and finds the runs equal)
    torch_test = (Path(__file__).parents[1] / "tests_pytorch" / "test_torch_maps.py").read_text()
    assert "torch.linalg.norm(param.grad) - 1e-6)" in torch_test and "+ 10^{-6}), 1)$" in page


def test_intro_facts():
    """What intro.md states that no chapter glues: the release that switched Keras to inverted
    dropout (chapter 2 states it with its sources), and the answer's address."""
    import json

    intro = " ".join((PAGE.parent / "intro.md").read_text(encoding="utf-8").split())
    cells = json.loads((PAGE.parent / "chapters/02_what_keras_executes.ipynb").read_text(encoding="utf-8"))
    ch2 = " ".join(
        " ".join("".join(c["source"]) for c in cells["cells"] if c["cell_type"] == "markdown").split()
    )
    assert "first released in Keras 0.3.0" in ch2
    assert "ran the paper's variant before release 0.3.0" in intro
    assert "https://stackoverflow.com/questions/38592943/" in intro
    # the visible quote and the verbatim one both mark the answer's "automatically" [sic]
    assert intro.count("set your learning rate automatically [sic] -") == 2


# --------------------------------------------------- Dropout + Rescaling


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rate", [0.2, 0.5, 0.75])
def test_rescaling_pair_is_the_papers_dropout(dtype, rate):
    import keras

    from dropout_lib.layers import StandardDropout

    x = np.random.default_rng(10).normal(size=(64, 256)).astype(dtype)
    pair = [
        keras.layers.Dropout(rate, seed=7, dtype=dtype),
        keras.layers.Rescaling(np.float64(1.0 - rate), dtype=dtype),
    ]
    std = StandardDropout(rate, seed=7, dtype=dtype)
    mask = keras.ops.convert_to_numpy(StandardDropout(rate, seed=7, dtype=dtype).keep_mask(x))
    y_pair = keras.ops.convert_to_numpy(pair[1](pair[0](x, training=True)))
    y_std = keras.ops.convert_to_numpy(std(x, training=True))
    y_ref = reference.standard_dropout(x, 1.0 - rate, training=True, mask=mask)
    kept = mask == 1
    assert 0 < kept.mean() < 1
    assert np.array_equal(y_std, y_ref), "StandardDropout differs from the numpy reference"
    assert np.array_equal(y_pair == 0, ~kept), "the pair drops other units than StandardDropout"
    err = np.abs(y_pair - y_ref)
    assert np.all(err <= recipe.rescaling_bound(dtype) * np.abs(y_ref)), err.max()
    if rate in (0.5, 0.75):  # q = 1/2, 1/4: every operation exact
        assert np.array_equal(y_pair, y_ref)
    else:  # the bound is needed: fl(fl(x a) q) != x for some kept unit
        assert np.any(y_pair[kept] != x[kept])
    # test time: the same product fl(x q), bit for bit
    t_pair = keras.ops.convert_to_numpy(pair[1](pair[0](x, training=False)))
    t_std = keras.ops.convert_to_numpy(std(x, training=False))
    t_ref = reference.standard_dropout(x, 1.0 - rate, training=False)
    assert np.array_equal(t_pair, t_std) and np.array_equal(t_pair, t_ref)
    assert t_pair.dtype == np.dtype(dtype)


def test_rescaling_python_float_scale_is_float32_in_a_float64_model():
    """The trap the page warns of: Rescaling(0.8) multiplies by float32(0.8) in float64."""
    import keras

    x = np.random.default_rng(13).normal(size=(8, 8))
    trap = keras.ops.convert_to_numpy(keras.layers.Rescaling(0.8, dtype="float64")(x))
    right = keras.ops.convert_to_numpy(keras.layers.Rescaling(np.float64(0.8), dtype="float64")(x))
    assert np.array_equal(right, x * 0.8)
    assert np.allclose(trap, x * float(np.float32(0.8)), rtol=2.0**-52, atol=0)
    rel = np.abs(trap - x * 0.8) / np.abs(x * 0.8)
    assert rel.min() > 1e4 * recipe.rescaling_bound("float64")  # not rounding: ~1.5e-8
    values = recipe.page_values()
    assert values["f32_08"] == f"{float(np.float32(0.8)):.15f}" == "0.800000011920929"
    assert float(values["f32_08_rel"]) == pytest.approx(rel.min(), rel=0.05)


def _fit(model, opt, x, y):
    import keras

    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=len(x) // FIT_STEPS, epochs=1, shuffle=False, verbose=0)
    return [np.array(w) for w in model.get_weights()]


def _gap(a, b, scales=None):
    """max over weights of ||s b - a|| / ||a|| (the absolute gap where a = 0, as compare does)."""
    scales = scales or [1.0] * len(a)
    gaps = []
    for wa, wb, s in zip(a, b, scales):
        diff, ref = float(np.linalg.norm(s * wb - wa)), float(np.linalg.norm(wa))
        gaps.append(diff / ref if ref > 0 else diff)
    return max(gaps)


def test_rescaling_pair_trains_as_the_paper_with_its_hyperparameters(keras_float64):
    import keras

    from dropout_lib.layers import StandardDropout

    rate = 0.2
    rng = np.random.default_rng(11)
    x = rng.normal(size=(FIT_STEPS * 16, 12))
    y = rng.integers(0, 4, size=len(x))

    def net(*dropout):
        return keras.Sequential(
            [keras.Input((12,)), keras.layers.Dense(16, activation="relu"), *dropout, keras.layers.Dense(4)]
        )

    paper = net(StandardDropout(rate, seed=3))
    pair = net(*recipe.paper_dropout(rate, seed=3))
    plain = net(keras.layers.Dropout(rate, seed=3))
    start = paper.get_weights()
    pair.set_weights(start)
    plain.set_weights(start)
    sgd = dict(learning_rate=0.05, momentum=0.9)
    w_paper = _fit(paper, keras.optimizers.SGD(**sgd), x, y)
    w_pair = _fit(pair, keras.optimizers.SGD(**sgd), x, y)
    w_plain = _fit(plain, keras.optimizers.SGD(**sgd), x, y)
    assert _gap(start[::2], w_paper[::2]) > 0.05, "the net hardly trained"  # kernels
    assert _gap(w_paper, w_pair) <= FIT_TOL, _gap(w_paper, w_pair)
    assert _gap(w_paper, w_plain) >= CONTROL_GAP, "Dropout alone matched the paper's run"


# ------------------------------------------------------- the Keras example


def _example_block() -> str:
    m = re.search(r"```\{code-block\} python\n:name: recipe-keras-example\n\n(.*?)```", _page(), re.S)
    assert m, "recipe.md has no block named recipe-keras-example"
    return m.group(1)


def test_page_keras_example_runs_and_trains_as_the_paper(keras_float64, capsys):
    import dropout_lib as dl
    from dropout_lib import mapping

    ns: dict = {}
    exec(compile(_example_block(), "recipe.md", "exec"), ns)  # noqa: S102 - the page's own code
    printed = capsys.readouterr().out.strip()
    assert printed == "[0.064, 0.1]"  # 0.1 p^2 on the consuming kernel (p = 0.8), 0.1 elsewhere
    assert f"# {printed}:" in _example_block(), "the page's comment shows another output"
    paper, paper_opt, ported = ns["paper"], ns["paper_opt"], ns["ported"]
    naive = dl.convert_model(paper, to="inverted").model  # same masks, weights converted
    rng = np.random.default_rng(12)
    x = rng.normal(size=(FIT_STEPS * 8, 20))
    y = rng.integers(0, 10, size=len(x))
    w_ported = _fit(ported.model, ported.optimizer, x, y)
    w_naive = _fit(naive, mapping.clone_optimizer(paper_opt), x, y)
    w_paper = _fit(paper, paper_opt, x, y)
    p = 1.0 - ns["rate"]
    assert [c.keep_prob for c in ported.consumers] == [p]
    scales = [1.0, 1.0, p, 1.0]  # consuming kernel W_inv = p W_std; the rest unchanged
    assert _gap(w_ported, w_paper, scales) <= FIT_TOL
    assert _gap(w_naive, w_paper, scales) >= CONTROL_GAP


def test_install_line_is_the_same_everywhere():
    """intro.md, README.md and appendix/api.md give one install command, from the repository
    URL in _config.yml (dropout_lib is not on the package index: `pip install dropout_lib`
    would fail, or install a stranger's package if someone took the name)."""
    root = PAGE.parent
    url = re.search(r"^repository:\n  url: (\S+)", (root / "_config.yml").read_text(), re.M).group(1)
    line = f'REPO={url}\npip install "dropout_lib[tensorflow] @ git+$REPO"'
    for page in ("intro.md", "README.md", "appendix/api.md"):
        text = (root / page).read_text(encoding="utf-8")
        assert line in text, f"{page} lacks the install line for {url}"
        assert 'pip install -e ".[tensorflow]"' in text, page
        assert not re.search(r"pip install \"?dropout_lib(\[\w+\])?\"?(?! @)(\s|`|$)", text), page


@pytest.mark.parametrize("page", ["intro.md", "recipe.md"])
def test_page_glued_names_exist(page):
    """Every number the page pastes from a chapter exists in that chapter's stored outputs
    (a renamed glue name would otherwise stop the strict build only after every chapter ran)."""
    import json

    root = PAGE.parent
    text = (root / page).read_text(encoding="utf-8")
    # myst-nb splits the role's text at its last ":" for the format, so `path::key`
    # without a format looks up the key "path:" and pastes nothing: write `path::key:s`.
    bare = re.findall(r"\{glue:\w+\}`[\w/.-]+\.ipynb::[\w-]+`", text)
    assert not bare, f"{page}: a cross-page glue without a format pastes nothing: {bare}"
    for path, name in re.findall(r"\{glue:\w+\}`([\w/.-]+\.ipynb)::([\w-]+)[^`]*`", text):
        cells = json.loads((root / path).read_text(encoding="utf-8"))["cells"]
        names = {
            o.get("metadata", {}).get("scrapbook", {}).get("name")
            for c in cells
            for o in c.get("outputs", [])
        }
        assert name in names, f"{page}: {path} glues no {name!r}"


@pytest.mark.parametrize("page", ["intro.md", "recipe.md"])
def test_page_references_exist(page):
    """Every {prf:ref} label, {doc} page and {cite} key of the page exists (the strict
    book build checks this too, but only after executing every chapter)."""
    import json

    root = PAGE.parent
    text = (root / page).read_text(encoding="utf-8")
    sources = [(root / "recipe.md").read_text(encoding="utf-8")]
    for nb in sorted(root.glob("chapters/*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        sources += ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    labels = set(re.findall(r":label: ([\w-]+)", "\n".join(sources)))
    missing = set(re.findall(r"\{prf:ref\}`([\w-]+)`", text)) - labels
    assert not missing, f"{page}: undefined theorem labels {sorted(missing)}"
    for doc in re.findall(r"\{doc\}`/?([\w/.-]+)`", text):
        assert any((root / f"{doc}{ext}").exists() for ext in (".md", ".ipynb")), doc
    keys = set(re.findall(r"^@\w+\{([^,]+),", (root / "references.bib").read_text(), re.M))
    cited = {k.strip() for m in re.findall(r"\{cite(?::\w+)?\}`([^`]*)`", text) for k in m.split(",")}
    assert cited <= keys, f"{page}: citation keys missing from references.bib: {cited - keys}"
