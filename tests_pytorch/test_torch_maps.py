"""The PyTorch maps (dropout_lib.pytorch) checked on torch itself: torch.nn.Dropout and torch.optim.

For every row of the recipe's PyTorch table (recipe.md), in both directions, a
source net and a target net are trained by ``torch.optim`` on the same batches
and the same dropout masks, in float64:

* ``to_standard``: the source uses ``torch.nn.Dropout(p)`` (inverted: kept
  units times 1/(1 - p)); the target the paper's dropout (:class:`PaperDropout`:
  kept units as they are in training, everything times 1 - p at test time),
  with its consuming kernels W / (1 - p) and their parameter group from
  ``map_param_group(..., "to_standard")``;
* ``to_inverted``: the reverse (a paper recipe ported to ``torch.nn.Dropout``).

After every step the target's consuming kernels are mapped back and compared
with the source's parameters (relative Frobenius distance, the largest over
the parameters): the mapped run must stay within MAP_TOL at every step, and a
control, the same run with ONE hyperparameter given a wrong map (Keras's rule
where it differs, or none), must end at least CONTROL_GAP apart
(tests_pytorch/tolerances.py says why these numbers).

The masks are the same because :class:`PaperDropout` draws them as
``torch.nn.Dropout`` does on the CPU (``empty_like(x).bernoulli_(1 - p)``) and
both runs seed torch's generator alike before each step;
``test_paper_dropout_keeps_the_units_torch_keeps`` checks it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from tolerances import CONTROL_GAP, MAP_TOL, MIN_MOVED, STEPS
from torch import nn

from dropout_lib import pytorch

SIZES = (8, 16, 16, 4)
DROP = (0.2, 0.0, 0.4)  # torch.nn.Dropout's p (drop probability) before each Linear
BATCH, N_BATCHES = 32, 4
KEEP = {f"fcs.{k}.weight": pytorch.keep_prob_from_torch_p(p) for k, p in enumerate(DROP) if p > 0}
DIRECTIONS = ("to_standard", "to_inverted")


class PaperDropout(nn.Module):
    """The paper's dropout with torch's argument: ``m * x`` in training, ``(1 - p) * x`` at test.

    ``p`` is the DROP probability, as in ``torch.nn.Dropout(p)``. The mask is
    drawn exactly as torch 2.14.1 draws it on the CPU
    (``at::native::_dropout_impl``: ``empty_like(x).bernoulli_(1 - p)``, no
    draw when ``p == 0``), so under the same generator state this module and
    ``torch.nn.Dropout(p)`` keep the same units.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0:
            return x
        if not self.training:
            return x * (1 - self.p)
        return x * torch.empty_like(x).bernoulli_(1 - self.p)


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear, a dropout (DROP) in front of each Linear."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        make = nn.Dropout if variant == "inverted" else PaperDropout
        self.drops = nn.ModuleList(make(p) for p in DROP)
        self.fcs = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64) for a, b in zip(SIZES[:-1], SIZES[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, (drop, fc) in enumerate(zip(self.drops, self.fcs)):
            x = fc(drop(x))
            if k < len(self.fcs) - 1:
                x = torch.relu(x)
        return x


@pytest.fixture(scope="module")
def problem():
    """Fixed batches (a teacher's labels) and the source net's initial parameters."""
    g = torch.Generator().manual_seed(1929)
    x = torch.randn(N_BATCHES, BATCH, SIZES[0], generator=g, dtype=torch.float64)
    teacher = torch.randn(SIZES[0], SIZES[-1], generator=g, dtype=torch.float64)
    batches = [(xb, (xb @ teacher).argmax(dim=1)) for xb in x]
    torch.manual_seed(2014)
    init = MLP("inverted").state_dict()
    return batches, init


def _nets(init, direction):
    """(source, target): the target's consuming kernels mapped from the source's."""
    source_variant, target_variant = (
        ("inverted", "standard") if direction == "to_standard" else ("standard", "inverted")
    )
    source, target = MLP(source_variant), MLP(target_variant)
    source.load_state_dict(init)
    mapped = copy.deepcopy(init)
    for name, keep in KEEP.items():
        mapped[name] = init[name] / keep if direction == "to_standard" else init[name] * keep
    target.load_state_dict(mapped)
    return source, target


def _back(name, value, direction):
    """A target parameter in the source's coordinates."""
    if name not in KEEP:
        return value
    return value * KEEP[name] if direction == "to_standard" else value / KEEP[name]


def _train(net, optimizer, batches, clip=None):
    """STEPS steps of cross-entropy; the parameters after each step (step 0: before)."""
    params = dict(net.named_parameters())
    out = [{k: v.detach().clone() for k, v in params.items()}]
    net.train()
    for t in range(STEPS):
        x, y = batches[t % len(batches)]
        torch.manual_seed(10_000 + t)  # both runs draw the same masks at step t
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        if clip is not None:
            clip(params)
        optimizer.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@dataclass
class Run:
    gaps: list[float]  # per step, the largest relative distance over the parameters
    moved: float  # smallest relative move of a consuming kernel over the source run
    final: float = field(init=False)
    worst: float = field(init=False)

    def __post_init__(self):
        self.final, self.worst = self.gaps[-1], max(self.gaps)


def _compare(src, tgt, direction):
    gaps = [max(_rel(_back(k, b[k], direction), a[k]) for k in a) for a, b in zip(src, tgt)]
    moved = min(_rel(src[-1][k], src[0][k]) for k in KEEP)
    return Run(gaps, moved)


def torch_defaults(optimizer):
    """The optimizer's defaults as torch 2.14.1 itself states them."""
    return getattr(torch.optim, optimizer)([nn.Parameter(torch.zeros(1))]).defaults


def _build(optimizer, groups):
    if optimizer == "Adagrad":
        return pytorch.build_adagrad(groups)
    return getattr(torch.optim, optimizer)(groups)


@dataclass(frozen=True)
class Case:
    """One row of the recipe's PyTorch table, on one optimizer set-up.

    ``exponent``: the row's map, ``value_target = value_source * s**exponent``
    with ``s`` the kernels' factor (1/keep_prob to standard, keep_prob to
    inverted); ``wrong``: the control's exponent for the same key.
    """

    row: str
    optimizer: str
    hp: dict
    key: str
    exponent: int
    wrong: int
    why: str


CASES = [
    Case("SGD(lr)", "SGD", {"lr": 0.1}, "lr", 2, 1, "lr s, the adaptive rule"),
    Case(
        "SGD(lr), momentum, dampening",
        "SGD",
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.1},
        "lr",
        2,
        0,
        "lr unmapped",
    ),
    Case(
        "SGD(lr), Nesterov",
        "SGD",
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        "lr",
        2,
        1,
        "lr s, the adaptive rule",
    ),
    Case(
        "SGD(weight_decay), coupled",
        "SGD",
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},
        "weight_decay",
        -2,
        0,
        "weight_decay unmapped",
    ),
    Case("Adam(lr)", "Adam", {"lr": 0.01}, "lr", 1, 0, "lr unmapped"),
    Case("Adam(lr), AMSGrad", "Adam", {"lr": 0.01, "amsgrad": True}, "lr", 1, 2, "lr s^2, SGD's rule"),
    Case("AdamW(lr)", "AdamW", {"lr": 0.01}, "lr", 1, 0, "lr unmapped"),
    Case("Adam(eps)", "Adam", {"lr": 0.01, "eps": 0.01}, "eps", -1, -2, "eps / s^2, inside-the-root rule"),
    Case("AdamW(eps)", "AdamW", {"lr": 0.01, "eps": 0.01}, "eps", -1, -2, "eps / s^2"),
    Case(
        "Adam(weight_decay), coupled",
        "Adam",
        {"lr": 0.01, "weight_decay": 0.3},
        "weight_decay",
        -2,
        -1,
        "weight_decay / s, Keras's (decoupled) Adam rule",
    ),
    Case(
        "Adam(weight_decay), decoupled_weight_decay=True",
        "Adam",
        {"lr": 0.01, "weight_decay": 0.3, "decoupled_weight_decay": True},
        "weight_decay",
        -1,
        -2,
        "weight_decay / s^2, the coupled rule",
    ),
    Case(
        "AdamW(weight_decay), default 0.01",
        "AdamW",
        {"lr": 0.05},
        "weight_decay",
        -1,
        0,
        "the default 0.01 unmapped",
    ),
    Case("RMSprop(lr)", "RMSprop", {"lr": 0.003}, "lr", 1, 0, "lr unmapped"),
    Case(
        "RMSprop(lr), centered, momentum",
        "RMSprop",
        {"lr": 0.001, "momentum": 0.5, "centered": True},
        "lr",
        1,
        2,
        "lr s^2",
    ),
    Case(
        "RMSprop(eps)",
        "RMSprop",
        {"lr": 0.003, "eps": 0.01},
        "eps",
        -1,
        -2,
        "eps / s^2, Keras's RMSprop rule",
    ),
    Case(
        "RMSprop(weight_decay), coupled",
        "RMSprop",
        {"lr": 0.003, "weight_decay": 0.3},
        "weight_decay",
        -2,
        -1,
        "weight_decay / s, a decoupled rule",
    ),
    Case("Adagrad(lr), lr_decay", "Adagrad", {"lr": 0.05, "lr_decay": 0.01}, "lr", 1, 0, "lr unmapped"),
    Case(
        "Adagrad(eps)",
        "Adagrad",
        {"lr": 0.05, "eps": 0.01},
        "eps",
        -1,
        -2,
        "eps / s^2, Keras's Adagrad rule",
    ),
    Case(
        "Adagrad(initial_accumulator_value)",
        "Adagrad",
        {"lr": 0.05, "initial_accumulator_value": 0.1},
        "initial_accumulator_value",
        -2,
        0,
        "the accumulator unmapped",
    ),
    Case(
        "Adagrad(weight_decay), coupled",
        "Adagrad",
        {"lr": 0.05, "weight_decay": 0.3},
        "weight_decay",
        -2,
        -1,
        "weight_decay / s, a decoupled rule",
    ),
]


