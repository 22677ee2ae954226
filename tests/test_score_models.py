"""Score models (dgm.models.diffusion.score): the objectives against their oracles and closed
forms, the samplers and the probability-flow likelihood with the exact score of Gaussian data,
annealed Langevin on a mixture, options and errors, and a short run on the digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import dgm
import dgm.eval.likelihood
from dgm.core.errors import ConfigError, DataError
from dgm.core.estimators import exact_divergence
from dgm.core.mcmc import langevin
from dgm.core.registry import build_model
from dgm.core.schedules import NoiseSchedule, broadcast_time
from dgm.core.solvers import SOLVERS
from dgm.core.spec import DataKind, DataSpec
from dgm.models.diffusion.samplers import SAMPLERS
from dgm.models.diffusion.score import (
    NCSN,
    ScoreSDE,
    sliced_score_matching,
)

SPEC2 = DataSpec((2,), DataKind.CONTINUOUS)
SPEC1 = DataSpec((1,), DataKind.CONTINUOUS)
MU = torch.tensor([0.3, -0.5], dtype=torch.float64)
S = torch.tensor([0.6, 0.4], dtype=torch.float64)
TINY = {"network": "mlp", "hidden": 16, "num_hidden": 1, "time_dim": 16}


class GaussianOracle(nn.Module):
    """E[ε | z_t] (or E[v | z_t]) for data x ~ N(μ, diag s²) on the path of ``schedule``:
    z = α x + σ ε is Gaussian, Cov(ε, z) = σ, Var z = α² s² + σ²."""

    def __init__(self, schedule: NoiseSchedule, mu: Tensor, s: Tensor, prediction: str = "noise"
                 ) -> None:
        super().__init__()
        self.schedule, self.prediction = schedule, prediction
        self.register_buffer("mu", mu)
        self.register_buffer("s2", s**2)

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(broadcast_time(t, z))
        eps = sigma * (z - alpha * self.mu) / (alpha**2 * self.s2 + sigma**2)
        if self.prediction == "v":
            x = (z - sigma * eps) / alpha
            return alpha * eps - sigma * x
        return eps


def gaussian(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 2, generator=g, dtype=torch.float64)


def score_sde(spec: DataSpec = SPEC2, **fields: object) -> ScoreSDE:
    model = build_model("score_sde", spec, {**TINY, **fields})
    assert isinstance(model, ScoreSDE)
    return model


def with_oracle(model: ScoreSDE | NCSN, prediction: str = "noise", mu: Tensor = MU,
                s: Tensor = S) -> ScoreSDE | NCSN:
    model = model.double()
    model.net = GaussianOracle(model.schedule, mu, s, prediction)
    return model.eval()


def seeded_loss(model: nn.Module, x: Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(model.loss(x).mean())


# --- denoising score matching --------------------------------------------------------------


class Perturbed(nn.Module):
    def __init__(self, net: nn.Module, scale: float, shift: float) -> None:
        super().__init__()
        self.inner, self.scale, self.shift = net, scale, shift

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.scale * self.inner(z, t, y) + self.shift


@pytest.mark.parametrize("name, fields", [
    ("score_sde", {"sde": "vp"}),
    ("score_sde", {"sde": "ve", "sigma_max": 5.0}),
    ("score_sde", {"sde": "vp", "weighting": "likelihood"}),
    ("ncsn", {"sigma_max": 3.0, "noise_levels": 5}),
])
def test_dsm_is_minimized_by_the_oracle(name: str, fields: dict) -> None:
    """With common random numbers, E[loss(oracle + δ)] - E[loss(oracle)] = E||δ||² w > 0."""
    model = with_oracle(build_model(name, SPEC2, {**TINY, **fields}))  # type: ignore[arg-type]
    x = gaussian(20_000, 0)
    best = seeded_loss(model, x, 1)
    oracle = model.net
    for scale, shift in [(1.1, 0.0), (0.9, 0.0), (1.0, 0.05), (1.0, -0.05)]:
        model.net = Perturbed(oracle, scale, shift)
        assert seeded_loss(model, x, 1) > best
    model.net = oracle


class LevelAffine(nn.Module):
    """ε̂ = a_i z + b_i per noise level i (the oracle's form for Gaussian data)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.a = nn.Parameter(torch.zeros(levels, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(levels, dtype=torch.float64))

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        i = torch.round((1 - t) * (self.levels - 1)).long()  # t_i runs from 1 down to 0
        return self.a[i].unsqueeze(1) * z + self.b[i].unsqueeze(1)


def test_dsm_fit_of_an_affine_network_approaches_the_oracle() -> None:
    mu, s = 0.5, 0.7
    model = build_model("ncsn", SPEC1, {**TINY, "sigma_max": 2.0, "sigma_min": 0.2,
                                        "noise_levels": 3}).double()
    model.net = LevelAffine(3)
    steps = 400
    opt = torch.optim.Adam(model.net.parameters(), lr=0.05)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = mu + s * torch.randn(2048, 1, generator=g, dtype=torch.float64)
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
        decay.step()
    sig = torch.tensor(model.sigmas, dtype=torch.float64)
    a = sig / (s**2 + sig**2)  # E[ε | z] = σ (z - μ)/(s² + σ²)
    b = -sig * mu / (s**2 + sig**2)
    assert torch.allclose(model.net.a.detach(), a, atol=0.02), (model.net.a, a)
    assert torch.allclose(model.net.b.detach(), b, atol=0.02), (model.net.b, b)


# --- sliced score matching ----------------------------------------------------------------------


def toy_score(x: Tensor) -> Tensor:
    a = torch.tensor([[1.0, 0.3, 0.0], [-0.5, 2.0, 0.2], [0.1, 0.0, 0.7]], dtype=x.dtype)
    return -x @ a + torch.tanh(x @ a.T) * torch.sin(x)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("vr", [False, True])
def test_ssm_is_unbiased_for_implicit_score_matching(kind: str, vr: bool) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    s = toy_score(xg)
    exact = (exact_divergence(s, xg) + 0.5 * s.pow(2).sum(1)).detach()
    draws = torch.stack([
        sliced_score_matching(toy_score, x, probe_kind=kind, variance_reduction=vr, generator=g)
        for _ in range(400)
    ])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - exact).abs() <= 4.5 * se + 1e-12).all(), (mean - exact) / se
    # one call with many probes is the mean of as many single-probe estimates
    many = sliced_score_matching(toy_score, x, probe_kind=kind, num_probes=400,
                                 variance_reduction=vr, generator=g)
    assert ((many - exact).abs() <= 4.5 * se + 1e-12).all()


