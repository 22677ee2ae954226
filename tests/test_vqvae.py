"""VQ-VAE: nearest-code quantization and where each loss term's gradient goes, the code prior
(normalized, causal), the ELBO against the exact marginal of a tiny enumerable model, codebook
updates (EMA, dead-code restarts), and the model contract."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Categorical
from util import loss_drop

from dgm.core import ImportanceWeighted, LatentVariable, Likelihood, build_model
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.spec import DataKind, DataSpec
from dgm.models.latent.vqvae import CodePrior, VectorQuantizer, VQVAE, VQVAEConfig

TINY = DataSpec(event_shape=(2,), kind=DataKind.DISCRETE, num_levels=3)
SPECS = {
    "categorical": DataSpec(event_shape=(1, 3, 3), kind=DataKind.DISCRETE, num_levels=5),
    "bernoulli": DataSpec(event_shape=(1, 3, 3), kind=DataKind.BINARY),
    "gaussian": DataSpec(event_shape=(3,), kind=DataKind.CONTINUOUS),
}


def _data(spec: DataSpec, n: int) -> torch.Tensor:
    if spec.kind is DataKind.CONTINUOUS:
        return torch.randn(n, *spec.event_shape)
    levels = 2 if spec.num_levels is None else spec.num_levels
    return torch.randint(0, levels, (n, *spec.event_shape))


def _vqvae(spec: DataSpec, **fields: object) -> VQVAE:
    base = {"num_latents": 3, "codebook_size": 4, "code_dim": 2, "hidden": 16,
            "prior_hidden": 8, "prior_heads": 2, "prior_layers": 1, "prior_dropout": 0.0}
    return VQVAE(spec, VQVAEConfig(**(base | fields)))  # type: ignore[arg-type]


def _scramble(module: torch.nn.Module, scale: float = 0.7) -> None:
    """Random parameters far from the near-uniform initialization."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))


def _grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


# ------------------------------------------------------------------------------ quantizer


def test_quantizer_returns_the_nearest_code() -> None:
    vq = VectorQuantizer(7, 3)
    vq.set_codebook(torch.randn(7, 3))
    z = torch.randn(5, 4, 3)
    q = vq(z)
    brute = torch.cdist(z.reshape(-1, 3), vq.codebook).argmin(dim=1).reshape(5, 4)
    assert torch.equal(q.codes, brute)
    assert torch.equal(q.vectors, vq.codebook[brute])
    torch.testing.assert_close(q.straight_through, q.vectors)


def test_straight_through_gradient_reaches_the_encoder_not_the_codebook() -> None:
    model = _vqvae(SPECS["categorical"])
    x = _data(model.spec, 8)
    model.loss_terms(x)["reconstruction"].sum().backward()
    assert _grad_norm(model.encoder.parameters()) > 0
    assert _grad_norm(model.decoder.parameters()) > 0
    assert _grad_norm([model.quantizer.codebook]) == 0.0


@pytest.mark.parametrize(
    "term, moves, stays",
    [
        ("codebook", "quantizer", ("encoder", "decoder", "prior")),
        ("commitment", "encoder", ("quantizer", "decoder", "prior")),
        ("prior", "prior", ("encoder", "quantizer", "decoder")),
    ],
)
def test_each_term_moves_only_its_own_part(term: str, moves: str, stays: tuple[str, ...]) -> None:
    model = _vqvae(SPECS["categorical"])
    x = _data(model.spec, 8)
    model.loss_terms(x)[term].sum().backward()
    assert _grad_norm(getattr(model, moves).parameters()) > 0
    for name in stays:
        assert _grad_norm(getattr(model, name).parameters()) == 0.0, name


# ----------------------------------------------------------------------------------- prior


def _tiny_prior(num_positions: int = 3, num_codes: int = 3) -> CodePrior:
    prior = CodePrior(num_positions, num_codes, width=8, num_layers=2, num_heads=2).double()
    _scramble(prior)
    return prior.eval()


def test_prior_is_normalized_over_all_code_sequences() -> None:
    prior = _tiny_prior()
    every = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        log_p = prior.log_prob(every)
    assert float(torch.logsumexp(log_p, 0).exp()) == pytest.approx(1.0, abs=1e-10)
    assert float(log_p.max() - log_p.min()) > 0.1  # not trivially uniform


def test_prior_is_causal() -> None:
    prior = _tiny_prior(num_positions=4, num_codes=5)
    c = torch.randint(0, 5, (6, 4))
    with torch.no_grad():
        base = prior.logits(c)
        for j in range(4):
            changed = c.clone()
            changed[:, j] = (changed[:, j] + 1) % 5
            logits = prior.logits(changed)
            # θ_i conditions on c_{<i}: unchanged for i <= j, changed somewhere after j.
            torch.testing.assert_close(logits[:, : j + 1], base[:, : j + 1])
            if j < 3:
                assert float((logits[:, j + 1 :] - base[:, j + 1 :]).abs().max()) > 1e-6


