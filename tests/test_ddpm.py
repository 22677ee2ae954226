"""DDPM as a hierarchical VAE (Book §5.5.3): decoder, bound, samplers."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data.dataset import Split
from dgm.eval.likelihood import evaluate, resolve_method
from dgm.core.distributions import kl_normal_diag
from dgm.models.diffusion.common import discretized_gaussian_log_prob
from dgm.models.diffusion.ddpm import DDPM
from dgm.models.diffusion.samplers import ancestral, ddim

from util import loss_drop

TINY = dict(network="mlp", hidden=16, num_hidden=1, time_dim=8)


def _randomize(model: torch.nn.Module, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_discretized_gaussian_is_a_pmf_over_the_levels() -> None:
    levels = torch.arange(17).reshape(17, 1)
    for mean, log_scale in [(0.1, -1.0), (-0.95, -6.0), (3.0, -4.0), (0.0, 2.0), (-40., -9.)]:
        m = torch.full((1, 5), mean, dtype=torch.float64, requires_grad=True)
        s = torch.full((1, 5), log_scale, dtype=torch.float64, requires_grad=True)
        logp = discretized_gaussian_log_prob(levels.expand(17, 5), m, s, 17)
        total = torch.logsumexp(logp, 0)
        torch.testing.assert_close(total, torch.zeros(5, dtype=torch.float64), atol=1e-9,
                                   rtol=0)
        logp.sum().backward()
        assert torch.isfinite(m.grad).all() and torch.isfinite(s.grad).all()


def test_gaussian_kl_is_torchs() -> None:
    gen = torch.Generator().manual_seed(0)
    mq, mp, lq, lp = (torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(4))
    ours = kl_normal_diag(mq, lq, mp, lp)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mq, (0.5 * lq).exp()),
                                            torch.distributions.Normal(mp, (0.5 * lp).exp()))
    torch.testing.assert_close(ours, ref)


def test_posterior_tables_are_the_closed_form() -> None:
    # μ̃ = √ᾱ_{i-1} β_i/(1-ᾱ_i) x + √α_i (1-ᾱ_{i-1})/(1-ᾱ_i) z, β̃ = (1-ᾱ_{i-1})/(1-ᾱ_i) β_i
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    m = build_model("ddpm", spec, steps=10, **TINY)
    ab = m.abar.double()
    i = 4
    beta = 1 - ab[i] / ab[i - 1]
    assert float(m.coef_x[i]) == pytest.approx(float(ab[i - 1].sqrt() * beta / (1 - ab[i])))
    assert float(m.coef_z[i]) == pytest.approx(
        float((1 - beta).sqrt() * (1 - ab[i - 1]) / (1 - ab[i])))
    assert float(m.log_post_var[i].exp()) == pytest.approx(
        float((1 - ab[i - 1]) / (1 - ab[i]) * beta), rel=1e-5)
    assert float(m.log_beta[i].exp()) == pytest.approx(float(beta), rel=1e-5)


def _path_log_weights(m: DDPM, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """log p(x, z_{1:T}) - log q(z_{1:T} | x) along k forward chains per example (k, N)."""
    T = m.config.steps
    ab = m.abar.double()
    betas = 1 - ab[1:] / ab[:-1]
    n = x.shape[0]
    xr = x.repeat(k, 1)
    x0 = m.to_model_space(xr).double()
    z_prev, zs, log_q = x0, [], torch.zeros(k * n, dtype=torch.float64)
    for i in range(1, T + 1):
        b = betas[i - 1]
        z = (1 - b).sqrt() * z_prev + b.sqrt() * torch.randn(z_prev.shape, generator=gen,
                                                             dtype=torch.float64)
        log_q += (-0.5 * (z - (1 - b).sqrt() * z_prev) ** 2 / b
                  - 0.5 * torch.log(2 * math.pi * b)).sum(1)
        zs.append(z)
        z_prev = z
    log_p = (-0.5 * zs[-1] ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)
    for i in range(T, 0, -1):
        z = zs[i - 1].float()
        idx = torch.full((k * n,), i, dtype=torch.long)
        x_hat, _, var_out = m._predict(z, idx, None)
        x_hat = m._clip(x_hat)
        mean = (m._at(m.coef_x, idx, z) * x_hat + m._at(m.coef_z, idx, z) * z).double()
        log_var = m._log_variance(idx, var_out, z).double()
        if i == 1:
            log_p += discretized_gaussian_log_prob(xr, mean, 0.5 * log_var, m.num_levels).sum(1)
        else:
            target = zs[i - 2]
            log_p += (-0.5 * (target - mean) ** 2 / log_var.exp()
                      - 0.5 * (log_var + math.log(2 * math.pi))).sum(1)
    return (log_p - log_q).reshape(k, n)


@pytest.mark.parametrize("variance,prediction", [("large", "noise"), ("small", "noise"),
                                                 ("learned", "levels")])
def test_bound_is_below_the_exact_log_likelihood_on_an_enumerable_space(
        variance: str, prediction: str) -> None:
    # 2 coordinates with 3 levels: 9 points. log P(x) by importance sampling over whole
    # forward chains (k large, consistent); the pmf sums to 1; the VLB lies below it.
    torch.manual_seed(0)
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    loss = "hybrid" if variance == "learned" else "simple"
    m = build_model("ddpm", spec, steps=4, variance=variance, prediction=prediction, loss=loss,
                    **TINY)
    _randomize(m)
    m.eval()
    xs = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lw = _path_log_weights(m, xs, 20000, gen)
        log_px = torch.logsumexp(lw, 0) - math.log(lw.shape[0])
        vlb = torch.stack([m.log_prob(xs) for _ in range(400)]).double().mean(0)
    assert float(torch.logsumexp(log_px, 0).exp()) == pytest.approx(1.0, abs=0.03)
    assert (vlb <= log_px + 0.02).all()
    assert float((log_px - vlb).mean()) > 0.01  # a real gap for an untrained model


def test_stratified_bound_is_unbiased() -> None:
    torch.manual_seed(0)
    spec = DataSpec((3,), DataKind.DISCRETE, num_levels=5)
    full = build_model("ddpm", spec, steps=12, **TINY)
    _randomize(full)
    part = build_model("ddpm", spec, steps=12, bound_terms=3, **TINY)
    part.load_state_dict(full.state_dict())
    x = torch.tensor([[0, 2, 4], [1, 1, 3]])
    with torch.no_grad():
        a = torch.stack([full.log_prob(x) for _ in range(300)]).double()
        b = torch.stack([part.log_prob(x) for _ in range(300)]).double()
    se = (a.var(0) / 300 + b.var(0) / 300).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()


def test_prior_term_is_the_closed_form_kl() -> None:
    spec = DataSpec((4,), DataKind.CONTINUOUS)
    m = build_model("ddpm", spec, steps=50, **TINY)
    x0 = torch.randn(3, 4)
    ab = m.abar[-1]
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(ab.sqrt() * x0, (1 - ab).sqrt()),
        torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(m.prior_term(x0), ref)


def _oracle(mu: float, s2: float, schedule):
    """(x̂, ε̂) = (E[x | z_t], E[ε | z_t]) for data N(mu, s2)."""

    def denoise(z: torch.Tensor, t: torch.Tensor):
        alpha, sigma = schedule.alpha_sigma(t.reshape(-1, *([1] * (z.dim() - 1))))
        var = alpha**2 * s2 + sigma**2
        x_hat = mu + alpha * s2 / var * (z - alpha * mu)
        return x_hat, (z - alpha * x_hat) / sigma

    return denoise


def test_ddim_with_eta_one_is_ancestral_with_the_small_variance() -> None:
    # the two transitions coincide draw by draw (Song et al. 2021, §4.1)
    from dgm.core.schedules import VPLinear

    schedule = VPLinear().double()
    denoise = _oracle(0.5, 0.3, schedule)
    ts = torch.cat([torch.linspace(1, 0.02, 30, dtype=torch.float64),
                    torch.zeros(1, dtype=torch.float64)])
    z = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = ancestral(denoise, schedule, z, ts, variance="small",
                  generator=torch.Generator().manual_seed(1))
    b = ddim(denoise, schedule, z, ts, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.z, b.z)
    c = ddim(denoise, schedule, z, ts, eta=0.0)
    assert not torch.allclose(a.z, c.z)


@pytest.mark.parametrize("solver", ["ancestral", "ddim", "heun", "dopri5"])
def test_samplers_with_an_oracle_reproduce_gaussian_data(solver: str) -> None:
    spec = DataSpec((1,), DataKind.CONTINUOUS)
    # T = 1000 levels: the ancestral and DDIM chains' discretization bias is < 5% there
    m = build_model("ddpm", spec, steps=1000, variance="small", eval_rtol=1e-3, eval_atol=1e-3,
                    **TINY)
    mu, s2 = 0.8, 0.09
    oracle = _oracle(mu, s2, m.schedule)
    m._denoiser = lambda y, guidance, cache, clip=True: oracle  # type: ignore[method-assign]
    out = m.sample(20000, solver=solver, steps=1000 if solver != "heun" else 30,
                   generator=torch.Generator().manual_seed(0)).double()
    se = math.sqrt(s2 / 20000)
    assert float(out.mean()) == pytest.approx(mu, abs=4 * se + 0.005)
    assert float(out.var()) == pytest.approx(s2, rel=0.05)


def test_options_are_checked() -> None:
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    with pytest.raises(ConfigError, match="learned"):
        build_model("ddpm", spec, variance="learned", loss="simple", **TINY)
    m = build_model("ddpm", spec, steps=5, **TINY)
    with pytest.raises(ConfigError, match="unknown sampler"):
        m.sample(2, solver="leapfrog")
    with pytest.raises(ConfigError, match="guidance"):
        m.sample(2, guidance=2.0)


def test_the_bound_is_scored_as_a_bound_and_never_through_iwae(digits) -> None:
    m = build_model("ddpm", digits.spec, steps=4, **TINY)
    assert resolve_method(m, "auto") == "bound"
    with pytest.raises(ConfigError, match="bound"):
        resolve_method(m, "iwae")
    split = Split(digits.test.x[:20], None)
    e = evaluate(m, split, k=1)
    assert e.kind == "upper_bound" and "VLB (T = 4" in e.label and "discretized" in e.label
    # the bound is in the discrete space: far above 0 and finite
    assert 20 < e.nll_nats < 2000
    ode = evaluate(m, split, method="estimate")
    assert ode.kind == "estimate" and "dequantization" in ode.label and ode.nfe > 0


@pytest.mark.parametrize("variance,loss,prediction", [
    ("large", "simple", "noise"), ("small", "vlb", "noise"), ("learned", "hybrid", "noise"),
    ("large", "simple", "levels"), ("learned", "hybrid", "levels")])
def test_every_loss_trains(digits, variance: str, loss: str, prediction: str) -> None:
    torch.manual_seed(0)
    m = build_model("ddpm", digits.spec, steps=50, variance=variance, loss=loss, network="mlp",
                    hidden=32, num_hidden=1, time_dim=16, prediction=prediction)
    x, _ = digits.train.batch(slice(0, 64), digits.spec)

    def seeded_loss() -> float:  # the same levels and noise before and after (vlb is noisy)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            return float(torch.stack([m.loss(x).mean() for _ in range(8)]).mean())

    before = seeded_loss()
    loss_drop(m, x, steps=30, lr=3e-3)
    assert seeded_loss() < before
    s = m.sample(3, steps=5)
    assert s.dtype == torch.long and s.shape == (3, 1, 8, 8) and 0 <= s.min() <= s.max() <= 16


def test_class_conditional_guidance(digits) -> None:
    m = build_model("ddpm", digits.spec, steps=5, conditional=True, **TINY)
    _randomize(m)
    y = torch.tensor([3, 3])
    a = m.sample(2, y=y, guidance=1.0, generator=torch.Generator().manual_seed(0), steps=3)
    b = m.sample(2, y=y, guidance=4.0, generator=torch.Generator().manual_seed(0), steps=3)
    assert a.shape == b.shape and not torch.equal(a, b)
    x, labels = digits.train.batch(slice(0, 8), digits.spec)
    assert torch.isfinite(m.loss(x, labels)).all()


def test_levels_prediction_makes_the_low_noise_terms_free(digits) -> None:
    """With x̂ the posterior mean over the levels, an untrained network already denoises
    (almost) exactly where σ_i is far below the levels' spacing 2/17 = 0.118 (σ_1 = 0.010,
    σ_2 = 0.015): L_0 and the first KL term L_1 (small variances: the reverse step is then
    the forward posterior) cost next to nothing, where an untrained ε-network pays dearly
    for L_1 (its x̂ = z/α keeps the noise, which the tiny reverse variance punishes)."""
    x = digits.test.x[:16]
    costs = {}
    for prediction in ("levels", "noise"):
        torch.manual_seed(0)
        m = build_model("ddpm", digits.spec, variance="small", prediction=prediction,
                        network="mlp", hidden=32, num_hidden=1, time_dim=16)
        m.eval()
        x0 = m.to_model_space(x)
        with torch.no_grad():
            costs[prediction] = [
                float(m._term(x, x0, torch.full((16,), i), None, noise=torch.randn_like(x0),
                              clip=True).mean()) for i in (1, 2)]
    assert costs["levels"][0] < 1e-6 and costs["levels"][1] < 1.0
    assert costs["noise"][1] > 20 * costs["levels"][1]  # L_1: 38.6 vs 0.28 nats


@pytest.mark.parametrize("name", ["ddpm", "vdm"])
def test_conditional_model_without_labels_scores_the_unconditional_model(digits, name) -> None:
    """log_prob(x) of a class-conditional model with y None is the null label's log p(x), as
    for the CNF and score models, not log p(x | some class) for classes taken in turn."""
    options = {"steps": 5} if name == "ddpm" else {"schedule_hidden": 8, "bound_draws": 2}
    m = build_model(name, digits.spec, conditional=True, **options, **TINY)
    _randomize(m)
    m.eval()
    x = digits.test.x[:4]
    null = torch.full((4,), 10)

    def score(y):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return m.log_prob(x, y)

    torch.testing.assert_close(score(None), score(null))
    assert not torch.allclose(score(None), score(torch.arange(4)))
    with pytest.raises(DataError):
        m.log_prob(x, torch.zeros(3, dtype=torch.long))
