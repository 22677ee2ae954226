"""ODE models: the continuous normalizing flow (``cnf``) and flow matching (``flow_matching``),
checked against closed forms (Book §9.4): conditional paths and their velocities, minibatch OT,
the Gaussian marginal field, linear CNFs, RNODE, reflow, and the evaluator's label."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

import dgm
from dgm.core.denoisers import SinusoidalEmbedding
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.solvers import SOLVERS
from dgm.core.spec import DataKind, DataSpec
from dgm.models.diffusion.flow_matching import FlowMatching, minibatch_ot

TINY = {"network": "mlp", "hidden": 32, "num_hidden": 1, "time_dim": 16}


def continuous(dim: int) -> DataSpec:
    return DataSpec((dim,), DataKind.CONTINUOUS)


class Linear(nn.Module):
    """v(t, z) = A z."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return z @ self.a.T


class Constant(nn.Module):
    """v(t, z) = c."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.c.expand_as(z)


def marginal_coefficients(t: Tensor, mu: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """E[x1 - x | z_t] = a z + b for z_t = (1 - t) x + t x1, x ~ N(μ, s²), x1 ~ N(0, 1):
    Cov(x1 - x, z) = t - (1 - t) s², Var z = S² = (1 - t)² s² + t², E z = (1 - t) μ."""
    var = (1 - t) ** 2 * s**2 + t**2
    a = (t - (1 - t) * s**2) / var
    return a, -mu - a * (1 - t) * mu


class GaussianField(nn.Module):
    """The exact marginal velocity of the rectified path for data N(μ, diag s²)."""

    def __init__(self, mu: Tensor, s: Tensor) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1).expand(z.shape[0], 1)
        a, b = marginal_coefficients(t, self.mu, self.s)
        return a * z + b


def gaussian_log_density(x: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    return (-0.5 * ((x - mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(1)


# --- conditional paths -----------------------------------------------------------------------


@pytest.mark.parametrize("path, sigma", [("lipman", 0.05), ("icfm", 0.3), ("rectified", 0.0)])
def test_target_velocity_is_the_time_derivative_of_the_path(path: str, sigma: float) -> None:
    model = build_model("flow_matching", continuous(3), {**TINY, "path": path, "sigma": sigma})
    assert isinstance(model, FlowMatching)
    g = torch.Generator().manual_seed(0)
    x, x1, eps = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(5, generator=g, dtype=torch.float64) * 0.8 + 0.1
    h = 1e-5
    z_plus, _ = model.conditional_path(x, x1, t + h, eps)
    z_minus, _ = model.conditional_path(x, x1, t - h, eps)
    z, u = model.conditional_path(x, x1, t, eps)
    torch.testing.assert_close(u, (z_plus - z_minus) / (2 * h), atol=1e-8, rtol=1e-6)
    # the ends: the (blurred) data at t = 0 and the noise at t = 1
    z0, _ = model.conditional_path(x, x1, torch.zeros(5, dtype=torch.float64), eps)
    z1, _ = model.conditional_path(x, x1, torch.ones(5, dtype=torch.float64), eps)
    blur = eps if path == "icfm" else x1
    torch.testing.assert_close(z0, x + sigma * blur)
    torch.testing.assert_close(z1, x1 + (sigma * eps if path == "icfm" else 0))
    assert model.base_std() == pytest.approx(math.sqrt(1 + sigma**2) if path == "icfm" else 1)


def test_bad_paths_are_config_errors() -> None:
    for options in ({"path": "fm"}, {"path": "rectified", "sigma": 0.1},
                    {"path": "lipman", "coupling": "ot"}, {"coupling": "sinkhorn"},
                    {"path": "lipman", "sigma": 1.0}, {"sampler": "ddim"}):
        with pytest.raises(ConfigError):
            build_model("flow_matching", continuous(2), {**TINY, **options})


# --- minibatch optimal transport -------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 6])
def test_ot_coupling_is_the_brute_force_optimum(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x, x1 = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    cost = ((x[:, None] - x1[None]) ** 2).sum(-1)
    best = min(itertools.permutations(range(n)),
               key=lambda p: float(cost[torch.arange(n), torch.tensor(p)].sum()))
    perm = minibatch_ot(x, x1)
    assert perm.tolist() == list(best)


def test_ot_pairs_are_closer_than_independent_ones() -> None:
    model = build_model("flow_matching", continuous(2),
                        {**TINY, "path": "rectified", "sigma": 0.0, "coupling": "ot"})
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(5)) * 2 + 1
    torch.manual_seed(0)
    x0, x1, _ = model._pairs(x, None)
    torch.manual_seed(0)
    independent = torch.randn_like(x0)
    assert torch.equal(torch.sort(x1, 0).values, torch.sort(independent, 0).values)
    coupled = (x1 - x0).pow(2).sum(1).mean()
    assert coupled < 0.7 * (independent - x0).pow(2).sum(1).mean()


def test_sampled_ot_pairs_are_draws_from_the_exact_plan() -> None:
    """``ot_sample`` draws the batch's pairs with replacement from the OT permutation's plan:
    every pair it returns is a pair of ``ot``'s (same data and noise), some repeat and the
    labels travel with their data."""
    spec = DataSpec((2,), DataKind.CONTINUOUS, num_classes=3)
    options = {**TINY, "path": "rectified", "sigma": 0.0, "conditional": True,
               "label_dropout": 0.0}
    exact = build_model("flow_matching", spec, {**options, "coupling": "ot"})
    sampled = build_model("flow_matching", spec, {**options, "coupling": "ot_sample"})
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))
    y = torch.arange(64) % 3
    torch.manual_seed(0)
    x0, x1, lab = exact._pairs(x, y)
    torch.manual_seed(0)
    s0, s1, slab = sampled._pairs(x, y)
    plan = {tuple(a.tolist()): (tuple(b.tolist()), int(c)) for a, b, c in zip(x0, x1, lab)}
    for a, b, c in zip(s0, s1, slab):
        assert plan[tuple(a.tolist())] == (tuple(b.tolist()), int(c))
    assert len({tuple(a.tolist()) for a in s0}) < 64  # drawn with replacement
    assert "pairs resampled" in sampled.describe()


# --- the Gaussian marginal field (σ = 0) -----------------------------------------------------


def test_regression_on_the_conditional_velocity_gives_the_marginal_field() -> None:
    """Least squares of u_t on (z_t, 1) at fixed t recovers E[x1 - x | z_t] = a z + b, and the
    loss is smallest at that field (the CFM and FM losses differ by a constant)."""
    mu, s = torch.tensor([0.7]), torch.tensor([0.5])
    model = build_model("flow_matching", continuous(1),
                        {**TINY, "path": "rectified", "sigma": 0.0})
    assert isinstance(model, FlowMatching)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for t0 in (0.2, 0.5, 0.8):
        x = mu + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
        x1 = torch.randn(n, 1, generator=g, dtype=torch.float64)
        t = torch.full((n,), t0, dtype=torch.float64)
        z, u = model.conditional_path(x, x1, t)
        design = torch.cat([z, torch.ones_like(z)], 1)
        a_fit, b_fit = torch.linalg.lstsq(design, u).solution[:, 0]
        a, b = marginal_coefficients(torch.tensor(t0, dtype=torch.float64), mu.double(),
                                     s.double())
        # standard errors about 0.006: 5 of them
        assert float(a_fit) == pytest.approx(float(a), abs=0.03)
        assert float(b_fit) == pytest.approx(float(b), abs=0.03)
    data = mu + s * torch.randn(50_000, 1, generator=g)
    losses = {}
    for name, shift in (("exact", 0.0), ("shifted", 0.2)):
        field = GaussianField(mu, s)
        model.net = field if not shift else _Shifted(field, shift)
        torch.manual_seed(1)
        losses[name] = float(model.loss(data).mean().detach())
    assert losses["exact"] + 0.02 < losses["shifted"]


class _Shifted(nn.Module):
    def __init__(self, field: nn.Module, shift: float) -> None:
        super().__init__()
        self.field, self.shift = field, shift

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.field(z, t, y) + self.shift


def gaussian_model(mu: Tensor, s: Tensor, **options: object) -> FlowMatching:
    model = build_model("flow_matching", continuous(mu.numel()),
                        {**TINY, "path": "rectified", "sigma": 0.0, **options})
    assert isinstance(model, FlowMatching)
    model.net = GaussianField(mu, s)
    return model.eval()


def test_exact_marginal_field_samples_the_data_and_scores_its_density() -> None:
    mu, s = torch.tensor([0.5, -1.0]), torch.tensor([0.5, 2.0])
    model = gaussian_model(mu, s)
    x = model.sample(20_000, generator=torch.Generator().manual_seed(0), solver="rk4", steps=20)
    assert torch.allclose(x.mean(0), mu, atol=0.05)
    assert torch.allclose(x.var(0) / s**2, torch.ones(2), atol=0.05)
    points = torch.tensor([[0.5, -1.0], [1.2, 2.0], [-0.4, -4.0], [0.0, 0.0]])
    got = model.log_prob(points)
    torch.testing.assert_close(got, gaussian_log_density(points, mu, s), atol=2e-3, rtol=0)


# --- CNF -------------------------------------------------------------------------------------


def linear_cnf(a: Tensor, **options: object) -> dgm.GenerativeModel:
    model = build_model("cnf", continuous(a.shape[0]), {**TINY, **options})
    model.net = Linear(a)
    return model.eval()


def test_linear_cnf_has_the_closed_form_density() -> None:
    """dz/dt = A z from t = 0 to 1: z_1 = e^A x and log p(x) = log N(e^A x) + tr A."""
    g = torch.Generator().manual_seed(0)
    a = 0.4 * torch.randn(3, 3, generator=g)
    x = torch.randn(8, 3, generator=g)
    model = linear_cnf(a)
    z1 = x @ torch.linalg.matrix_exp(a).T
    expected = -0.5 * z1.pow(2).sum(1) - 1.5 * math.log(2 * math.pi) + torch.trace(a)
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-4, rtol=0)


def test_hutchinson_estimate_agrees_with_the_exact_trace_within_its_error() -> None:
    g = torch.Generator().manual_seed(1)
    a = 0.5 * torch.randn(4, 4, generator=g)
    x = torch.randn(8, 4, generator=g)
    exact = linear_cnf(a).log_prob_estimate(x)
    assert torch.equal(exact.stderr, torch.zeros(8)) and "exact trace" in exact.note
    est = linear_cnf(a, eval_divergence="hutchinson", eval_probes=64).log_prob_estimate(
        x, generator=torch.Generator().manual_seed(2))
    assert (est.stderr > 0).all() and "Hutchinson" in est.note
    assert ((est.log_prob - exact.log_prob).abs() < 4 * est.stderr + 1e-4).all()


def _moons_batch() -> tuple[dgm.datasets.Dataset, Tensor]:
    data = dgm.datasets.load("moons", n_train=512, n_val=64, n_test=64)
    x, _ = data.train.batch(slice(None), data.spec, torch.Generator().manual_seed(0))
    return data, x


def test_cnf_training_lowers_the_loss() -> None:
    data, x = _moons_batch()
    model = build_model("cnf", data.spec, {**TINY, "train_steps": 2,
                                           "train_divergence": "exact"})
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    before = float(model.loss(x).mean().detach())
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for i in range(30):
        opt.zero_grad()
        model.loss(x[(i % 2) * 256:(i % 2 + 1) * 256]).mean().backward()
        opt.step()
    assert float(model.loss(x).mean().detach()) < before - 0.1


def test_rnode_terms_are_positive_and_change_the_gradient() -> None:
    data, x = _moons_batch()
    x = x[:64]
    model = build_model("cnf", data.spec, {**TINY, "train_steps": 2, "kinetic_weight": 0.01,
                                           "jacobian_weight": 0.01})
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    with torch.no_grad():  # away from the zero field, where both terms vanish
        model.net.output.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    terms = model.loss_terms(x)
    assert set(terms) == {"nll", "kinetic", "jacobian"}
    assert (terms["kinetic"] > 0).all() and (terms["jacobian"] > 0).all()
    torch.manual_seed(0)
    torch.testing.assert_close(model.loss(x), sum(terms.values()))
    params = [p for p in model.parameters() if p.requires_grad]
    g_nll = torch.autograd.grad(terms["nll"].mean(), params, retain_graph=True)
    g_all = torch.autograd.grad(sum(terms.values()).mean(), params)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(g_nll, g_all))
    assert diff > 1e-4
    plain = build_model("cnf", data.spec, {**TINY, "train_steps": 2})
    assert set(plain.loss_terms(x)) == {"nll"}


# --- reflow ----------------------------------------------------------------------------------


def test_reflow_regresses_on_the_teacher_pairs() -> None:
    spec = continuous(2)
    c = torch.tensor([1.5, -0.5])
    teacher = build_model("flow_matching", spec, {**TINY, "path": "rectified", "sigma": 0.0})
    teacher.net = Constant(c)  # straight trajectories z_0 = z_1 - c
    options = {**TINY, "path": "rectified", "sigma": 0.0, "reflow_pairs": 64}
    student = build_model("flow_matching", spec, options)
    assert isinstance(student, FlowMatching)
    x = torch.randn(32, 2) * 3
    with pytest.raises(ConfigError, match="make_reflow_pairs"):
        student.loss(x)
    student.make_reflow_pairs(teacher, steps=3, solver="euler", copy_weights=False,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(student.reflow_x1 - student.reflow_x0, c.expand(64, 2))
    student.net = Constant(c)  # the teacher's displacement is the straight-line target
    assert float(student.loss(x).detach().abs().max()) < 1e-10
    fresh = build_model("flow_matching", spec, {**TINY, "path": "rectified", "sigma": 0.0})
    fresh.net = Constant(c)
    assert float(fresh.loss(x).mean().detach()) > 1.0  # on (data, fresh noise) it is not
    # the pairs are part of the state, so a saved student keeps them
    again = build_model("flow_matching", spec, options)
    again.net = Constant(c)
    again.load_state_dict(student.state_dict())
    assert again.has_reflow_pairs and float(again.loss(x).detach().abs().max()) < 1e-10


def test_reflow_pairs_lie_on_the_teacher_trajectories() -> None:
    """With the exact Gaussian marginal field, the ODE carries x1 to the monotone map
    μ + s x1, and the student copies the teacher's network."""
    mu, s = torch.tensor([0.5, -1.0]), torch.tensor([0.5, 2.0])
    teacher = gaussian_model(mu, s)
    student = build_model("flow_matching", continuous(2),
                          {**TINY, "path": "rectified", "sigma": 0.0, "reflow_pairs": 256})
    assert isinstance(student, FlowMatching)
    nfe = student.make_reflow_pairs(teacher, steps=20, solver="rk4", copy_weights=False,
                                    generator=torch.Generator().manual_seed(0))
    assert nfe == 80
    torch.testing.assert_close(student.reflow_x0, mu + s * student.reflow_x1, atol=1e-3, rtol=0)
    trained = build_model("flow_matching", continuous(2), {**TINY, "path": "rectified",
                                                           "sigma": 0.0})
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_()
    student.make_reflow_pairs(trained, steps=2, solver="euler")
    for key, value in trained.net.state_dict().items():
        assert torch.equal(student.net.state_dict()[key], value)