def _groups(net, optimizer, hp, direction=None, control=False):
    """One group for the parameters that keep the source's values, one per consuming kernel.

    ``direction=None``: the source's (hp everywhere). Otherwise the kernels get
    ``map_param_group``'s group (``control``: with the case's key mapped by its
    wrong exponent instead).
    """
    params = dict(net.named_parameters())
    groups = [{"params": [w for k, w in params.items() if k not in KEEP], **hp}]
    for name, keep in KEEP.items():
        group = dict(hp) if direction is None else pytorch.map_param_group(optimizer, hp, keep, direction)
        if control:
            case = control
            value = {**torch_defaults(optimizer), **hp}[case.key]
            group[case.key] = value * pytorch.scale(keep, direction) ** case.wrong
        groups.append({"params": [params[name]], **group})
    return groups


_RUNS: dict = {}


def _run(problem, case, direction, control=False):
    """(source trajectory, target trajectory), cached per case and direction."""
    key = (case.row, direction, control)
    if key not in _RUNS:
        batches, init = problem
        src = _RUNS.get((case.row, direction, "source"))
        source, target = _nets(init, direction)
        if src is None:
            src = _train(source, _build(case.optimizer, _groups(source, case.optimizer, case.hp)), batches)
            _RUNS[(case.row, direction, "source")] = src
        groups = _groups(target, case.optimizer, case.hp, direction, case if control else False)
        _RUNS[key] = _compare(src, _train(target, _build(case.optimizer, groups), batches), direction)
    return _RUNS[key]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", CASES, ids=[c.row for c in CASES])