def test_ssm_keeps_the_graph_to_the_parameters_only_when_grad_is_enabled() -> None:
    w = torch.tensor(0.5, requires_grad=True)
    x = torch.randn(8, 2)
    loss = sliced_score_matching(lambda z: -w * z, x)
    assert loss.requires_grad
    (grad,) = torch.autograd.grad(loss.sum(), w)
    assert torch.isfinite(grad)
    with torch.no_grad():
        assert not sliced_score_matching(lambda z: -w * z, x).requires_grad


def test_ncsn_ssm_loss_of_the_oracle_has_its_closed_form() -> None:
    """At level σ with the exact score of N(μ, s² + σ²): E[σ²(tr ∇s + ½||s||²)] =
    -½ Σ_d σ²/(s_d² + σ²); the levels are drawn uniformly."""
    model = with_oracle(build_model("ncsn", SPEC2, {**TINY, "objective": "ssm",  # type: ignore
                                                    "sigma_max": 2.0, "noise_levels": 4}))
    x = gaussian(40_000, 4)
    torch.manual_seed(5)
    with torch.no_grad():
        loss = model.loss(x)
    sig2 = torch.tensor(model.sigmas, dtype=torch.float64) ** 2
    expected = float((-0.5 * sig2[:, None] / (S**2 + sig2[:, None])).sum(1).mean())
    assert abs(float(loss.mean()) - expected) < 4 * float(loss.std()) / math.sqrt(len(x))
    best = seeded_loss(model, x, 6)
    model.net = Perturbed(model.net, 1.1, 0.0)
    assert seeded_loss(model, x, 6) > best


# --- likelihood weighting -------------------------------------------------------------------


def test_likelihood_weighting_importance_sampling_is_unbiased() -> None:
    """With a zero network, E[loss] = ½ D ∫ g²/σ² dt = ½ D (log SNR(t_ε) - log SNR(1)), for t
    uniform (weight g²/σ²) and for t uniform in log SNR; the latter with a smaller variance."""
    x = torch.zeros(50_000, 2)
    losses = {}
    for importance in (False, True):
        model = score_sde(sde="vp", weighting="likelihood", t_eps=1e-3,
                          importance_sampling=importance)
        with torch.no_grad():
            losses[importance] = model.loss(x).double()
    ends = model.schedule.log_snr(torch.tensor([1e-3, 1.0], dtype=torch.float64))
    expected = 0.5 * 2 * float(ends[0] - ends[1])
    for values in losses.values():
        se = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - expected) < 4 * se
    assert losses[True].std() < 0.5 * losses[False].std()