# --- digits: smoke, solvers, guidance, the evaluator -----------------------------------------


def test_flow_matching_on_digits(digits: dgm.datasets.Dataset) -> None:
    model = build_model("flow_matching", digits.spec, {**TINY, "hidden": 64, "coupling": "ot",
                                                       "sigma": 0.0, "time_scale": 5.0})
    scales = [m.scale for m in model.modules() if isinstance(m, SinusoidalEmbedding)]
    assert scales == [5.0]  # slow time features, not the denoisers' 1000
    x, _ = digits.train.batch(slice(0, 256), digits.spec, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    before = float(model.loss(x).mean().detach())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(20):
        opt.zero_grad()
        model.loss(x[(i % 4) * 64:(i % 4 + 1) * 64]).mean().backward()
        opt.step()
    torch.manual_seed(0)
    assert float(model.loss(x).mean().detach()) < 0.9 * before
    model.eval()
    g = torch.Generator().manual_seed(0)
    samples = model.sample(5, generator=g)
    assert samples.shape == (5, 1, 8, 8) and samples.dtype == digits.spec.dtype
    assert int(samples.min()) >= 0 and int(samples.max()) <= 16
    for solver in SOLVERS:
        assert model.sample(3, solver=solver, steps=2, generator=g).shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="solver must be one of"):
        model.sample(3, solver="ddim")
    with pytest.raises(ConfigError, match="steps"):
        model.sample(3, steps=0)
    with pytest.raises(ConfigError, match="guidance"):
        model.sample(3, guidance=2.0)


