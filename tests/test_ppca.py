"""Probabilistic PCA (Book §5.2): the closed forms, the ELBO/IWAE identities, the ML fit,
dequantized bounds on discrete data, and training through the real trainer."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import distributions as td

from dgm.config import load_config
from dgm.core.base import (
    ExpectationMaximization,
    ImportanceWeighted,
    LatentVariable,
    Likelihood,
)
from dgm.core.distributions import log_normal_diag
from dgm.core.fitting import EMFit
from dgm.core.errors import ConfigError, DataError
from dgm.core.objectives import iwae_loss
from dgm.core.registry import build_model
from dgm.data.dataset import Split
from dgm.core.spec import DataKind, DataSpec
from dgm.eval.likelihood import per_example_nll
from dgm.models.latent.ppca import PPCA, PPCAConfig
from dgm.runs import load
from dgm.train.trainer import train

PRESET = Path(__file__).resolve().parents[1] / "configs" / "ppca_digits.yaml"


def continuous(dim: int) -> DataSpec:
    return DataSpec((dim,), DataKind.CONTINUOUS)


def set_params(model: PPCA, weight, bias, var) -> PPCA:
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(weight, dtype=torch.float64))
        model.bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
        model.log_var.copy_(torch.log(torch.as_tensor(var, dtype=torch.float64)))
    return model


def random_model(d: int = 5, m: int = 2, var: float = 0.3, seed: int = 1) -> PPCA:
    g = torch.Generator().manual_seed(seed)
    model = PPCA(continuous(d), PPCAConfig(latent_dim=m))
    w = torch.randn(d, m, generator=g, dtype=torch.float64) * 1.5
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return set_params(model, w, b, var)


def joint(model: PPCA) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the joint Gaussian over (z, x), from z ~ N(0, I), x = Wz + b + ε."""
    w, b, var = model.weight.detach(), model.bias.detach(), model.variance.detach()
    d, m = w.shape
    cov = torch.zeros(m + d, m + d, dtype=torch.float64)
    cov[:m, :m] = torch.eye(m, dtype=torch.float64)
    cov[:m, m:] = w.T
    cov[m:, :m] = w
    cov[m:, m:] = w @ w.T + var * torch.eye(d, dtype=torch.float64)
    mean = torch.cat([torch.zeros(m, dtype=torch.float64), b])
    return mean, cov