# --- the score SDE with the exact score of Gaussian data ----------------------------------------


def affine_flow_end(model: ScoreSDE, x: Tensor) -> Tensor:
    """Where the exact probability-flow ODE takes x at t_ε: it moves each coordinate's
    standardized value (x - α μ)/sqrt(α² s² + σ²) unchanged."""
    def moments(t: float) -> tuple[Tensor, Tensor]:
        a, s = model.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        return a * MU, torch.sqrt(a**2 * S**2 + s**2)

    m0, sd0 = moments(model.config.t_eps)
    m1, sd1 = moments(1.0)
    return m1 + sd1 * (x - m0) / sd0


@pytest.mark.parametrize("sde, prediction", [
    ("ve", "noise"), ("ve", "v"), ("vp", "noise"), ("vp", "v"), ("sub_vp", "noise"),
    ("ve_book", "noise"),
])
def test_probability_flow_likelihood_of_the_exact_score(sde: str, prediction: str) -> None:
    """log p(x) at t_ε = log N(x | α μ, α² s² + σ²): the ODE's number equals it up to the base:
    N(0, σ_1² I) in place of the law of z_1 (the model's definition), which we add back."""
    model = with_oracle(score_sde(sde=sde, prediction=prediction, eval_rtol=1e-8,
                                  eval_atol=1e-8), prediction)
    x = gaussian(32, 7)
    est = model.log_prob_estimate(x)
    t_eps = model.config.t_eps
    a, s = model.schedule.alpha_sigma(torch.tensor(t_eps, dtype=torch.float64))
    true = torch.distributions.Normal(a * MU, torch.sqrt(a**2 * S**2 + s**2))
    expected = true.log_prob(x).sum(1)
    z1 = affine_flow_end(model, x)
    a1, s1 = model.schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
    law = torch.distributions.Normal(a1 * MU, torch.sqrt(a1**2 * S**2 + s1**2))
    base = torch.distributions.Normal(0.0, s1)
    mismatch = (base.log_prob(z1) - law.log_prob(z1)).sum(1)
    assert torch.allclose(est.log_prob, expected + mismatch, atol=1e-3), (
        (est.log_prob - expected - mismatch).abs().max())
    if sde == "ve":  # σ_max = 50: the base is nearly the law of z_1 (mean μ, var s² + σ²)
        assert mismatch.abs().max() < 0.05
    assert "dopri5" in est.note and est.nfe > 0
    assert torch.allclose(model.log_prob(x), est.log_prob)


def check_moments(x: Tensor, mu: Tensor, s: Tensor, var_bias: float = 0.0) -> None:
    """Mean and variance per coordinate within 4.5 standard errors (the variance also within
    a known relative bias of the sampler)."""
    n = x.shape[0]
    x = x.double()
    mean_err = (x.mean(0) - mu) / (s / math.sqrt(n))
    assert (mean_err.abs() < 4.5).all(), mean_err
    rel = x.var(0) / s**2 - 1
    assert (rel.abs() < 4.5 * math.sqrt(2 / n) + var_bias).all(), rel


@pytest.mark.parametrize("solver, steps", [
    ("euler_maruyama", 500), ("ancestral", 300), ("ddim", 100), ("heun", 50), ("dopri5", 1),
])
@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_samplers_with_the_exact_score_recover_the_moments(solver: str, steps: int,
                                                           sde: str) -> None:
    n = 4000
    model = with_oracle(score_sde(sde=sde, sigma_max=20.0, t_eps=1e-3, sample_rtol=1e-6,
                                  sample_atol=1e-6))
    g = torch.Generator().manual_seed(11)
    x = model.sample(n, generator=g, steps=steps, solver=solver)
    assert x.shape == (n, 2) and x.dtype == torch.float32
    check_moments(x, MU, S)


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_predictor_corrector_with_the_exact_score_recovers_the_moments(sde: str) -> None:
    """One tied Langevin corrector step of size α ≈ 2 r² Var (r = 0.16) per predictor step
    inflates the variance by at most 1/(1 - r²) - 1 ≈ 2.6%."""
    n = 3000
    model = with_oracle(score_sde(sde=sde, sigma_max=20.0, t_eps=1e-3))
    x = model.sample(n, generator=torch.Generator().manual_seed(12), steps=300, solver="pc")
    check_moments(x, MU, S, var_bias=0.05)