def test_conditional_model_guides_and_scores_in_label_chunks(
        digits: dgm.datasets.Dataset) -> None:
    options = {**TINY, "conditional": True, "eval_solver": "rk4", "eval_steps": 4}
    model = build_model("cnf", digits.spec, {**options, "eval_chunk": 3})
    with torch.no_grad():
        for p in model.net.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    whole = build_model("cnf", digits.spec, {**options, "eval_chunk": 100})
    whole.load_state_dict(model.state_dict())
    x, y = digits.test.batch(slice(0, 7), digits.spec)
    assert y is not None
    torch.manual_seed(0)
    chunked = model.eval().log_prob(x, y)
    torch.manual_seed(0)
    torch.testing.assert_close(chunked, whole.eval().log_prob(x, y))
    torch.manual_seed(0)
    assert (chunked - model.log_prob(x, (y + 1) % 10)).abs().max() > 1e-2  # the labels matter
    samples = model.sample(4, y=torch.tensor([1, 2, 3, 4]), guidance=2.0, solver="euler",
                           steps=2, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 8, 8)


@pytest.mark.parametrize("name", ["flow_matching", "cnf"])
def test_the_evaluator_labels_the_ode_likelihood(name: str,
                                                 digits: dgm.datasets.Dataset) -> None:
    model = build_model(name, digits.spec, {**TINY, "eval_solver": "rk4", "eval_steps": 3})
    result = dgm.evaluate(model, digits.test.subset(slice(0, 16)), method="estimate")
    assert result.kind == "estimate" and math.isfinite(result.nll_nats)
    assert "rk4" in result.label and "dequantization" in result.label
    assert result.nfe == 12