def test_mapped_run_follows_the_source_and_the_control_parts(problem, case, direction):
    # the library's value is the row's power of s (an exponent stated here, not read off the library)
    for keep in KEEP.values():
        value = {**torch_defaults(case.optimizer), **case.hp}[case.key]
        mapped = pytorch.map_param_group(case.optimizer, case.hp, keep, direction)[case.key]
        assert mapped == pytest.approx(value * pytorch.scale(keep, direction) ** case.exponent, rel=4e-16)
    mapped, control = _run(problem, case, direction), _run(problem, case, direction, control=True)
    assert mapped.moved >= MIN_MOVED, f"{case.row}: the source hardly trained ({mapped.moved:.3g})"
    assert mapped.worst <= MAP_TOL, f"{case.row} {direction}: the mapped run is {mapped.worst:.2e} away"
    assert control.final >= CONTROL_GAP, (
        f"{case.row} {direction}: the control ({case.why}) ended only {control.final:.2e} apart"
    )


def test_every_row_of_the_recipe_table_is_run():
    """Each row label of the page's PyTorch table is covered by a case (both directions)."""
    from dropout_lib import recipe

    covered = {(c.optimizer, c.key) for c in CASES}
    for label, optimizer, key, _, _ in recipe._TORCH:
        assert (optimizer, key) in covered, f"recipe row {label} has no torch check"
    # the table's combined rows: AdamW(lr), AdamW(eps), Adagrad's weight_decay have their own cases too
    assert {("AdamW", "lr"), ("AdamW", "eps"), ("Adagrad", "weight_decay")} <= covered


