"""The variational diffusion model (Kingma et al. 2021): decoder, bound, learned schedule."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data.dataset import Split
from dgm.eval.likelihood import evaluate, resolve_method
from dgm.core.distributions import kl_normal_diag

from util import loss_drop

TINY = dict(network="mlp", hidden=16, num_hidden=1, time_dim=8, schedule_hidden=8)


def test_decoder_is_a_pmf_over_the_levels() -> None:
    spec = DataSpec((1,), DataKind.DISCRETE, num_levels=7)
    m = build_model("vdm", spec, gamma_min=-2.0, **TINY)
    z0 = torch.linspace(-1.5, 1.5, 5).reshape(5, 1)
    total = torch.stack([m._decoder_log_prob(torch.full((5, 1), k), z0) for k in range(7)])
    torch.testing.assert_close(torch.logsumexp(total, 0), torch.zeros(5), atol=1e-5, rtol=0)


def test_fixed_schedule_is_linear_with_the_given_ends() -> None:
    spec = DataSpec((2,), DataKind.CONTINUOUS)
    m = build_model("vdm", spec, schedule="fixed", gamma_min=-10.0, gamma_max=4.0, **TINY)
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(m.schedule.gamma(t).detach(), -10.0 + 14.0 * t, atol=1e-4,
                               rtol=0)
    assert not any(p.requires_grad for p in m.schedule.parameters())


def test_continuous_diffusion_term_is_the_limit_of_the_discrete_kls() -> None:
    # Σ_i KL(q(z_s|z_t,x) || p(z_s|z_t)) over T levels -> ½ E_t[γ'(t) ||ε - ε̂||²] (Eq. 17)
    torch.manual_seed(0)
    spec = DataSpec((2,), DataKind.CONTINUOUS)
    m = build_model("vdm", spec, schedule="fixed", gamma_min=-6.0, gamma_max=3.0, **TINY)
    with torch.no_grad():
        for p in m.net.parameters():
            p.normal_(0, 0.3)
    x = torch.tensor([[0.3, -0.5]]).repeat(4000, 1)
    with torch.no_grad():
        t = torch.rand(4000)
        _, _, cont = m._bound_terms(x, None, t)
        T = 400
        i = torch.randint(1, T + 1, (4000,))
        ts, ss = i / T, (i - 1) / T
        a_t, s_t = m.schedule.alpha_sigma(ts[:, None])
        a_s, s_s = m.schedule.alpha_sigma(ss[:, None])
        z = a_t * x + s_t * torch.randn_like(x)
        alpha, sigma = a_t, s_t
        x_hat = (z - sigma * m.net(z, ts)) / alpha
        a_ts, var_ts = a_t / a_s, s_t**2 - (a_t / a_s) ** 2 * s_s**2
        post_var = var_ts * s_s**2 / s_t**2
        mean_q = a_ts * s_s**2 / s_t**2 * z + a_s * var_ts / s_t**2 * x
        mean_p = a_ts * s_s**2 / s_t**2 * z + a_s * var_ts / s_t**2 * x_hat
        disc = T * kl_normal_diag(mean_q, post_var.log(), mean_p, post_var.log()).sum(1)
    se = math.sqrt(float(cont.var() + disc.var()) / 4000)
    assert float(cont.mean()) == pytest.approx(float(disc.mean()), abs=4 * se + 0.01)


def test_schedule_shape_gets_the_gradient_of_the_squared_loss() -> None:
    # VDM, App. I.2: the shape minimizes the variance; the ends follow the bound itself
    torch.manual_seed(0)
    spec = DataSpec((3,), DataKind.DISCRETE, num_levels=5)
    m = build_model("vdm", spec, **TINY)
    x = torch.randint(0, 5, (8, 3))
    torch.manual_seed(1)
    m.loss(x).mean().backward()
    trick = {n: p.grad.clone() for n, p in m.schedule.named_parameters()}
    m.zero_grad()
    torch.manual_seed(1)
    t = m._times(8, x.device)
    prior, recon, diffusion = m._bound_terms(x, None, t)
    shape_params = [m.schedule.l1.weight, m.schedule.l2.weight, m.schedule.l3.weight]
    want = torch.autograd.grad(diffusion.pow(2).mean(), shape_params, retain_graph=True)
    ends = torch.autograd.grad((prior + recon + diffusion).mean(),
                               [m.schedule.gamma_0, m.schedule.gamma_1])
    for name, g in zip(["l1.weight", "l2.weight", "l3.weight"], want):
        torch.testing.assert_close(trick[name], g, rtol=3e-3, atol=1e-5)
    torch.testing.assert_close(trick["gamma_0"], ends[0])
    torch.testing.assert_close(trick["gamma_1"], ends[1])


def test_bound_is_scored_as_a_bound(digits) -> None:
    m = build_model("vdm", digits.spec, bound_draws=2, **TINY)
    assert resolve_method(m, "auto") == "bound"
    e = evaluate(m, Split(digits.test.x[:16], None), k=2)
    assert e.kind == "upper_bound" and "continuous-time diffusion VLB" in e.label
    assert 50 < e.nll_nats < 3000


def test_trains_and_samples(digits) -> None:
    torch.manual_seed(0)
    m = build_model("vdm", digits.spec, **TINY)
    x, _ = digits.train.batch(slice(0, 64), digits.spec)
    assert loss_drop(m, x, steps=30, lr=3e-3) > 0
    for solver in ("ancestral", "ddim", "euler"):
        s = m.sample(3, steps=4, solver=solver)
        assert s.dtype == torch.long and s.shape == (3, 1, 8, 8)
        assert 0 <= int(s.min()) <= int(s.max()) <= 16
    assert m.last_sample_nfe == 5  # 4 Euler steps + the final denoising evaluation


@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_time_scale_reaches_the_time_features(digits, network: str) -> None:
    from dgm.core.denoisers import SinusoidalEmbedding

    model = build_model("vdm", digits.spec, {"network": network, "hidden": 16, "num_hidden": 1,
                                             "base": 8, "time_dim": 8, "time_scale": 7.0})
    scales = [m.scale for m in model.modules() if isinstance(m, SinusoidalEmbedding)]
    assert scales == [7.0]
    with pytest.raises(Exception, match="time_scale"):
        build_model("vdm", digits.spec, {"time_scale": 0.0})


def test_conditional_ode_likelihood_chunks_labels_with_the_images(digits) -> None:
    """Each chunk of the ODE likelihood reads its own images' labels: chunking changes nothing
    (a fixed-step solver, so each example's path is independent of the others)."""
    settings = {**TINY, "conditional": True, "eval_solver": "rk4", "eval_steps": 3,
                "eval_divergence": "exact"}
    model = build_model("vdm", digits.spec, {**settings, "eval_chunk": 5})
    chunked = build_model("vdm", digits.spec, {**settings, "eval_chunk": 2})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    chunked.load_state_dict(model.state_dict())
    model.eval(), chunked.eval()
    x, y = digits.test.x[:5], torch.as_tensor(digits.test.y[:5]).long()
    whole = model.log_prob_estimate(x, y, generator=torch.Generator().manual_seed(0)).log_prob
    parts = chunked.log_prob_estimate(x, y, generator=torch.Generator().manual_seed(0)).log_prob
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-3)
    other = model.log_prob_estimate(x, (y + 1) % 10, generator=torch.Generator().manual_seed(0))
    assert (other.log_prob - whole).abs().max() > 1e-3  # the labels do reach the network


