"""The GAN family (Book ch. 8): the losses at known logits and their optimum, spectral norm's
power iteration, the gradient penalty, the two players' separation under the real update rule,
samples in the data's space, class conditioning, EMA weights, the GMMN's MMD, and a small GAN
that covers the eight Gaussians."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import dgm
from dgm.config import load_config
from dgm.core.errors import ConfigError, DataError
from dgm.core.spectral import SpectralNormConv2d, SpectralNormLinear, power_iteration
from dgm.models.adversarial import losses
from dgm.models.adversarial.gan import GAN, GANConfig
from dgm.models.adversarial.gmmn import GMMN, GMMNConfig
from dgm.runs import open_run
from dgm.train.trainer import train
from dgm.train.updates import make_update_rule

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def digits():
    return dgm.data.load("digits")


def _batch(data, n: int = 32):
    return data.train.x[:n].long(), data.train.y[:n]


# --- losses ---------------------------------------------------------------------------------


def test_minimax_and_nonsaturating_losses_at_known_logits() -> None:
    zero = torch.zeros(3)
    # D ≡ 1/2: the discriminator's loss is 2 ln 2, the minimax generator's ln(1/2) (Book 8.3).
    torch.testing.assert_close(losses.minimax_discriminator_loss(zero, zero), 2 * LN2 + zero)
    torch.testing.assert_close(losses.minimax_generator_loss(zero), -LN2 + zero)
    torch.testing.assert_close(losses.nonsaturating_generator_loss(zero), LN2 + zero)
    l_real, l_fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    d_real, d_fake = torch.sigmoid(l_real), torch.sigmoid(l_fake)
    torch.testing.assert_close(losses.minimax_discriminator_loss(l_real, l_fake),
                               -(d_real.log() + (1 - d_fake).log()))
    torch.testing.assert_close(losses.minimax_generator_loss(l_fake), (1 - d_fake).log())
    torch.testing.assert_close(losses.nonsaturating_generator_loss(l_fake), -d_fake.log())
    # One-sided label smoothing: real target 0.9, the fake target stays 0.
    smooth = losses.minimax_discriminator_loss(l_real, l_fake, real_target=0.9)
    want = -(0.9 * d_real.log() + 0.1 * (1 - d_real).log() + (1 - d_fake).log())
    torch.testing.assert_close(smooth, want)
    torch.testing.assert_close(losses.hinge_discriminator_loss(l_real, l_fake),
                               torch.tensor([0.0 + 1.5, 2.0 + 4.0]))
    torch.testing.assert_close(losses.wasserstein_critic_loss(l_real, l_fake), l_fake - l_real)


def test_the_books_clamp_keeps_the_losses_finite_and_bounded() -> None:
    eps = 1e-5
    huge = torch.tensor([-1e4, 1e4])
    d = losses.minimax_discriminator_loss(huge, -huge, eps=eps)  # real rejected, fake accepted
    g = losses.minimax_generator_loss(huge, eps=eps)
    assert torch.isfinite(d).all() and torch.isfinite(g).all()
    # D clamped to [ε, 1 - ε]: each log term is at least log ε.
    torch.testing.assert_close(d[0], torch.tensor(-math.log(eps) - math.log(eps)), rtol=1e-4,
                               atol=0)
    torch.testing.assert_close(g[1], torch.tensor(math.log(eps)), rtol=1e-4, atol=0)
    with pytest.raises(ConfigError):
        losses.clamp_logits(huge, 0.7)


def test_discriminator_learns_the_optimal_ratio() -> None:
    """p = N(0, 1) real, q = N(1, 1) fake: D*(x) = p/(p + q) = σ(1/2 - x), a linear logit."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(20000, 1, generator=g)
    fake = torch.randn(20000, 1, generator=g) + 1.0
    d = nn.Linear(1, 1)
    opt = torch.optim.LBFGS(d.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = losses.minimax_discriminator_loss(d(real).squeeze(1), d(fake).squeeze(1)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    x = torch.linspace(-2, 3, 51)[:, None]
    p = torch.distributions.Normal(0.0, 1.0).log_prob(x).exp()
    q = torch.distributions.Normal(1.0, 1.0).log_prob(x).exp()
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(d(x)), p / (p + q), atol=0.03, rtol=0)


def test_gradient_penalty_zero_for_a_unit_gradient_critic() -> None:
    real, fake = torch.randn(16, 5), torch.randn(16, 5)
    w = torch.randn(5)
    unit = losses.gradient_penalty(lambda h: h @ (w / w.norm()), real, fake)
    torch.testing.assert_close(unit, torch.zeros(16), atol=1e-6, rtol=0)
    steep = losses.gradient_penalty(lambda h: h @ (3 * w / w.norm()), real, fake)
    torch.testing.assert_close(steep, torch.full((16,), 4.0))  # (3 - 1)²
    bent = losses.gradient_penalty(lambda h: (h**2).sum(1), real, fake)
    assert (bent > 0).all()


def test_mmd_zero_for_equal_sets_positive_for_shifted() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g)
    same = losses.gaussian_mixture_mmd2(a, b, (0.5, 1.0, 2.0))
    shifted = losses.gaussian_mixture_mmd2(a, b + 1.0, (0.5, 1.0, 2.0))
    assert abs(float(same)) < 0.01 and float(shifted) > 0.2
    # Against the U-statistic written out with one kernel.
    x, y = a[:5], b[:4]

    def k(s, t):
        return math.exp(-float((s - t).square().sum()) / 2)

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert float(losses.gaussian_mixture_mmd2(x, y, (1.0,))) == pytest.approx(xx + yy - 2 * xy,
                                                                               abs=1e-5)