def test_paper_dropout_keeps_the_units_torch_keeps():
    """Same generator state: PaperDropout keeps exactly the units torch.nn.Dropout keeps."""
    x = torch.ones(64, 256, dtype=torch.float64)
    for p in (0.2, 0.4, 0.5):
        torch.manual_seed(7)
        inverted = nn.Dropout(p).train()(x)
        torch.manual_seed(7)
        paper = PaperDropout(p).train()(x)
        assert torch.equal(inverted != 0, paper != 0)
        assert set(paper.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(inverted[inverted != 0], torch.full_like(inverted[inverted != 0], 1 / (1 - p)))
        assert torch.equal(PaperDropout(p).eval()(x), x * (1 - p)) and torch.equal(nn.Dropout(p).eval()(x), x)


def test_same_function_at_test_time(problem):
    """eval(): the paper net with W / keep_prob is the inverted net, to rounding (4 K eps, K = 2)."""
    batches, init = problem
    source, target = _nets(init, "to_standard")
    x = batches[0][0]
    a, b = source.eval()(x), target.eval()(x)
    assert _rel(b, a) <= 4 * len(KEEP) * 2.0**-52


# ------------------------------------------------------------------ Adagrad's accumulator


ACCUMULATOR = next(c for c in CASES if c.key == "initial_accumulator_value")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_adagrad_ignores_a_groups_accumulator_and_build_adagrad_sets_it(problem, direction):
    """torch.optim.Adagrad given the groups directly: every accumulator starts at the
    constructor's value (here its default 0; the groups' 0.1 and mapped value are ignored), and
    the run ends far apart; build_adagrad starts each parameter from its own group's value
    (the mapped run above)."""
    batches, init = problem
    _, target = _nets(init, direction)
    groups = _groups(target, "Adagrad", ACCUMULATOR.hp, direction)
    naive = torch.optim.Adagrad(groups)  # constructor's initial_accumulator_value: the default 0
    for group in naive.param_groups[1:]:
        (w,) = group["params"]
        assert group["initial_accumulator_value"] > 0
        assert torch.equal(naive.state[w]["sum"], torch.zeros_like(w))  # not the group's value
    built = pytorch.build_adagrad(_groups(target, "Adagrad", ACCUMULATOR.hp, direction))
    for group in built.param_groups:
        for w in group["params"]:
            assert torch.equal(built.state[w]["sum"], torch.full_like(w, group["initial_accumulator_value"]))
    src = _RUNS.get((ACCUMULATOR.row, direction, "source"))
    if src is None:
        _run(problem, ACCUMULATOR, direction)
        src = _RUNS[(ACCUMULATOR.row, direction, "source")]
    gap = _compare(src, _train(target, naive, batches), direction).final
    assert gap >= CONTROL_GAP, f"the per-group accumulator was honoured after all ({gap:.2e})"


def test_set_adagrad_accumulators_refuses_what_it_cannot_make_exact():
    w, v = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="torch.optim.Adagrad"):
        pytorch.set_adagrad_accumulators(torch.optim.SGD([w], lr=0.1))
    late = torch.optim.Adagrad([w])
    late.add_param_group({"params": [v], "initial_accumulator_value": 0.5})
    with pytest.raises(ValueError, match="add_param_group"):
        pytorch.set_adagrad_accumulators(late)
    stepped = torch.optim.Adagrad([w])
    w.grad = torch.ones(3)
    stepped.step()
    with pytest.raises(ValueError, match="already taken"):
        pytorch.set_adagrad_accumulators(stepped)
    with pytest.raises(ValueError, match="finite real >= 0"):
        pytorch.build_adagrad([{"params": [v], "initial_accumulator_value": -1.0}])