def test_ddim_eta_and_the_sampler_names() -> None:
    model = score_sde(sample_steps=3, sample_rtol=1e-3, sample_atol=1e-3)
    for name in (*SAMPLERS, *SOLVERS):
        out = model.sample(3, solver=name, generator=torch.Generator().manual_seed(0))
        assert out.shape == (3, 2) and out.dtype == torch.float32
    assert model.sample(2, solver="ddim", eta=1.0).shape == (2, 2)
    with pytest.raises(ConfigError, match="unknown|must be one of") as info:
        model.sample(2, solver="rk45")
    assert "euler_maruyama" in str(info.value) and "dopri5" in str(info.value)
    with pytest.raises(ConfigError, match="eta"):
        model.sample(2, solver="pc", eta=0.5)
    with pytest.raises(ConfigError, match="guidance"):
        model.sample(2, guidance=2.0)
    with pytest.raises(ConfigError, match="steps"):
        model.sample(2, steps=0)
    with pytest.raises(ConfigError, match="sampler"):
        score_sde(sampler="leapfrog")
    with pytest.raises(ConfigError, match="t_eps"):
        score_sde(sde="vp", t_eps=0.0)
    assert ScoreSDE.sample_options == {"steps", "solver", "eta", "guidance"}


def test_sampling_uses_only_its_generator() -> None:
    model = score_sde(sampler="euler_maruyama", sample_steps=4)
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        draws.append(model.sample(5, generator=torch.Generator().manual_seed(9)))
    assert torch.equal(draws[0], draws[1])


# --- NCSN: annealed Langevin on a mixture -------------------------------------------------------


class MixtureOracle(nn.Module):
    """-σ ∇ log p_σ for p = Σ π_k N(m_k, s²) in 1-D, p_σ = p * N(0, σ²)."""

    def __init__(self, schedule: NoiseSchedule, weights: list[float], means: list[float],
                 s: float) -> None:
        super().__init__()
        self.schedule, self.s = schedule, s
        self.register_buffer("logw", torch.tensor(weights, dtype=torch.float64).log())
        self.register_buffer("means", torch.tensor(means, dtype=torch.float64))

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        _, sigma = self.schedule.alpha_sigma(broadcast_time(t, z))
        var = self.s**2 + sigma**2
        logits = self.logw - (z - self.means) ** 2 / (2 * var)
        resp = torch.softmax(logits, dim=1)
        score = (resp * (self.means - z)).sum(1, keepdim=True) / var
        return -sigma * score


def test_annealed_langevin_recovers_the_mixture_weights() -> None:
    """Song & Ermon's example: modes far apart with weights 0.2 / 0.8. Annealing gets the
    weights right; Langevin at the smallest level alone keeps the starting split."""
    model = build_model("ncsn", SPEC1, {**TINY, "sigma_max": 20.0, "sigma_min": 0.1,
                                        "noise_levels": 10, "steps_per_level": 100,
                                        "epsilon": 1e-3}).double()
    assert isinstance(model, NCSN)
    model.net = MixtureOracle(model.schedule, [0.2, 0.8], [-5.0, 5.0], 1.0)
    n = 2000
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    right = float((x > 0).double().mean())
    assert abs(right - 0.8) < 4 * math.sqrt(0.16 / n), right
    assert abs(float(x[x > 0].std()) - 1.0) < 0.1
    g = torch.Generator().manual_seed(1)
    x0 = 16 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 8
    t_min = torch.zeros(n, dtype=torch.float64)
    plain = langevin(x0, lambda z: model.score(z, t_min), 1e-3 * 100, 200, generator=g)
    assert abs(float((plain > 0).double().mean()) - 0.5) < 0.05


def test_ncsn_options_and_errors() -> None:
    model = build_model("ncsn", SPEC2, {**TINY, "noise_levels": 3, "steps_per_level": 2})
    assert model.sample(3, solver="langevin").shape == (3, 2)
    assert model.sample(3, steps=1, generator=torch.Generator().manual_seed(0)).shape == (3, 2)
    with pytest.raises(ConfigError, match="langevin"):
        model.sample(3, solver="euler_maruyama")
    with pytest.raises(ConfigError, match="guidance"):
        model.sample(3, guidance=0.0)
    with pytest.raises(NotImplementedError):
        model.log_prob(torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="noise_levels"):
        build_model("ncsn", SPEC2, {"noise_levels": 1})
    with pytest.raises(ConfigError, match="sigma_min"):
        build_model("ncsn", SPEC2, {"sigma_min": 2.0, "sigma_max": 1.0})
    uniform = build_model("ncsn", SPEC2, {**TINY, "init": "uniform", "noise_levels": 2})
    assert torch.isfinite(uniform.sample(4)).all()
    assert NCSN.sample_options == {"steps", "solver", "guidance"}
    assert model.sigmas[0] == pytest.approx(10.0) and model.sigmas[-1] == pytest.approx(0.01)