@dataclass(frozen=True)
class DiagQ:
    """A mean-field proposal N(mean, diag exp(log_var)), as a VAE encoder would give."""

    mean: torch.Tensor
    log_var: torch.Tensor

    def rsample(self, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn((k, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.log_var) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal_diag(z, self.mean, self.log_var).sum(-1)


# -- closed forms -------------------------------------------------------------------------------
def test_marginal_and_posterior_equal_the_joint_gaussian():
    model = random_model(d=5, m=2)
    mean, cov = joint(model)
    m = 2
    marginal = model.marginal()
    assert torch.allclose(marginal.mean, mean[m:], atol=1e-12)
    assert torch.allclose(marginal.covariance, cov[m:, m:], atol=1e-12)
    # Gaussian conditioning of the joint on x: Σ_zx Σ_xx⁻¹ (x - b), I - Σ_zx Σ_xx⁻¹ Σ_xz.
    x = torch.randn(7, 5, dtype=torch.float64)
    gain = torch.linalg.solve(cov[m:, m:], cov[m:, :m]).T  # (M, D)
    post = model.posterior(x)
    assert torch.allclose(post.mean, (x - mean[m:]) @ gain.T, atol=1e-10)
    cond_cov = cov[:m, :m] - gain @ cov[m:, :m]
    assert torch.allclose(post.covariance, cond_cov, atol=1e-10)
    # The covariance is σ² M⁻¹, not the book's misprinted σ⁻² M.
    w, var = model.weight.detach(), model.variance.detach()
    inner = w.T @ w + var * torch.eye(m, dtype=torch.float64)
    assert torch.allclose(post.covariance, var * torch.linalg.inv(inner), atol=1e-10)
    assert not torch.allclose(post.covariance, inner / var, atol=1e-2)


def test_marginal_matches_the_moments_of_ancestral_samples():
    model = random_model(d=4, m=2)
    s = model.sample(40000, generator=torch.Generator().manual_seed(0)).double()
    assert s.dtype == torch.float64 and s.shape == (40000, 4)
    marginal = model.marginal()
    # Standard errors: sqrt(C_ii / n) for the mean, about sqrt(2 / n) C_ii for the variances.
    assert torch.allclose(s.mean(0), marginal.mean.detach(), atol=0.06)
    assert torch.allclose(torch.cov(s.T), marginal.covariance.detach(), rtol=0.05, atol=0.1)


def test_log_prob_equals_multivariate_normal():
    model = random_model(d=6, m=3)
    x = torch.randn(20, 6) * 3
    marginal = model.marginal()
    ref = td.MultivariateNormal(marginal.mean, marginal.covariance).log_prob(x.double())
    assert model.likelihood_on(DataKind.CONTINUOUS) is Likelihood.EXACT
    assert torch.allclose(model.log_prob(x), ref, atol=1e-10)
    assert torch.allclose(model.log_density(x), ref, atol=1e-10)
    assert torch.equal(model.log_weights(x, 3), model.log_prob(x).expand(3, 20))


# -- ELBO, IWAE and the gap --------------------------------------------------------------------
def test_elbo_with_the_exact_posterior_is_the_log_likelihood_for_every_sample():
    model = random_model(d=5, m=2)
    x = torch.randn(6, 5, dtype=torch.float64)
    with torch.no_grad():
        log_w = model.latent_log_weights(x, 500, generator=torch.Generator().manual_seed(0))
        log_p = model.log_prob(x)
    assert log_w.shape == (500, 6)
    assert torch.allclose(log_w, log_p.expand(500, 6), atol=1e-9)  # zero variance
    # IWAE(1) is the one-sample ELBO estimate, for any proposal.
    q = DiagQ(torch.zeros(6, 2, dtype=torch.float64), torch.zeros(6, 2, dtype=torch.float64))
    log_w = model.latent_log_weights(x, 1, q, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(-iwae_loss(log_w), log_w[0], atol=1e-12)


def _mean_field(model: PPCA, x: torch.Tensor) -> DiagQ:
    """The exact posterior mean with the mean-field variances 1 / diag(precision)."""
    post = model.posterior(x)
    precision = torch.linalg.inv(post.covariance).diagonal()
    return DiagQ(post.mean.detach(), (-precision.log()).expand_as(post.mean).detach())


def _correlated_model() -> PPCA:
    model = random_model(d=6, m=3, var=0.2, seed=3)
    with torch.no_grad():  # correlated columns make the posterior far from mean-field
        model.weight[:, 1] += model.weight[:, 0]
    return model


def test_gap_between_log_likelihood_and_elbo_is_the_kl_to_the_exact_posterior():
    model = _correlated_model()
    x = torch.randn(4, 6, dtype=torch.float64) * 2
    q = _mean_field(model, x)
    with torch.no_grad():
        w, b, var = model.weight, model.bias, model.variance
        post = model.posterior(x)
        cov_q = torch.diag_embed(q.log_var.exp())
        # ELBO(q) = E_q log N(x | W z + b, σ² I) - KL(q || N(0, I)), all in closed form.
        resid = (x - q.mean @ w.T - b).square().sum(-1)
        spread = torch.einsum("dm,nmk,dk->n", w, cov_q, w)  # tr(W Σ_q Wᵀ)
        recon = -0.5 * (6 * math.log(2 * math.pi) + 6 * var.log() + (resid + spread) / var)
        kl_prior = 0.5 * (q.log_var.exp() + q.mean.square() - 1 - q.log_var).sum(-1)
        elbo = recon - kl_prior
        gap = td.kl_divergence(
            td.MultivariateNormal(q.mean, cov_q),
            td.MultivariateNormal(post.mean, post.covariance.expand(4, 3, 3)),
        )
        log_p = model.log_prob(x)
        assert (gap > 0.3).all()  # a visible gap
        assert torch.allclose(log_p - elbo, gap, atol=1e-9)
        # The Monte Carlo mean of the latent weights estimates the same ELBO.
        log_w = model.latent_log_weights(x, 40000, q, generator=torch.Generator().manual_seed(0))
        stderr = log_w.std(0) / math.sqrt(40000)
        assert ((log_w.mean(0) - elbo).abs() < 4 * stderr).all()


def test_iwae_with_a_mean_field_proposal_rises_with_k_towards_the_log_likelihood():
    model = _correlated_model()
    x = torch.randn(3, 6, dtype=torch.float64) * 2
    q = _mean_field(model, x)
    total = 1000 * 64
    with torch.no_grad():
        log_w = model.latent_log_weights(x, total, q, generator=torch.Generator().manual_seed(2))
        log_p = model.log_prob(x)
    estimates, errors = [], []
    for k in (1, 10, 100, 1000):
        groups = torch.logsumexp(log_w.reshape(total // k, k, 3), dim=1) - math.log(k)
        estimates.append(groups.mean(0))
        errors.append(groups.std(0) / math.sqrt(total // k))  # standard error of the mean
    for (a, ea), (b, eb) in zip(zip(estimates, errors), zip(estimates[1:], errors[1:])):
        assert (b > a - 4 * (ea**2 + eb**2).sqrt()).all()  # non-decreasing in k
        assert (b <= log_p + 4 * eb).all()  # and still a bound in expectation
    assert (estimates[-1] - estimates[0] > 0.2).all()  # it really rises ...
    assert ((log_p - estimates[-1]) < 0.25 * (log_p - estimates[0])).all()  # ... towards log p


# -- the closed-form fit -----------------------------------------------------------------------
def _synthetic(n: int = 20000, d: int = 10, m: int = 3, var: float = 0.5):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(d, m, generator=g, dtype=torch.float64) * 2
    b = torch.randn(d, generator=g, dtype=torch.float64) * 5 + 10  # a large offset
    z = torch.randn(n, m, generator=g, dtype=torch.float64)
    x = z @ w.T + b + math.sqrt(var) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, w, b, var


def test_closed_form_fit_recovers_the_noise_and_the_subspace():
    x, w, b, var = _synthetic()
    model = PPCA(continuous(10), PPCAConfig(latent_dim=3))
    model.fit_data(x)
    assert abs(model.variance.item() - var) < 0.03 * var
    assert torch.allclose(model.bias.detach(), b, atol=0.1)

    def projector(a):
        q, _ = torch.linalg.qr(a)
        return q @ q.T

    assert torch.linalg.matrix_norm(projector(model.weight.detach()) - projector(w)) < 0.05
    # W is identified up to a rotation: W Wᵀ is.
    ww = model.weight.detach() @ model.weight.detach().T
    assert torch.allclose(ww, w @ w.T, atol=0.15 * float((w @ w.T).abs().max()))


def test_fit_is_a_stationary_point_that_beats_perturbations():
    x, *_ = _synthetic(n=2000)
    model = PPCA(continuous(10), PPCAConfig(latent_dim=3))
    model.fit_data(x)
    mean_ll = model.log_prob(x).mean()
    mean_ll.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() < 1e-8, name
    best = mean_ll.item()
    g = torch.Generator().manual_seed(0)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(10):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n] + 0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            assert model.log_prob(x).mean().item() < best


def test_em_through_batches_gives_the_closed_form_fit():
    x, *_ = _synthetic(n=3000)
    ref = PPCA(continuous(10), PPCAConfig(latent_dim=3))
    ref.fit_data(x)
    model = PPCA(continuous(10), PPCAConfig(latent_dim=3))
    assert model.fit == EMFit() and isinstance(model, ExpectationMaximization)
    model.initialize_from_data(x[:200], torch.Generator().manual_seed(0))
    for _ in range(2):  # the second round reproduces the first
        model.em_begin()
        lls = [model.em_accumulate(batch) for batch in x.split(700)]
        count, s1, s2 = model.em_statistics()
        assert count.item() == 3000 and s2.shape == (10, 10)
        model.em_maximize()
        ww, ww_ref = (m.weight.detach() @ m.weight.detach().T for m in (model, ref))
        assert torch.allclose(ww, ww_ref, atol=1e-9)
        assert torch.allclose(model.bias, ref.bias, atol=1e-10)
        assert torch.allclose(model.variance, ref.variance, atol=1e-12)
    # em_accumulate returns the log-likelihood under the parameters of the E-step.
    assert torch.allclose(torch.cat(lls), ref.log_prob(x), atol=1e-9)


# -- discrete data -----------------------------------------------------------------------------
def test_expected_statistics_fit_equals_the_fit_on_many_dequantized_draws():
    spec = DataSpec((4,), DataKind.DISCRETE, num_levels=5)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 5, (300, 1), generator=g)
    x = (base + torch.randint(-1, 2, (300, 4), generator=g)).clamp(0, 4)  # correlated pixels
    model = PPCA(spec, PPCAConfig(latent_dim=2))
    model.fit_data(x)
    draws = 400
    y = x.double().repeat(draws, 1) + torch.rand(300 * draws, 4, generator=g, dtype=torch.float64)
    cont = PPCA(continuous(4), PPCAConfig(latent_dim=2))
    cont.fit_data(y)
    # Over 120000 points the noise moments have errors around 1e-3.
    assert torch.allclose(model.bias, cont.bias, atol=5e-3)
    assert abs(model.variance.item() - cont.variance.item()) < 5e-3
    ww = [m.weight.detach() @ m.weight.detach().T for m in (model, cont)]
    assert torch.allclose(ww[0], ww[1], atol=1e-2)
    # And log_prob is the exact expectation of the dequantized weights log p(x + u).
    with torch.no_grad():
        log_w = model.log_weights(x[:5], 20000, generator=g)
    stderr = log_w.std(0) / math.sqrt(20000)
    assert ((log_w.mean(0) - model.log_prob(x[:5])).abs() < 4 * stderr).all()


def _exact_log_mass(model: PPCA, x: torch.Tensor, n: int = 400) -> torch.Tensor:
    """log ∫_{[0,1)²} p(x + u) du by the midpoint rule on an n × n grid (2-D data)."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    u = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # (n², 2)
    with torch.no_grad():
        dens = model.log_density((x.double().unsqueeze(1) + u).reshape(-1, 2))
    return torch.logsumexp(dens.reshape(len(x), -1), dim=1) - 2 * math.log(n)


def test_dequantized_bounds_lie_below_the_exact_log_mass_on_a_tiny_space():
    levels = 4
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=levels)
    model = PPCA(spec, PPCAConfig(latent_dim=1))
    set_params(model, [[1.0], [0.9]], [1.8, 2.1], 0.05)  # narrow: p varies inside a bin
    assert model.likelihood_on(spec.kind) is Likelihood.LOWER_BOUND
    assert isinstance(model, ImportanceWeighted)
    grid = torch.arange(levels)
    x = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)  # all 16
    log_p = _exact_log_mass(model, x)
    assert 0.9 < log_p.exp().sum() < 1  # some mass falls outside 0..3
    with torch.no_grad():
        bound = model.log_prob(x)
        m = 1 << 15
        log_w = model.log_weights(x, m, generator=torch.Generator().manual_seed(0))
    assert log_w.shape == (m, 16)
    assert (bound <= log_p + 1e-6).all()
    assert ((log_p - bound) > 0.1).sum() >= 4  # a visible Jensen gap
    likely = log_p > -6  # the cells the IWAE estimate can resolve with m draws
    noise = (log_w - log_p).exp().std(0) / math.sqrt(m)
    previous = bound
    for k in (1, 16, 256, 4096):
        groups = torch.logsumexp(log_w.reshape(m // k, k, 16), dim=1) - math.log(k)
        est, err = groups.mean(0), groups.std(0) / math.sqrt(m // k) + noise
        assert (est[likely] <= log_p[likely] + 4 * err[likely]).all()
        assert (est[likely] >= previous[likely] - 4 * err[likely]).all()
        previous = est
    assert ((previous - log_p)[likely].abs() < 0.05).all()  # IWAE(4096) reaches log P(x)


def test_samples_and_reconstructions_are_integers_in_range():
    spec = DataSpec((1, 3, 3), DataKind.DISCRETE, num_levels=17)
    model = PPCA(spec, PPCAConfig(latent_dim=2))
    x = torch.randint(0, 17, (200, 1, 3, 3))
    model.fit_data(x)
    s = model.sample(500, generator=torch.Generator().manual_seed(0))
    assert s.shape == (500, 1, 3, 3) and s.dtype == torch.long
    assert int(s.min()) == 0 and int(s.max()) == 16  # wide Gaussian: clamped at both ends
    assert torch.equal(s, model.sample(500, generator=torch.Generator().manual_seed(0)))
    r = model.reconstruct(x)
    assert r.dtype == torch.long and r.shape == x.shape and 0 <= int(r.min()) <= int(r.max()) < 17


# -- the latent-variable protocol --------------------------------------------------------------
def test_latent_variable_protocol_in_closed_form():
    model = random_model(d=5, m=2)
    assert isinstance(model, LatentVariable)
    x = torch.randn(8, 5, dtype=torch.float64)
    post = model.posterior(x)
    (means,) = model.latent_means(x)
    assert torch.equal(means, post.mean)
    (kl,) = model.kl_per_level(x)
    ref = td.kl_divergence(
        td.MultivariateNormal(post.mean, post.covariance.expand(8, 2, 2)),
        td.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2).double()),
    )
    assert torch.allclose(kl, ref, atol=1e-10)
    z = torch.randn(8, 2, dtype=torch.float64)
    assert torch.allclose(
        model.prior_log_prob(z), td.Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-12
    )
    assert torch.allclose(
        model.decode_top(z).double(), z @ model.weight.detach().T + model.bias, atol=1e-5
    )
    # With nearly no noise, data in span(W) are reconstructed.
    set_params(model, model.weight.detach(), model.bias.detach(), 1e-8)
    x_span = (z @ model.weight.detach().T + model.bias.detach()).float()
    assert torch.allclose(model.reconstruct(x_span), x_span, atol=1e-4)


# -- trainer, registry, configs ----------------------------------------------------------------
def test_trains_through_the_trainer_to_the_closed_form_fit(tmp_path, digits):
    config = load_config(overrides=[
        "model.name=ppca", "data.name=digits", "model.latent_dim=4", "train.epochs=5",
        "train.patience=0", "train.batch_size=300", "train.progress=false", "train.threads=1",
    ])
    train(config, tmp_path / "r", dataset=digits)
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    # Epoch 2 reproduces epoch 1 bit for bit (integer statistics), so early stopping ends it.
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and records[0]["val"] == records[1]["val"]
    model = load(tmp_path / "r")
    x, _ = digits.train.all(digits.spec)
    ref = PPCA(digits.spec, PPCAConfig(latent_dim=4))
    ref.fit_data(x)
    assert torch.allclose(model.variance, ref.variance, atol=1e-10)
    assert torch.allclose(model.bias, ref.bias, atol=1e-9)
    s = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.long and s.shape == (50, 1, 8, 8)
    assert 0 <= int(s.min()) and int(s.max()) <= 16
    # The evaluator: IWAE(1) equals the one-draw ELBO (same seed), IWAE(100) is tighter.
    val = Split(digits.val.x[:50])
    elbo = per_example_nll(model, val, method="elbo", k=1)
    iwae1 = per_example_nll(model, val, method="iwae", k=1)
    iwae100 = per_example_nll(model, val, method="iwae", k=100)
    assert torch.allclose(elbo, iwae1, atol=1e-9)
    assert iwae100.mean() < elbo.mean()


def test_registry_and_preset_build_the_model():
    spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
    model = build_model("ppca", spec, {"latent_dim": 7})
    assert isinstance(model, PPCA) and model.weight.shape == (64, 7)
    preset = load_config(PRESET)
    assert preset.model_name == "ppca"
    assert build_model("ppca", spec, preset.model_options).latent_dim < 64


@pytest.mark.parametrize("fields", [{"latent_dim": 0}, {"min_var": 0.0}, {"min_var": -1.0}])
def test_bad_config_is_rejected_with_the_field_name(fields):
    with pytest.raises(ConfigError, match=next(iter(fields))):
        PPCAConfig(**fields)


def test_bad_input_is_rejected():
    with pytest.raises(ConfigError, match="latent_dim"):
        PPCA(continuous(3), PPCAConfig(latent_dim=3))
    with pytest.raises(ConfigError):
        PPCA(DataSpec((4,), DataKind.TOKENS, num_levels=3), PPCAConfig(latent_dim=1))
    disc = PPCA(DataSpec((1, 2, 2), DataKind.DISCRETE, num_levels=5), PPCAConfig(latent_dim=1))
    with pytest.raises(DataError, match="integer"):
        disc.log_prob(torch.zeros(3, 1, 2, 2))
    with pytest.raises(DataError, match="0..4"):
        disc.log_weights(torch.full((3, 1, 2, 2), 5), 2)
    wrong_q = DiagQ(torch.zeros(2, 1), torch.zeros(2, 1))  # 2 examples, not 3
    with pytest.raises(DataError, match="posterior"):
        disc.latent_log_weights(torch.zeros(3, 1, 2, 2, dtype=torch.long), 2, wrong_q)
