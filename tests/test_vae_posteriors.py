"""VAE posteriors: flow posteriors' log q(z_T | x) by the change of variables against autograd
Jacobians, the Householder flow as a full-covariance Gaussian, and the amortized Sylvester
maps' constraints (Book §5.4.2)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from dgm.core.transforms.householder import householder_matrix
from dgm.core.transforms.sylvester import orthonormal_columns
from dgm.models.latent.posteriors import (
    DiagonalGaussianPosterior,
    FlowPosterior,
    HouseholderPosterior,
    IAFPosterior,
    PosteriorConfig,
    SylvesterPosterior,
    build_posterior,
)

M = 4


def _flows() -> dict[str, FlowPosterior]:
    torch.manual_seed(0)
    return {
        "householder": HouseholderPosterior(M, 3),
        "sylvester_orthogonal": SylvesterPosterior(M, 3, "orthogonal", num_ortho=2),
        "sylvester_householder": SylvesterPosterior(M, 3, "householder", num_reflections=3),
        "sylvester_triangular": SylvesterPosterior(M, 3, "triangular"),
        "iaf": IAFPosterior(M, 3, hidden=16, context_dim=5),
    }


FLOWS = _flows()


def _params(post: FlowPosterior, n: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, post.num_params, dtype=torch.float64)


@pytest.mark.parametrize("name", FLOWS)
def test_flow_log_q_is_the_change_of_variables(name: str) -> None:
    """log q(z_T) = log q_0(z_0) - log |det ∂z_T/∂z_0|, the determinant by autograd."""
    post = FLOWS[name].double()
    if name == "iaf":  # start away from the identity it is initialized at
        with torch.no_grad():
            for p in post.parameters():
                p.add_(0.2 * torch.randn_like(p))
    params = _params(post, 6)
    z0 = torch.randn(6, M, dtype=torch.float64)
    z, log_det = post.flow(z0, params)
    for i in range(6):
        jac = torch.autograd.functional.jacobian(
            lambda v: post.flow(v.unsqueeze(0), params[i : i + 1])[0][0], z0[i]
        )
        sign, logabs = torch.linalg.slogdet(jac)
        if name != "householder":  # reflections flip the orientation; the others keep it
            assert float(sign) > 0
        torch.testing.assert_close(log_det[i], logabs, atol=1e-9, rtol=1e-9)
    draw = post.rsample(params, 3, generator=torch.Generator().manual_seed(1))
    assert draw.z.shape == (3, 6, M) and draw.log_q.shape == (3, 6)


def test_householder_posterior_is_a_full_covariance_gaussian() -> None:
    """z_T = U z_0 with U orthogonal: q(z_T | x) = N(Uμ, U diag σ² Uᵀ) (Book §5.4.2.1)."""
    post = FLOWS["householder"].double()
    params = _params(post, 1)
    draw = post.rsample(params, 5, generator=torch.Generator().manual_seed(2))
    base = post.gaussian(params)
    eye = torch.eye(M, dtype=torch.float64)
    u = post.flow(eye, params.expand(M, -1))[0].T  # columns U e_i
    torch.testing.assert_close(u.T @ u, eye)
    mvn = MultivariateNormal(u @ base.mean[0], u @ torch.diag(base.log_var[0].exp()) @ u.T)
    torch.testing.assert_close(draw.log_q[:, 0], mvn.log_prob(draw.z[:, 0]))


def test_householder_matrices_are_orthogonal_reflections() -> None:
    v = torch.randn(7, 1, M, dtype=torch.float64)
    h = householder_matrix(v)
    eye = torch.eye(M, dtype=torch.float64).expand(7, M, M)
    torch.testing.assert_close(h.transpose(-1, -2) @ h, eye)
    torch.testing.assert_close(h @ h, eye)  # one reflection is its own inverse
    torch.testing.assert_close(torch.linalg.det(h), -torch.ones(7, dtype=torch.float64))
    q = householder_matrix(torch.randn(7, 5, M, dtype=torch.float64))
    torch.testing.assert_close(q.transpose(-1, -2) @ q, eye)


def test_orthonormal_columns_batched() -> None:
    q = orthonormal_columns(torch.randn(9, M, 3, dtype=torch.float64))
    torch.testing.assert_close(
        q.transpose(-1, -2) @ q, torch.eye(3, dtype=torch.float64).expand(9, 3, 3)
    )


@pytest.mark.parametrize("variant", ["orthogonal", "householder", "triangular"])
def test_sylvester_steps_stay_invertible_under_extreme_parameters(variant: str) -> None:
    """Every factor 1 + h' R_mm R̃_mm stays positive, whatever the encoder outputs."""
    post = SylvesterPosterior(M, 2, variant).double()
    params = _params(post, 64, scale=30.0)
    z0 = torch.randn(64, M, dtype=torch.float64)
    z, log_det = post.flow(z0, params)
    assert bool(torch.isfinite(z).all() and torch.isfinite(log_det).all())
    for i in range(4):
        jac = torch.autograd.functional.jacobian(
            lambda v: post.flow(v.unsqueeze(0), params[i : i + 1])[0][0], z0[i]
        )
        assert float(torch.linalg.det(jac)) > 0


def test_diagonal_gaussian_closed_form_kl_matches_monte_carlo() -> None:
    from dgm.models.latent.priors import StandardNormalPrior

    post = DiagonalGaussianPosterior(M)
    params = torch.randn(3, 2 * M, dtype=torch.float64)
    prior = StandardNormalPrior(M).double()
    kl = post.closed_form_kl(params, prior)
    assert kl is not None and kl.shape == (3, M)
    draw = post.rsample(params, 200_000, generator=torch.Generator().manual_seed(0))
    mc = (draw.log_q - prior.log_prob(draw.z)).mean(0)
    torch.testing.assert_close(mc, kl.sum(-1), atol=0.02, rtol=0.0)


def test_iaf_starts_at_the_identity_and_is_autoregressive_per_step() -> None:
    post = IAFPosterior(M, 2, hidden=16, context_dim=3).double()
    params = _params(post, 4)
    z0 = torch.randn(4, M, dtype=torch.float64)
    z, log_det = post.flow(z0, params)
    # Zero-initialized steps with a reversal in between: two steps give the reversed input.
    torch.testing.assert_close(z, z0.flip(1))
    torch.testing.assert_close(log_det, torch.zeros(4, dtype=torch.float64))
    step = post.steps[0]
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.3 * torch.randn_like(p))
    jac = torch.autograd.functional.jacobian(
        lambda v: step(v.unsqueeze(0), params[:1, 2 * M :])[0][0], z0[0]
    )
    torch.testing.assert_close(jac.triu(1), torch.zeros(M, M, dtype=torch.float64))


def test_build_posterior_sizes() -> None:
    assert build_posterior(PosteriorConfig(), 3).num_params == 6
    assert build_posterior(PosteriorConfig(kind="householder"), 3).num_params == 9
    sylv = build_posterior(PosteriorConfig(kind="sylvester", num_flows=2, num_ortho=2), 3)
    assert sylv.num_params == 6 + 2 * (2 * 4 + 3 * 2 + 3 * 2)