# --- the digits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fields", [
    ("score_sde", {"sampler": "euler_maruyama", "sample_steps": 20}),
    ("ncsn", {"noise_levels": 5, "steps_per_level": 2}),
    ("ncsn", {"noise_levels": 5, "steps_per_level": 2, "objective": "ssm"}),
])
def test_a_short_run_on_the_digits(name: str, fields: dict, digits) -> None:
    model = build_model(name, digits.spec, {**TINY, "hidden": 64, **fields})
    x, _ = digits.train.batch(slice(0, 128), digits.spec)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    before = seeded_loss(model, x, 0)
    for _ in range(40):
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
    assert seeded_loss(model, x, 0) < before - 0.1 * abs(before) - 0.1
    out = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 8, 8) and out.dtype == digits.spec.dtype
    assert int(out.min()) >= 0 and int(out.max()) <= 16


def test_conditional_score_sde_on_the_digits(digits) -> None:
    model = build_model("score_sde", digits.spec, {**TINY, "conditional": True,
                                                   "sampler": "ddim", "sample_steps": 3,
                                                   "eval_solver": "euler", "eval_steps": 4,
                                                   "eval_chunk": 3})
    x, y = digits.test.batch(slice(0, 5), digits.spec)
    assert model.loss(x, y).shape == (5,)
    with pytest.raises(DataError, match="labels"):
        model.loss(x)
    y_new = torch.tensor([0, 1, 2, 3])
    assert model.sample(4, y=y_new, guidance=2.0).shape == (4, 1, 8, 8)
    with torch.no_grad():
        cond = model.log_prob_estimate(x, y)
        uncond = model.log_prob_estimate(x)
    assert cond.log_prob.shape == uncond.log_prob.shape == (5,)
    assert torch.isfinite(cond.log_prob).all() and torch.isfinite(uncond.log_prob).all()


def test_the_evaluator_labels_the_ode_estimate(digits) -> None:
    model = build_model("score_sde", digits.spec, {**TINY, "eval_solver": "euler",
                                                   "eval_steps": 4})
    split = digits.test.subset(slice(0, 8))
    result = dgm.eval.likelihood.evaluate(model, split, method="estimate")
    assert result.kind == "estimate" and result.method == "estimate"
    assert math.isfinite(result.nll_nats) and result.bpd is not None
    assert "euler" in result.label and "dequantization" in result.label
    assert "probability-flow" in result.label
    assert result.nll_nats > 0  # a bound on the NLL of 17-level data
    with pytest.raises(ConfigError):
        dgm.eval.likelihood.evaluate(build_model("ncsn", digits.spec, TINY), split)


@pytest.mark.parametrize("name,options,expected", [
    ("ncsn", {"noise_levels": 3, "steps_per_level": 2, "final_denoise": True}, 3 * 2 + 1),
    ("score_sde", {"sampler": "euler_maruyama", "sample_steps": 4}, None),
    ("flow_matching", {"sampler": "euler", "sample_steps": 4}, 4),
    ("cnf", {"sampler": "rk4", "sample_steps": 2}, 8),
    ("ddpm", {"steps": 6}, None),
    ("vdm", {"sample_steps": 4, "schedule_hidden": 8}, None),
])
def test_every_sampler_reports_its_network_evaluations(name: str, options: dict,
                                                       expected: int | None) -> None:
    """``last_sample_nfe`` is what ``dgm sample`` prints and the NFE-quality table records."""
    from dgm.core.spec import DataKind, DataSpec

    spec = DataSpec((4,), DataKind.DISCRETE, num_levels=5)
    m = build_model(name, spec, {"network": "mlp", "hidden": 16, "num_hidden": 1,
                                 "time_dim": 8, **options})
    m.eval()
    s = m.sample(3)
    assert s.shape == (3, 4)
    assert m.last_sample_nfe > 0
    if expected is not None:
        assert m.last_sample_nfe == expected