# ------------------------------------------------------------------ torch's own hyperparameters


@pytest.mark.parametrize("optimizer", sorted(pytorch.DEFAULTS))
def test_torch_defaults_and_param_groups_are_accepted(optimizer):
    """Every key torch 2.14.1 puts in an optimizer's defaults and param groups is one the map
    knows (a newer torch's new key fails here), and the map's defaults are torch's."""
    w = nn.Parameter(torch.zeros(2))
    opt = getattr(torch.optim, optimizer)([w])
    for key, value in pytorch.DEFAULTS[optimizer].items():
        assert opt.defaults[key] == value, f"{optimizer}'s default {key}: torch {opt.defaults[key]}"
    for source in (opt.defaults, opt.param_groups[0]):
        group = pytorch.map_param_group(optimizer, source, 0.5, "to_standard")
        assert "params" not in group and set(group) == set(opt.defaults)
        getattr(torch.optim, optimizer)([{"params": [nn.Parameter(torch.zeros(2))], **group}])


def test_adamw_defaults_are_mapped_and_unknown_keys_refused():
    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([w])
    group = pytorch.map_param_group("AdamW", opt.param_groups[0], 0.5, "to_standard")
    assert group["decoupled_weight_decay"] is True
    assert group["weight_decay"] == 0.005 and group["lr"] == 0.002 and group["eps"] == 5e-9
    # a decoupled Adam group maps its decay as AdamW's; a coupled one by p^2
    adam = pytorch.map_param_group(
        "Adam", {"weight_decay": 0.01, "decoupled_weight_decay": True}, 0.5, "to_standard"
    )
    assert adam["weight_decay"] == 0.005
    assert (
        pytorch.map_param_group("Adam", {"weight_decay": 0.01}, 0.5, "to_standard")["weight_decay"] == 0.0025
    )
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)  # adds initial_lr to the group
    with pytest.raises(pytorch.NoExactMapError, match="initial_lr.*not passed on unmapped"):
        pytorch.map_param_group("AdamW", opt.param_groups[0], 0.5, "to_standard")
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        pytorch.map_param_group("AdamW", {"decoupled_weight_decay": 1}, 0.5, "to_standard")


# ------------------------------------------------------------------ clipping


def _clip_run(problem, direction, clip_source, clip_target):
    """SGD with momentum, lr mapped, a clip applied to the consuming kernels' gradients."""
    batches, init = problem
    source, target = _nets(init, direction)
    hp = {"lr": 0.05, "momentum": 0.9}
    src = _train(source, torch.optim.SGD(_groups(source, "SGD", hp)), batches, clip=clip_source)
    tgt = _train(target, torch.optim.SGD(_groups(target, "SGD", hp, direction)), batches, clip=clip_target)
    return _compare(src, tgt, direction)