def test_reflow_from_a_teacher_run_on_the_command_line(tmp_path) -> None:
    """``--set model.teacher=RUN model.reflow_pairs=N``: one reflow round from the CLI. The
    student starts from the teacher's network and its pairs are the teacher's ODE solutions."""
    from dgm.cli import main
    from dgm.runs import open_run

    small = ["model.hidden=16", "model.num_hidden=1", "model.time_dim=8", "model.path=rectified",
             "model.sigma=0.0", "train.progress=false", "train.batch_size=256"]
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    assert main(["train", "flow_matching", "--data", "moons", "--epochs", "1", "--out",
                 str(teacher_dir), "--set", *small]) == 0
    assert main(["train", "flow_matching", "--data", "moons", "--epochs", "1", "--out",
                 str(student_dir), "--set", *small, f"model.teacher={teacher_dir}",
                 "model.reflow_pairs=128", "model.reflow_solver=euler",
                 "model.reflow_steps=4"]) == 0
    teacher = open_run(teacher_dir).load_model()
    student = open_run(student_dir).load_model()
    assert isinstance(student, FlowMatching) and student.has_reflow_pairs
    # each stored x̂0 is the teacher's 4-step Euler solution from its x1
    solved = teacher.integrate(student.reflow_x1[:8], None, solver="euler", steps=4).state
    torch.testing.assert_close(student.reflow_x0[:8], solved, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="reflow_pairs"):
        build_model("flow_matching", continuous(2), {**TINY, "teacher": str(teacher_dir)})


