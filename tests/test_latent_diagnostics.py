"""Latent diagnostics of the report: active units, KL per level, interpolations, and the
report's latent section for a VAE with a 2-D latent."""

from __future__ import annotations

import torch

from dgm.cli import main
from dgm.core.base import LatentVariable
from dgm.core.spec import DataKind, DataSpec
from dgm.eval.latent import interpolate, summarize_latents
from dgm.models.latent.posteriors import PosteriorConfig
from dgm.models.latent.vae import VAE, VAEConfig

SPEC = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)


def test_active_units_count_only_units_that_move_with_the_input() -> None:
    torch.manual_seed(0)
    model = VAE(SPEC, VAEConfig(latent_dim=3, hidden=16)).eval()
    assert isinstance(model, LatentVariable)
    with torch.no_grad():  # unit 2's mean ignores x: an inactive (collapsed) unit
        model.encoder[-1].weight[2].zero_()
        model.encoder[-1].weight[0] *= 50.0
    x = torch.randint(0, 17, (64, 1, 8, 8))
    summary = summarize_latents(model, x)
    assert summary.units == [3]
    assert summary.active_units == [1] or summary.active_units == [2]
    assert float(summary.unit_activity[0][2]) == 0.0
    assert summary.kl_nats[0] > 0.0


def test_interpolation_ends_decode_the_end_points() -> None:
    torch.manual_seed(1)
    for posterior in ("gaussian", "vmf"):
        model = VAE(SPEC, VAEConfig(latent_dim=3, hidden=16,
                                    posterior=PosteriorConfig(kind=posterior))).eval()
        x = torch.randint(0, 17, (4, 1, 8, 8))
        rows = interpolate(model, x[:2], x[2:], steps=5).reshape(2, 5, 1, 8, 8)
        ends = model.decode_top(model.latent_means(x)[0])
        assert torch.equal(rows[:, 0], ends[:2]) and torch.equal(rows[:, -1], ends[2:])


def test_report_shows_the_latent_space(tmp_path) -> None:
    run = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--epochs", "2", "--out", str(run),
                 "--set", "train.progress=false", "model.latent_dim=2", "model.hidden=32",
                 "model.prior.kind=mog"]) == 0
    assert main(["report", str(run), "--k", "5"]) == 0
    page = (run / "report.html").read_text()
    for part in ("Latent space", "active units", "Posterior locations over the prior",
                 "Interpolations"):
        assert part in page
