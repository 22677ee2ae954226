"""Hierarchical VAE: the ELBO and IWAE bounds against a marginal computed by 2-D quadrature (two
1-D latent levels), closed-form KLs against Monte Carlo, the Δlogvar clamp, the loss's parts,
warm-up, and the model contract for both inferences and any number of levels."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Normal
from util import loss_drop

from dgm.core import build_model
from dgm.core.base import ImportanceWeighted, LatentVariable, Likelihood
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.objectives import iwae_loss
from dgm.core.spec import DataKind, DataSpec
from dgm.models.latent.hvae import HierarchicalVAE, HierarchicalVAEConfig
from dgm.models.latent.vae import VAE, VAEConfig

TINY = DataSpec(event_shape=(2,), kind=DataKind.DISCRETE, num_levels=3)
DIGITS = DataSpec(event_shape=(1, 8, 8), kind=DataKind.DISCRETE, num_levels=17)
INFERENCES = ("top_down", "bottom_up")


def _hvae(spec: DataSpec, **fields: object) -> HierarchicalVAE:
    config = HierarchicalVAEConfig(**({"latent_dims": (4, 2), "hidden": 16} | fields))  # type: ignore[arg-type]
    return HierarchicalVAE(spec, config)


def _data(spec: DataSpec, n: int) -> torch.Tensor:
    if spec.kind is DataKind.CONTINUOUS:
        return torch.randn(n, *spec.event_shape)
    levels = 2 if spec.num_levels is None else spec.num_levels
    return torch.randint(0, levels, (n, *spec.event_shape))


# ------------------------------------------------------------ bounds against exact log p(x)


@pytest.fixture(scope="module", params=INFERENCES)
def tiny_hvae(request) -> tuple[HierarchicalVAE, torch.Tensor, torch.Tensor]:
    """A random two-level model with 1-D z_1, z_2 on {0,1,2}^2, all 9 points and their exact
    log p(x) = log ∫∫ p(x | z_1) p(z_1 | z_2) p(z_2) dz_1 dz_2 by quadrature."""
    torch.manual_seed(0)
    model = _hvae(TINY, latent_dims=(1, 1), hidden=8, inference=request.param)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    # Fit q (the generative side frozen) so that IWAE(k) converges at test-sized k; a random q
    # can sit far from the posterior and leave IWAE(10^5) nats away from log p(x).
    inference = ("bottom_up", "delta", "encoders")
    params = [p for name, m in model.named_children() if name in inference for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss(x.repeat(8, 1)).mean().backward()
        opt.step()
    # Riemann sum on a 2001 x 2001 grid over [-10, 10]^2 (the integrand vanishes at the edges);
    # the densities are scored with torch.distributions, independently of the model's helpers.
    z = torch.linspace(-10.0, 10.0, 2001, dtype=torch.float64)
    log_dz = math.log(float(z[1] - z[0]))
    with torch.no_grad():
        _, mean, log_var = model.prior(0, z.unsqueeze(1))  # p(z_1 | z_2 = grid), (G, 1)
        logits = model._decode(z.unsqueeze(1))  # p(x | z_1 = grid), (G, 2, 3)
    log_p_z1_z2 = Normal(mean, torch.exp(0.5 * log_var)).log_prob(z)  # (G2, G1)
    log_p_z1 = torch.logsumexp(Normal(0.0, 1.0).log_prob(z).unsqueeze(1) + log_p_z1_z2, 0)
    log_p_z1 = log_p_z1 + log_dz  # (G1,)
    log_px_z1 = Categorical(logits=logits.unsqueeze(1)).log_prob(x).sum(-1)  # (G1, 9)
    log_px = torch.logsumexp(log_p_z1.unsqueeze(1) + log_px_z1, dim=0) + log_dz
    return model, x, log_px


def test_quadrature_marginal_is_normalized(tiny_hvae) -> None:
    _, _, log_px = tiny_hvae
    assert float(log_px.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_elbo_is_below_exact_log_likelihood(tiny_hvae) -> None:
    model, x, log_px = tiny_hvae
    with torch.no_grad():
        log_w = model.log_weights(x, 40000, generator=torch.Generator().manual_seed(0))
    elbo = log_w.mean(0)
    stderr = log_w.std(0) / math.sqrt(log_w.shape[0])
    # 4 standard errors of the 40000-draw mean: a false alarm has probability ~3e-5 per point.
    assert (elbo - 4 * stderr < log_px).all()
    assert float((log_px - elbo).mean()) > 0.01  # a random q is not the exact posterior


def test_iwae_rises_with_k_and_approaches_log_likelihood(tiny_hvae) -> None:
    model, x, log_px = tiny_hvae
    gen = torch.Generator().manual_seed(1)
    bounds, errors = [], []
    for k, repeats in [(1, 2000), (10, 400), (100, 40), (3000, 10)]:
        with torch.no_grad():
            log_w = model.log_weights(x, k * repeats, generator=gen).reshape(repeats, k, -1)
        iwae = torch.logsumexp(log_w, dim=1) - math.log(k)  # (repeats, 9)
        bounds.append(iwae.mean(0))
        errors.append(iwae.std(0) / math.sqrt(repeats))
    for (lo, lo_err), (hi, hi_err) in zip(zip(bounds, errors), zip(bounds[1:], errors[1:])):
        assert (hi + 4 * (lo_err + hi_err) > lo).all()
        assert (hi - 4 * hi_err < log_px).all()
    assert float((bounds[-1] - bounds[0]).mean()) > 0.01
    # IWAE(3000) - log p(x) shrinks like Var(w) / (2k p(x)²); 0.01 nats leaves a wide margin.
    assert torch.allclose(bounds[-1], log_px, atol=0.01 + 4 * float(errors[-1].max()))


# ------------------------------------------------------------------------------- the KLs


@pytest.mark.parametrize("inference", INFERENCES)
def test_closed_form_kl_equals_monte_carlo(inference: str) -> None:
    model = _hvae(DIGITS, latent_dims=(4, 3, 2), inference=inference).double().eval()
    x = _data(DIGITS, 3)
    with torch.no_grad():
        levels = model.infer(model._flat(x), 20000, generator=torch.Generator().manual_seed(0))
    analytic = [level for level in levels if level.analytic]
    assert len(analytic) == (3 if inference == "top_down" else 1)  # Eq. 5.82: only the top
    for level in analytic:
        mc = (level.log_q() - level.log_p()).reshape(20000, -1)
        closed = level.kl().reshape(20000, -1)
        diff = mc - closed  # zero-mean given the parent draw
        stderr = diff.std(0) / math.sqrt(20000)
        assert (diff.mean(0).abs() < 4 * stderr + 1e-9).all()


def test_top_down_kl_is_nvae_form() -> None:
    """KL[N(μ + Δμ, σ² Δσ²) || N(μ, σ²)] = ½ Σ (Δμ²/σ² + Δσ² - log Δσ² - 1) (NVAE)."""
    model = _hvae(DIGITS, latent_dims=(4, 2)).double().eval()
    with torch.no_grad():
        level = model.infer(model._flat(_data(DIGITS, 5)), 2)[0]
    assert level.mean_p is not None and level.log_var_p is not None
    delta_mean = level.mean_q - level.mean_p
    delta_log_var = level.log_var_q - level.log_var_p
    nvae = 0.5 * (
        delta_mean**2 * torch.exp(-level.log_var_p)
        + torch.exp(delta_log_var) - delta_log_var - 1.0
    ).sum(-1)
    torch.testing.assert_close(level.kl(), nvae)


@pytest.mark.parametrize("level", [0, 1])
def test_zero_delta_gives_zero_kl(level: int) -> None:
    model = _hvae(DIGITS, latent_dims=(4, 2))
    last = model.delta[level][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    kls = model.kl_per_level(_data(DIGITS, 6))
    torch.testing.assert_close(kls[level], torch.zeros(6), atol=1e-6, rtol=0)
    assert (kls[1 - level] > 0).all()


@pytest.mark.parametrize("bias, expected", [(50.0, 2.0), (-50.0, -7.0)])
def test_delta_log_var_is_clamped(bias: float, expected: float) -> None:
    model = _hvae(DIGITS, latent_dims=(4, 3, 2))
    with torch.no_grad():
        for net, m in zip(model.delta, model.latent_dims):
            net[-1].weight.zero_()
            net[-1].bias[:m].zero_()  # Δμ = 0
            net[-1].bias[m:].fill_(bias)  # Δlogvar far outside [-7, 2]
        levels = model.infer(model._flat(_data(DIGITS, 4)))
    for level in levels:
        prior_log_var = 0.0 if level.log_var_p is None else level.log_var_p
        delta = level.log_var_q - prior_log_var
        torch.testing.assert_close(delta, torch.full_like(delta, expected))
        assert torch.isfinite(level.kl()).all()


# -------------------------------------------------------------------------- the loss's parts


@pytest.mark.parametrize("inference", INFERENCES)
def test_loss_mean_equals_elbo_and_iwae_1(inference: str) -> None:
    """E[loss] (closed-form KLs where there are any) = -E[log w] = -E[IWAE(1)]."""
    model = _hvae(DIGITS, inference=inference).double().eval()
    x = _data(DIGITS, 2).repeat(10000, 1, 1, 1)
    with torch.no_grad():
        loss = model.loss(x).reshape(10000, 2)
        log_w = model.log_weights(x, 1, generator=torch.Generator().manual_seed(0))
        iwae = iwae_loss(log_w).reshape(10000, 2)
    torch.testing.assert_close(iwae, -log_w.reshape(10000, 2))
    stderr = (loss.var(0) / 10000 + iwae.var(0) / 10000).sqrt()
    assert ((loss.mean(0) - iwae.mean(0)).abs() < 4 * stderr).all()


@pytest.mark.parametrize("inference", INFERENCES)
@pytest.mark.parametrize("fields", [{}, {"warmup_steps": 4, "free_bits": 0.5}, {"beta": 0.3}])
def test_loss_terms_sum_to_loss(inference: str, fields: dict[str, object]) -> None:
    model = _hvae(DIGITS, latent_dims=(4, 3, 2), inference=inference, **fields).eval()
    x = _data(DIGITS, 5)
    torch.manual_seed(1)
    terms = model.loss_terms(x)
    torch.manual_seed(1)
    loss = model.loss(x)
    assert list(terms) == ["reconstruction", "kl_1", "kl_2", "kl_3"]
    torch.testing.assert_close(sum(terms.values()), loss)
    torch.manual_seed(1)
    kls = model.kl_per_level(x)
    if not fields:  # weight 1, no free bits: the per-level KLs are the loss's KL terms
        torch.testing.assert_close(torch.stack(kls), torch.stack(list(terms.values())[1:]))


def test_iwae_training_loss() -> None:
    model = _hvae(DIGITS, iwae_k=5).eval()
    x = _data(DIGITS, 3)
    with torch.no_grad():
        torch.manual_seed(2)
        loss = model.loss(x)
        torch.manual_seed(2)
        expected = iwae_loss(model.log_weights(x, 5))
    torch.testing.assert_close(loss, expected)
    assert list(model.loss_terms(x)) == ["iwae"]


def test_warmup_weight_grows_and_is_checkpointed() -> None:
    model = _hvae(DIGITS, warmup_steps=4, beta=2.0)
    x = _data(DIGITS, 8)
    assert "num_updates" in model.state_dict()
    weights = []
    for t in range(6):
        weights.append(model.kl_weight())
        model.loss(x).mean().backward()
        model.after_step(StepInfo(step=t + 1))
    assert weights == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    model.loss(x).mean().backward()  # no step taken: the counter stays
    with torch.no_grad():
        model.loss(x)
    model.eval()
    model.loss(x)
    assert int(model.num_updates) == 6
    fresh = _hvae(DIGITS, warmup_steps=4, beta=2.0)
    fresh.load_state_dict(model.state_dict())
    assert int(fresh.num_updates) == 6 and fresh.kl_weight() == 2.0


@pytest.mark.parametrize("lam, reaches", [(1000.0, False), (0.0, True)])
def test_free_bits_cut_the_gradient_of_a_small_level(lam: float, reaches: bool) -> None:
    # Bottom-up, the priors p(z_l | z_{l+1}) enter the loss only through the KL terms: with
    # every level below λ = 1000 nats they get no gradient.
    model = _hvae(DIGITS, inference="bottom_up", free_bits=lam)
    model.loss(_data(DIGITS, 4)).mean().backward()
    for p in model.prior_params.parameters():
        assert (p.grad is not None and torch.count_nonzero(p.grad) > 0) == reaches


# --------------------------------------------------------------------------- the contract


def test_single_level_is_a_plain_vae() -> None:
    """latent_dims of length 1, bottom-up: the same networks as VAE, hence the same weights."""
    hvae = _hvae(DIGITS, latent_dims=(3,), inference="bottom_up", init_from_data=False)
    vae = VAE(DIGITS, VAEConfig(latent_dim=3, hidden=16, num_hidden=1, init_from_data=False))
    sd = {k.replace("encoder.", "encoders.0."): v for k, v in vae.state_dict().items()}
    hvae.load_state_dict({k: sd[k] for k in hvae.state_dict()})
    x = _data(DIGITS, 4)
    a = hvae.log_weights(x, 3, generator=torch.Generator().manual_seed(0))
    b = vae.log_weights(x, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    top_down = _hvae(DIGITS, latent_dims=(3,))
    assert list(top_down.loss_terms(x)) == ["reconstruction", "kl_1"]
    assert top_down.log_weights(x, 2).shape == (2, 4)


@pytest.mark.parametrize("inference", INFERENCES)
@pytest.mark.parametrize("dims", [(5,), (6, 4), (6, 4, 2)])
def test_contract(inference: str, dims: tuple[int, ...]) -> None:
    model = _hvae(DIGITS, latent_dims=dims, inference=inference)
    assert model.likelihood is Likelihood.LOWER_BOUND
    assert isinstance(model, ImportanceWeighted) and isinstance(model, LatentVariable)
    x = _data(DIGITS, 6)
    loss = model.loss(x)
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    loss.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert model.log_weights(x, 3).shape == (3, 6)
    assert model.log_prob(x).shape == (6,)
    assert [m.shape for m in model.latent_means(x)] == [(6, m) for m in dims]
    assert [kl.shape for kl in model.kl_per_level(x)] == [(6,)] * len(dims)
    assert model.prior_log_prob(torch.zeros(2, dims[-1])).shape == (2,)
    top = model.decode_top(torch.randn(2, dims[-1]))
    assert top.shape == (2, 1, 8, 8) and top.dtype == DIGITS.dtype


@pytest.mark.parametrize(
    "spec",
    [DIGITS, DataSpec((1, 3, 3), DataKind.BINARY), DataSpec((3,), DataKind.CONTINUOUS)],
    ids=["discrete", "binary", "continuous"],
)
@pytest.mark.parametrize("inference", INFERENCES)
def test_samples_and_reconstructions_in_data_space(spec: DataSpec, inference: str) -> None:
    model = _hvae(spec, inference=inference)
    x = _data(spec, 20)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    for out in (model.sample(7, generator=torch.Generator().manual_seed(0)), model.reconstruct(x)):
        assert out.shape[1:] == spec.event_shape and out.dtype == spec.dtype
        if spec.kind is not DataKind.CONTINUOUS:
            levels = 2 if spec.num_levels is None else spec.num_levels
            assert out.min() >= 0 and out.max() <= levels - 1


def test_initialize_from_data_gives_the_independent_model() -> None:
    """Decoder bias at the marginals and zero last-layer weights: p(x | z_1) is the
    independent-pixel model whatever z is."""
    model = _hvae(DIGITS)
    x = _data(DIGITS, 200)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
        rec = model.elbo_terms(x).reconstruction
    expected = -model.head.log_prob(model._flat(x), model.head.marginal_params(model._flat(x))
                                    .float().expand(200, -1, -1))
    torch.testing.assert_close(rec, expected)


def test_save_load_round_trip(tmp_path) -> None:
    model = _hvae(DIGITS, latent_dims=(4, 3, 2))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = _hvae(DIGITS, latent_dims=(4, 3, 2))
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = _data(DIGITS, 4)
    a = model.log_weights(x, 3, generator=torch.Generator().manual_seed(0))
    b = again.log_weights(x, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_registry_builds_from_a_mapping() -> None:
    model = build_model("hvae", DIGITS, {"latent_dims": [4, 2], "hidden": 8})
    assert isinstance(model, HierarchicalVAE) and model.latent_dims == (4, 2)


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"latent_dims": ()}, "latent_dims"),
        ({"latent_dims": (4, 0)}, "latent_dims"),
        ({"num_hidden": 0}, "num_hidden"),
        ({"inference": "sideways"}, "inference"),
        ({"delta_log_var_min": 2.0, "delta_log_var_max": -7.0}, "delta_log_var_min"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"free_bits": -0.1}, "free_bits"),
        ({"iwae_k": 0}, "iwae_k"),
        ({"iwae_k": 5, "beta": 0.5}, "iwae_k"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        HierarchicalVAEConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("inference", INFERENCES)
def test_training_lowers_the_loss(digits, inference: str) -> None:
    x = digits.train.x[:128]
    model = _hvae(digits.spec, latent_dims=(8, 4), hidden=64, inference=inference)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert loss_drop(model, x, steps=40, lr=3e-3) > 5.0