# --- spectral norm --------------------------------------------------------------------------


def test_power_iteration_converges_to_the_top_singular_value() -> None:
    w = torch.randn(7, 5, dtype=torch.float64)
    u = torch.nn.functional.normalize(torch.randn(7, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(5, dtype=torch.float64), dim=0)
    _, _, sigma = power_iteration(w, u, v, 500)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, 2))
    lin = SpectralNormLinear(5, 7, coeff=1.0, always=True).double().eval()
    torch.testing.assert_close(torch.linalg.matrix_norm(lin.normalized_weight(), 2),
                               torch.tensor(1.0, dtype=torch.float64))
    conv = SpectralNormConv2d(3, 4, 4, stride=2, padding=1).double().eval()
    kernel = conv.normalized_weight().flatten(1)
    torch.testing.assert_close(torch.linalg.matrix_norm(kernel, 2),
                               torch.tensor(1.0, dtype=torch.float64))



def test_spectral_norm_gradient_flows_through_sigma() -> None:
    # Miyato et al. (2018) eq. 12: with u, v held fixed, dL/dW = (G - <G, W~> u v^T) / sigma,
    # G = dL/dW~; the second term is what stops W from collapsing to rank one.
    torch.manual_seed(0)
    lin = SpectralNormLinear(5, 7, coeff=1.0, always=True).double().train()
    lin.update_enabled = False
    w_tilde = lin.normalized_weight()
    g = torch.randn_like(w_tilde)
    (grad,) = torch.autograd.grad((w_tilde * g).sum(), lin.weight)
    sigma = float(lin.sigma().detach())
    expected = (g - (g * w_tilde.detach()).sum() * torch.outer(lin.u, lin.v)) / sigma
    torch.testing.assert_close(grad, expected)
    # always=True (SN-GAN) divides by sigma even below 1; always=False leaves W alone there
    small = SpectralNormLinear(5, 7, coeff=1.0, always=False).double().eval()
    with torch.no_grad():
        small.weight.mul_(0.1 / torch.linalg.matrix_norm(small.weight, 2))
    torch.testing.assert_close(small.normalized_weight(), small.weight)