# --- levels posterior: the ODE likelihood with the forward process as dequantization ---------

LEVELS_MODELS = [
    ("flow_matching", {"path": "lipman", "sigma": 0.05}),
    ("score_sde", {"sde": "vp", "t_eps": 1e-3}),
    ("score_sde", {"sde": "ve", "t_eps": 1e-3}),
    ("vdm", {}),
]


@pytest.mark.parametrize("name, options", LEVELS_MODELS)
def test_fresh_levels_model_scores_the_uniform_pmf_exactly(name: str, options: dict) -> None:
    """A fresh network's logits are 0, so its denoiser is the exact posterior mean of data
    uniform over the levels and its ODE is that pmf's exact probability flow: the ODE density
    at the start is Σ_k N(z | α c_k, σ²)/L, and with the decoder p(x | z) and q(z | x) of the
    forward process, p(z) p(x | z) / q(z | x) = 1/L^D for every draw. The likelihood must be
    -D log L with no spread: this checks the log-SNR integration, the base at the far end, the
    decoder and the change of variables together."""
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    model = build_model(name, spec, {**TINY, **options, "prediction": "levels",
                                     "eval_draws": 3, "eval_rtol": 1e-6, "eval_atol": 1e-6})
    model.eval()
    x = torch.tensor([[0, 0], [1, 2], [2, 1], [0, 2]])
    est = model.log_prob_estimate(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est.log_prob, torch.full((4,), -2 * math.log(3)), atol=2e-3)
    assert "Gaussian dequantization by the forward process" in est.note


