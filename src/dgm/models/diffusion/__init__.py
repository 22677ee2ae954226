"""Diffusion, score-based models, continuous normalizing flows and flow matching (Book §5.5.3,
ch. 9): one model space, one network family and one ODE likelihood (:mod:`.common`)."""

from dgm.models.diffusion import cnf, common, ddpm, flow_matching, score, vdm  # noqa: F401

__all__ = ["common"]