def test_level_posterior_mean_is_bayes_rule_over_the_levels() -> None:
    from dgm.models.diffusion.common import level_posterior_mean

    L = 5
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64)
    h = torch.randn(3, L, 4, generator=g, dtype=torch.float64)
    alpha, sigma = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    got = level_posterior_mean(z, alpha, sigma, h, L)
    c = (2 * torch.arange(L, dtype=torch.float64) + 1) / L - 1
    for i in range(3):
        for j in range(4):
            prior = torch.softmax(h[i, :, j], 0)
            lik = torch.exp(-0.5 * ((z[i, j] - alpha * c) / sigma) ** 2)
            post = prior * lik / (prior * lik).sum()
            assert abs(float((post * c).sum() - got[i, j])) < 1e-12


def test_levels_prediction_denoises_exactly_at_small_noise(digits) -> None:
    """A fresh network (zero corrections) already recovers ε where σ is far below the levels'
    spacing, so the diffusion term there is ~0 (an ε-network starts at ε̂ = 0: cost ~D/2·γ')."""
    m = build_model("vdm", digits.spec, {**TINY, "prediction": "levels"})
    x = digits.test.x[:8]
    x0 = m.to_model_space(x)
    gamma = torch.tensor(-12.0)
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    eps = torch.randn_like(x0)
    z = alpha * x0 + sigma * eps
    t = torch.full((8,), 0.01)
    with torch.no_grad():
        eps_hat = m._eps_hat(z, t, None, alpha, sigma)
        plain = build_model("vdm", digits.spec, TINY)._eps_hat(z, t, None, alpha, sigma)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-3, atol=1e-3)
    assert float((plain - eps).pow(2).mean()) > 0.5
    with pytest.raises(Exception, match="discrete"):
        build_model("vdm", DataSpec((2,), DataKind.CONTINUOUS),
                    {**TINY, "prediction": "levels"})


@pytest.mark.parametrize("name", ["vdm", "ddpm"])
def test_ode_likelihood_dequantizes_through_the_forward_process(name: str) -> None:
    """A fresh levels-prediction network (zero corrections) is the exact denoiser of data
    uniform over the levels, so its probability-flow ODE is that data's exact flow: the ODE
    likelihood through the forward process and the model's decoder must give log(1/L) per
    coordinate (a bound, so at most that, and tight at small noise), and the pmf it implies
    sums to at most 1 (measured: within 1e-4 of log(1/3))."""
    L = 3
    spec = DataSpec((1,), DataKind.DISCRETE, num_levels=L)
    options = {**TINY, "prediction": "levels", "eval_solver": "dopri5", "eval_rtol": 1e-5,
               "eval_atol": 1e-5, "eval_divergence": "exact", "eval_draws": 2}
    if name == "vdm":
        options.update(schedule="fixed", gamma_min=-9.0, gamma_max=9.0)
    else:
        options.pop("schedule_hidden")
        options.update(steps=1000, variance="small")
    m = build_model(name, spec, options)
    m.eval()
    x = torch.arange(L).reshape(-1, 1)
    est = m.log_prob_estimate(x, generator=torch.Generator().manual_seed(0))
    assert "Gaussian dequantization by the forward process" in est.note
    target = -math.log(L)
    assert (est.log_prob <= target + 0.01).all()
    assert (est.log_prob >= target - 0.01).all(), est.log_prob
    assert float(est.log_prob.exp().sum()) <= 1.01