def _per_kernel(clip, threshold, factor=lambda keep: 1.0):
    def apply(params):
        for name, keep in KEEP.items():
            clip(params[name], threshold * factor(keep))

    return apply


CLIP_VALUE, CLIP_NORM = 0.004, 0.02


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_clips_act(problem, direction):
    """At the first step both clips change both consuming kernels' gradients in the source run."""
    batches, init = problem
    source, _ = _nets(init, direction)
    torch.manual_seed(10_000)
    nn.functional.cross_entropy(source(batches[0][0]), batches[0][1]).backward()
    for name in KEEP:
        g = dict(source.named_parameters())[name].grad
        assert g.abs().max() > CLIP_VALUE and torch.linalg.norm(g) > CLIP_NORM


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_clip_grad_value_maps_like_keras_clipvalue(problem, direction):
    v = CLIP_VALUE
    clip = nn.utils.clip_grad_value_
    src = _per_kernel(clip, v)
    mapped = _clip_run(
        problem, direction, src, _per_kernel(clip, v, lambda k: 1 / pytorch.scale(k, direction))
    )
    control = _clip_run(problem, direction, src, _per_kernel(clip, v))
    assert mapped.worst <= MAP_TOL, f"clip_grad_value_ mapped: {mapped.worst:.2e}"
    assert control.final >= CONTROL_GAP, f"clip_grad_value_ unmapped: only {control.final:.2e}"


def _clip_norm_without_constant(param, max_norm):
    """torch's clip_grads_with_norm_ handed ||g|| - 1e-6, which cancels its built-in 1e-6."""
    nn.utils.clip_grads_with_norm_([param], max_norm, torch.linalg.norm(param.grad) - 1e-6)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_clip_grad_norm_has_no_exact_map_because_of_its_constant(problem, direction):
    """clip_grad_norm_ on each consuming kernel alone, the threshold mapped by 1/s: far above
    rounding apart (the 1e-6 does not scale with the gradient); the same clip with that constant
    cancelled follows the source to rounding."""
    c = CLIP_NORM
    scale = lambda k: 1 / pytorch.scale(k, direction)  # noqa: E731
    clip = nn.utils.clip_grad_norm_
    torch_run = _clip_run(problem, direction, _per_kernel(clip, c), _per_kernel(clip, c, scale))
    exact = _per_kernel(_clip_norm_without_constant, c)
    no_constant = _clip_run(problem, direction, exact, _per_kernel(_clip_norm_without_constant, c, scale))
    assert torch_run.final > 1e3 * MAP_TOL, f"the 1e-6 left no trace: {torch_run.final:.2e}"
    assert no_constant.worst <= MAP_TOL, f"without the constant: {no_constant.worst:.2e}"


# ------------------------------------------------------------------ the recipe's snippet


def test_recipe_snippet_runs_on_torch():
    """The PyTorch snippet of recipe.md, run as printed on a small model with fc2 after nn.Dropout(0.2)."""
    from pathlib import Path

    page = (Path(__file__).parents[1] / "recipe.md").read_text(encoding="utf-8")
    section = page[page.index("## For PyTorch readers") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    assert max(len(line) for line in code.splitlines()) <= 88
    model = nn.Sequential()
    model.fc1, model.drop, model.fc2 = nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 3)
    before = model.fc2.weight.detach().clone()
    namespace = {"model": model, "torch": torch}
    exec(code, namespace)
    opt = namespace["opt"]
    kernel = model.fc2.weight
    (group,) = [g for g in opt.param_groups if any(w is kernel for w in g["params"])]
    keep = pytorch.keep_prob_from_torch_p(0.2)
    assert torch.equal(model.fc2.weight.detach(), before * keep)  # the weights mapped once
    paper = namespace["paper"]
    assert group["lr"] == pytest.approx(paper["lr"] * keep, rel=4e-16)
    if isinstance(opt, torch.optim.Adagrad):
        g0 = paper["initial_accumulator_value"] / keep**2
        assert float(opt.state[kernel]["sum"][0, 0]) == pytest.approx(g0, rel=4e-16)