def test_spectral_norm_one_step_per_training_call_none_on_repeated_eval_calls() -> None:
    torch.manual_seed(0)
    lin = SpectralNormLinear(6, 9, coeff=1.0, always=True, n_init_iterations=0).double()
    h = torch.randn(4, 6, dtype=torch.float64)
    for _ in range(3):  # training: exactly one power-iteration step per forward
        u, v = lin.u.clone(), lin.v.clone()
        u1, v1, s1 = power_iteration(lin.weight.detach(), u, v, 1)
        out = lin(h)
        torch.testing.assert_close((lin.u, lin.v), (u1, v1))
        torch.testing.assert_close(out, h @ (lin.weight / s1).t() + lin.bias)
    lin.eval()  # eval: the first call converges, repeated calls take no step
    out = lin(h)
    state = (lin.u.clone(), lin.v.clone())
    torch.testing.assert_close(lin(h), out, rtol=0, atol=0)
    torch.testing.assert_close((lin.u, lin.v), state, rtol=0, atol=0)
    torch.testing.assert_close(lin.sigma(), torch.linalg.matrix_norm(lin.weight, 2))
    with torch.no_grad():  # a changed W is seen (its version counter) and re-converged
        lin.weight.mul_(3.0)
    torch.testing.assert_close(lin(h), out)  # W / sigma(W) does not change with the scale
    torch.testing.assert_close(lin.sigma(), torch.linalg.matrix_norm(lin.weight, 2))


def test_sn_discriminator_layers_all_have_unit_norm_in_training(digits) -> None:
    model = GAN(digits.spec, GANConfig(loss="hinge", spectral_norm=True, hidden=32)).train()
    x, _ = _batch(digits)
    for _ in range(30):  # the persistent u, v converge over training calls
        model.critic_loss(x)
    layers = [m for m in model.discriminator.modules() if isinstance(m, SpectralNormLinear)]
    assert len(layers) == 3  # every layer, the output layer too (SN-GAN)
    for m in layers:
        norm = torch.linalg.matrix_norm(m.normalized_weight().detach(), 2)
        assert abs(float(norm) - 1.0) < 1e-3

# --- the model --------------------------------------------------------------------------------


class _Steps:
    """The trainer's Steps protocol, reduced to zero_grad, backward and step."""

    def __init__(self, rule, model: GAN) -> None:
        self.rule, self.model, self.log = rule, model, []

    def snapshot(self):
        return {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def take(self, player, objective, *, per_example=True):
        before = self.snapshot()
        p = self.rule.players[player]
        values = objective()
        p.optimizer.zero_grad(set_to_none=True)
        values.mean().backward()
        p.optimizer.step()
        self.model.after_step(dgm.core.fitting.StepInfo(player, 1))
        after = self.snapshot()
        moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
        self.log.append((player, moved))
        return values.detach()

    def record(self, player, values):
        pass


@pytest.mark.parametrize("loss", ["nonsaturating", "wasserstein", "wgan_gp"])
def test_each_step_moves_only_its_own_player(digits, loss: str) -> None:
    model = GAN(digits.spec, GANConfig(loss=loss, hidden=32, critic_steps=2,
                                       historical_averaging=0.1))
    rule = make_update_rule(model, lambda name, ps: torch.optim.SGD(ps, lr=0.05))
    steps = _Steps(rule, model)
    x, y = _batch(digits)
    for _ in range(2):
        rule.batch(x, y, steps, model)
    assert steps.log == [("discriminator", {"discriminator"}),
                         ("discriminator", {"discriminator"}),
                         ("generator", {"generator"})]
    if loss == "wasserstein":  # the critic's weights are clipped after its steps
        assert all(float(p.detach().abs().max()) <= model.config.clip for p in
                   model.discriminator.parameters())


@pytest.mark.parametrize("name", ["digits", "binary_digits", "eight_gaussians"])
def test_samples_in_the_data_space_and_dtype(name: str) -> None:
    data = dgm.data.load(name)
    network = "conv" if data.spec.is_image else "mlp"
    for model in (GAN(data.spec, GANConfig(network=network, width=8, hidden=16)),
                  GMMN(data.spec, GMMNConfig(hidden=16))):
        x = model.eval().sample(20, generator=torch.Generator().manual_seed(0))
        data.spec.validate(x)
        assert x.shape == (20, *data.spec.event_shape) and x.dtype == data.spec.dtype
        if data.spec.kind.is_discrete:
            assert 0 <= int(x.min()) and int(x.max()) <= data.spec.num_levels - 1
        again = model.sample(20, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x, again)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_conditional_sampling(digits, network: str) -> None:
    model = GAN(digits.spec, GANConfig(conditional=True, network=network, width=8, hidden=32,
                                       spectral_norm=True, minibatch_std=True)).eval()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12) % 10
    x = model.sample(12, y=y, generator=g)
    assert x.shape == (12, 1, 8, 8) and x.dtype == torch.long
    # The same z with other labels gives other images: the output depends on y.
    z = torch.randn(12, model.config.latent_dim)
    assert not torch.allclose(model.generate(z, y), model.generate(z, (y + 1) % 10))
    with pytest.raises(DataError, match="shape"):
        model.sample(12, y=torch.zeros(12, 1, dtype=torch.long))
    with pytest.raises(DataError):
        model.sample(3, y=torch.tensor([0, 1, 10]))
    with pytest.raises(DataError):
        GAN(digits.spec, GANConfig()).sample(3, y=torch.tensor([0, 1, 2]))
    xb, yb = _batch(digits, 8)
    model.train()
    with pytest.raises(DataError, match="no y"):
        model.player_loss("discriminator", xb, None)
    for player in ("discriminator", "generator"):
        assert model.player_loss(player, xb, yb).shape == (8,)