@pytest.mark.parametrize("name, options", LEVELS_MODELS[:2])
def test_levels_denoiser_is_exact_at_small_noise(name: str, options: dict) -> None:
    """Whatever the network says, at small noise the posterior over the levels picks the level
    the point came from: the loss on the levels is about 0 near t = 0 even for random weights."""
    spec = DataSpec((6,), DataKind.DISCRETE, num_levels=5)
    small = {"sigma": 0.01} if name == "flow_matching" else {}
    model = build_model(name, spec, {**TINY, **options, **small, "prediction": "levels"})
    with torch.no_grad():
        for p in model.net.parameters():
            p.normal_(0, 0.5)  # a network with opinions
    x = torch.randint(0, 5, (32, 6))
    x0 = model.to_model_space(x)
    t = torch.full((32,), 1e-3)
    schedule = model.straight if name == "flow_matching" else model.schedule
    alpha, sigma = schedule.alpha_sigma(t[:, None])
    assert float(sigma.max()) < 0.02  # the levels are 0.4 apart
    x_hat, eps_hat = model.denoise(alpha * x0 + sigma * torch.randn_like(x0), t)
    assert torch.allclose(x_hat, x0, atol=1e-4)


def test_levels_prediction_needs_the_gaussian_path_and_discrete_data() -> None:
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    for bad in ({"path": "icfm"}, {"path": "lipman", "sigma": 0.0},
                {"path": "lipman", "sigma": 0.1, "reflow_pairs": 8}):
        with pytest.raises(ConfigError, match="levels"):
            build_model("flow_matching", spec, {**TINY, **bad, "prediction": "levels"})
    for name, options in LEVELS_MODELS[:2]:
        with pytest.raises(ConfigError, match="discrete"):
            build_model(name, continuous(2), {**TINY, **options, "prediction": "levels"})


def test_flow_matching_on_levels_trains_and_samples(digits: dgm.datasets.Dataset) -> None:
    """The levels model regresses ||x̂ - x||²/σ_t² on the levels themselves (not dequantized
    points), lowers it, and samples levels."""
    model = build_model("flow_matching", digits.spec, {**TINY, "hidden": 64, "path": "lipman",
                                                       "sigma": 0.02, "prediction": "levels"})
    x, _ = digits.train.batch(slice(0, 256), digits.spec, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    before = float(model.loss(x).mean().detach())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(30):
        opt.zero_grad()
        model.loss(x[(i % 4) * 64:(i % 4 + 1) * 64]).mean().backward()
        opt.step()
    torch.manual_seed(0)
    assert float(model.loss(x).mean().detach()) < 0.9 * before
    samples = model.eval().sample(4, steps=4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 8, 8) and 0 <= int(samples.min()) <= int(samples.max()) <= 16