def test_prior_samples_follow_its_pmf() -> None:
    prior = _tiny_prior(num_positions=2, num_codes=3)
    every = torch.tensor(list(itertools.product(range(3), repeat=2)))
    with torch.no_grad():
        pmf = prior.log_prob(every).exp()
    draws = prior.sample(20000, generator=torch.Generator().manual_seed(0), device="cpu")
    freq = torch.bincount(draws[:, 0] * 3 + draws[:, 1], minlength=9).double() / 20000
    assert float((freq - pmf).abs().max()) < 0.015


# ------------------------------------------------------------ the bound against exact log p(x)


@pytest.fixture(scope="module")
def tiny_vqvae() -> tuple[VQVAE, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random VQ-VAE on {0,1,2}^2 with G = 2, K = 3; every x, every c, and log p(x, c)."""
    torch.manual_seed(0)
    model = _vqvae(TINY, num_latents=2, codebook_size=3, code_dim=2, hidden=8).double()
    _scramble(model)
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # (9, 2)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))  # spread the codes over x
    with torch.no_grad():
        model.decoder[-1].bias.copy_(torch.randn_like(model.decoder[-1].bias))
    model.eval()
    codes = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # (9, 2) = all K^G
    with torch.no_grad():
        # log p(x | c) scored with torch.distributions, independently of the model's head.
        logits = model.decode(codes)  # (C, 2, 3)
        log_px_c = Categorical(logits=logits.unsqueeze(1)).log_prob(x).sum(-1)  # (C, 9)
        log_joint = log_px_c + model.prior.log_prob(codes).unsqueeze(1)  # (C, 9)
    return model, x, codes, log_joint


def test_exact_marginal_is_normalized(tiny_vqvae) -> None:
    _, _, _, log_joint = tiny_vqvae
    assert float(torch.logsumexp(log_joint.reshape(-1), 0).exp()) == pytest.approx(1.0, abs=1e-10)


def test_elbo_is_below_exact_log_likelihood_by_the_posterior_gap(tiny_vqvae) -> None:
    model, x, codes, log_joint = tiny_vqvae
    log_px = torch.logsumexp(log_joint, dim=0)  # (9,)
    with torch.no_grad():
        elbo = model.log_prob(x)
        cx = model.encode(x)
    assert bool((elbo < log_px - 1e-9).all())
    # The gap is -log p(c(x) | x): zero only if the true posterior were the one-hot q.
    index = cx[:, 0] * 3 + cx[:, 1]
    log_post = (log_joint - log_px)[index, torch.arange(9)]
    torch.testing.assert_close(log_px - elbo, -log_post)
    assert len(set(index.tolist())) > 1  # the encoder does not send every x to one code


def test_log_marginal_enumerates_the_codes(tiny_vqvae) -> None:
    model, x, _, log_joint = tiny_vqvae
    torch.testing.assert_close(model.log_marginal(x, chunk=4), torch.logsumexp(log_joint, 0))


def test_log_marginal_of_other_likelihoods_is_normalized() -> None:
    spec = DataSpec(event_shape=(3,), kind=DataKind.BINARY)
    model = _vqvae(spec, num_latents=2, codebook_size=3).double().eval()
    _scramble(model)
    x = torch.cartesian_prod(*[torch.arange(2)] * 3)  # all 8 binary vectors
    assert float(model.log_marginal(x).exp().sum()) == pytest.approx(1.0, abs=1e-10)


def test_log_weights_repeat_the_elbo(tiny_vqvae) -> None:
    model, x, _, _ = tiny_vqvae
    assert isinstance(model, ImportanceWeighted)
    with torch.no_grad():
        log_w = model.log_weights(x, 5)
        elbo = model.log_prob(x)
    assert log_w.shape == (5, 9)
    assert torch.equal(log_w, elbo.expand(5, -1))
    assert model.likelihood is Likelihood.LOWER_BOUND


def test_loss_terms_sum_to_the_loss_and_hold_the_negative_elbo() -> None:
    model = _vqvae(SPECS["categorical"], beta=0.3).eval()
    x = _data(model.spec, 6)
    with torch.no_grad():
        terms = model.loss_terms(x)
        loss = model.loss(x)
        elbo = model.log_prob(x)
        raw = model.terms(x)
    torch.testing.assert_close(sum(terms.values()), loss)
    torch.testing.assert_close(terms["reconstruction"] + terms["prior"], -elbo)
    torch.testing.assert_close(terms["commitment"], 0.3 * raw.commitment)
    # Codebook and commitment terms have the same value ‖f(x) - e_c‖², only the gradients differ.
    torch.testing.assert_close(raw.codebook, raw.commitment)


# ------------------------------------------------------------------------- codebook updates


def test_ema_updates_the_codebook_without_gradients() -> None:
    model = _vqvae(SPECS["categorical"], codebook_update="ema", ema_decay=0.5,
                   restart_dead=False)
    codebook = model.quantizer.codebook
    assert not codebook.requires_grad
    assert all(p is not codebook for p in model.parameters())
    before = codebook.clone()
    x = _data(model.spec, 16)
    with torch.no_grad():
        z = model.encode_continuous(x).reshape(-1, 2)
        codes = model.quantizer.nearest(z)
    terms = model.loss_terms(x)
    assert float(terms["codebook"].abs().sum()) == 0.0
    assert torch.equal(codebook, before)  # a loss alone moves nothing: no step was taken
    model.after_step(StepInfo(step=1))
    # Each used code moved toward the mean of the encoder outputs assigned to it.
    for k in codes.unique():
        mean = z[codes == k].mean(0)
        assert float((codebook[k] - mean).norm()) < float((before[k] - mean).norm())
    # Evaluation does not move the codebook, and a step's statistics are used once.
    after = codebook.clone()
    with torch.no_grad():
        model.train()
        model.loss(x)
    model.after_step(StepInfo(step=2))
    assert torch.equal(after, codebook)


def test_dead_codes_are_restarted_from_encoder_outputs() -> None:
    model = _vqvae(SPECS["categorical"], codebook_size=6, dead_threshold=0.5)
    vq = model.quantizer
    with torch.no_grad():
        vq.usage.copy_(torch.tensor([0.0, 0.3, 0.3, 0.2, 0.2, 0.0]))
        vq.codebook[[0, 5]] = 1e3  # far from every encoder output
    x = _data(model.spec, 16)
    model.loss(x)
    model.after_step(StepInfo(step=1))
    z = model.encode_continuous(x).reshape(-1, 2).detach()
    for k in (0, 5):
        assert float(torch.cdist(vq.codebook[k : k + 1].detach(), z).min()) < 1e-5
    assert float(vq.codebook[1:5].detach().abs().max()) < 1e2


def test_codebook_perplexity_counts_codes_in_use() -> None:
    model = _vqvae(SPECS["categorical"], codebook_size=5)
    x = _data(model.spec, 20)
    with torch.no_grad():
        model.quantizer.codebook.fill_(1e4)
        model.quantizer.codebook[2] = 0.0
    assert model.codebook_perplexity(x) == pytest.approx(1.0)
    assert model.codes_used(x) == 1
    with torch.no_grad():
        model.quantizer.set_codebook(torch.randn(5, 2))
    assert 1.0 <= model.codebook_perplexity(x) <= 5.0 + 1e-9


def test_initialization_uses_every_code_and_the_marginals(digits) -> None:
    x = digits.train.x[:300]
    model = build_model("vqvae", digits.spec, {"num_latents": 4, "codebook_size": 16,
                                               "code_dim": 4, "hidden": 32})
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert model.codes_used(x) == 16
    probs = torch.softmax(model.decoder[-1].bias.reshape(64, 17), -1)
    counts = torch.nn.functional.one_hot(x.reshape(300, 64).long(), 17).double().sum(0)
    torch.testing.assert_close(probs.detach().double(), (counts + 1) / (300 + 17))  # add-one


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("update, lr, drop", [("loss", 3e-4, 2.0), ("ema", 1e-3, 5.0)])
def test_training_lowers_the_loss(digits, update: str, lr: float, drop: float) -> None:
    # The loss-trained codebook trails the encoder under Adam (its rows move at most about lr
    # per step), so at a high learning rate the codebook and commitment terms first grow.
    x = digits.train.x[:128]
    model = build_model("vqvae", digits.spec, {"num_latents": 4, "codebook_size": 16,
                                               "code_dim": 4, "hidden": 64,
                                               "codebook_update": update})
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert loss_drop(model, x, steps=60, lr=lr) > drop


@pytest.mark.parametrize("name", SPECS)
def test_samples_and_reconstructions_live_in_the_data_space(name: str) -> None:
    spec = SPECS[name]
    model = _vqvae(spec)
    x = _data(spec, 7)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    model.eval()
    s = model.sample(11, generator=torch.Generator().manual_seed(1))
    r = model.reconstruct(x)
    assert s.shape == (11, *spec.event_shape) and r.shape == x.shape
    assert s.dtype == spec.dtype and r.dtype == spec.dtype
    spec.validate(s)
    spec.validate(r)
    assert bool(torch.isfinite(model.log_prob(x)).all())


def test_latent_variable_protocol() -> None:
    model = _vqvae(SPECS["categorical"]).eval()
    assert isinstance(model, LatentVariable)
    x = _data(model.spec, 5)
    with torch.no_grad():
        (z,) = model.latent_means(x)
        (kl,) = model.kl_per_level(x)
        assert z.shape == (5, 3 * 2)
        torch.testing.assert_close(kl, -model.prior.log_prob(model.encode(x)))
        torch.testing.assert_close(model.prior_log_prob(z), -kl)
        assert torch.equal(model.decode_top(z), model.reconstruct(x))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prior_hidden": 10, "prior_heads": 4}, "must divide"),
        ({"codebook_update": "adam"}, "codebook_update"),
        ({"codebook_size": 1}, "codebook_size"),
        ({"beta": -1.0}, "beta"),
        ({"likelihood": "gaussian"}, "does not fit"),
    ],
)
def test_bad_configs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("vqvae", SPECS["categorical"], fields)