def test_every_option_gives_finite_per_example_losses(digits) -> None:
    x, y = _batch(digits, 16)
    for cfg in (GANConfig(loss="minimax", label_smoothing=0.1, feature_matching=1.0),
                GANConfig(loss="hinge", spectral_norm=True, minibatch_std=True),
                GANConfig(loss="wgan_gp", network="conv", width=8, historical_averaging=0.5)):
        model = GAN(digits.spec, cfg)
        for player in ("discriminator", "generator"):
            v = model.player_loss(player, x, y)
            assert v.shape == (16,) and torch.isfinite(v).all()
    with pytest.raises(ConfigError):
        GANConfig(loss="least_squares")
    with pytest.raises(ConfigError):
        GANConfig(loss="hinge", label_smoothing=0.1)
    with pytest.raises(NotImplementedError):
        GAN(digits.spec, GANConfig()).log_prob(x)


# --- through the trainer -----------------------------------------------------------------------


def test_saved_weights_are_the_ema_weights(tmp_path) -> None:
    cfg = load_config(overrides=[
        "model.name=gan", "model.hidden=16", "data.name=digits", "train.epochs=1",
        "train.ema_decay=0.9", "train.monitor=objective", "train.patience=null",
        "train.progress=false", "train.threads=1"])
    train(cfg, tmp_path / "run")
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    saved = open_run(tmp_path / "run").load_model()
    for k, v in saved.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, last[f"ema.{k}"]), k
    assert any(not torch.equal(last[f"ema.{k}"], last[f"model.{k}"])
               for k in saved.state_dict() if saved.state_dict()[k].is_floating_point())


def test_gan_covers_the_eight_gaussians(tmp_path) -> None:
    cfg = load_config("configs/gan_eight_gaussians.yaml",
                      ["train.progress=false", "train.threads=1"])
    train(cfg, tmp_path / "run")
    model = open_run(tmp_path / "run").load_model()  # the best weights by validation MMD
    x = model.sample(2000, generator=torch.Generator().manual_seed(0))
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = 3.0 * torch.stack([angles.cos(), angles.sin()], 1)
    d = torch.cdist(x, centers)
    near = d.min(1).values < 3 * 0.3  # within 3σ of a centre
    counts = torch.bincount(d.argmin(1)[near], minlength=8)
    assert float(near.double().mean()) > 0.5
    assert int((counts >= 20).sum()) == 8, counts  # every mode holds >= 1% of the samples
