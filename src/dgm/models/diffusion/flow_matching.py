r"""Flow matching: an ODE model whose velocity is regressed on the velocities of conditional
paths between data and noise (Book §9.4.2; Lipman et al. 2023; Tong et al. 2024; Liu et al.
2023), in the library's time direction (t = 0 data, t = 1 noise; the book's §9.4.2 runs the
other way, so its paths appear here with t -> 1 - t and the velocities negated).

For a data point x (dequantized into the model space), a noise sample x1 ~ N(0, I) and
t ~ U(0, 1), a conditional path z_t with its velocity u_t = dz_t/dt:

- ``lipman`` (Book Eq. 9.65-9.68): z_t = (1 - t) x + (σ + (1 - σ) t) x1,
  u_t = (1 - σ) x1 - x (:class:`~dgm.core.schedules.StraightLine`); σ = σ_min;
- ``icfm`` (Tong et al.'s independent CFM, Book Eq. 9.69-9.72): z_t = (1 - t) x + t x1 + σ ε,
  ε ~ N(0, I), u_t = x1 - x;
- ``rectified``: ``icfm`` with σ = 0, the straight lines of rectified flow (Liu et al. 2023).

The loss ||v_θ(z_t, t) - u_t||² (summed over dimensions) has, up to a constant independent of
θ, the gradient of the regression on the marginal velocity E[u_t | z_t] (Book Theorem 1,
Eq. 9.60-9.62), and the ODE dz/dt = E[u_t | z_t] carries the data to the noise. With
``coupling: ot`` the batch's data and noise are paired by the exact minibatch optimal transport
with squared Euclidean cost (:func:`minibatch_ot`; Tong et al.'s OT-CFM), which straightens the
paths. The likelihood is the ODE likelihood of the learned field (:mod:`.cnf`).

Discrete data, ``prediction: levels``: on the lipman path (a Gaussian path, α_t = 1 - t,
σ_t = σ + (1 - σ) t) the marginal velocity is α'_t E[x | z_t] + σ'_t E[ε | z_t], so the network
may give E[x | z_t] instead of the velocity: logits over the L levels per coordinate, combined
with each level's Gaussian likelihood into the posterior mean
(:func:`~dgm.models.diffusion.common.level_posterior_mean`), exact at small noise. Trained on
the levels themselves, the flow's start z_0 = x + σ ε is a Gaussian dequantization of the data,
and log P(x) >= E[log p_ODE(z_0) + log p(x | z_0) - log q(z_0 | x)] with the decoder
p(x | z_0) ∝ N(z_0 | c_x, σ²) (VDM's; Kingma et al. 2021).

Reflow (Liu et al. 2023): :meth:`FlowMatching.make_reflow_pairs` integrates a trained
teacher's ODE from noise x1 to x̂0 and stores the pairs; the loss then regresses on the path
between the stored pairs instead of (data, fresh noise), so that the new flow's paths are
straighter and need fewer solver steps.

References:
    Lipman, Chen, Ben-Hamu, Nickel, Le. Flow matching for generative modeling. ICLR 2023.
    Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio. Improving and
    generalizing flow-based generative models with minibatch optimal transport. TMLR 2024.
    Liu, Gong, Liu. Flow straight and fast: learning to generate and transfer data with
    rectified flow. ICLR 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.schedules import StraightLine, broadcast_time
from dgm.core.spec import DataSpec
from dgm.models.diffusion.cnf import OdeFlowConfig, OdeFlowModel, check_solver
from dgm.models.diffusion.common import read_levels

__all__ = ["FlowMatchingConfig", "FlowMatching", "minibatch_ot", "PATHS", "COUPLINGS"]

PATHS = ("lipman", "icfm", "rectified")
#: the end of the straight path's likelihood ODE with ``prediction: levels`` (α_1 = 0 there)
T_MAX = 1.0 - 1e-6
COUPLINGS = ("independent", "ot", "ot_sample")


def minibatch_ot(x: Tensor, x1: Tensor) -> Tensor:
    r"""The exact optimal-transport pairing of two equal batches under squared Euclidean cost:
    the permutation π minimizing Σ_i ||x_i - x1_π(i)||² (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`), as indices into x1 (x1[π] pairs with x).

    For uniform weights on n points each, the OT plan is a permutation (Birkhoff), so this is
    Tong et al.'s minibatch OT coupling exactly.

    >>> x = torch.tensor([[0.0], [10.0]])
    >>> minibatch_ot(x, torch.tensor([[9.0], [1.0]]))
    tensor([1, 0])
    """
    if x.shape[0] != x1.shape[0]:
        raise ValueError(f"need equal batches, got {x.shape[0]} and {x1.shape[0]}")
    a = x.detach().reshape(x.shape[0], -1).double().cpu()
    b = x1.detach().reshape(x1.shape[0], -1).double().cpu()
    cost = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = torch.empty(x.shape[0], dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(x1.device)


@dataclass(frozen=True, kw_only=True)
class FlowMatchingConfig(OdeFlowConfig):
    """Conditional flow matching: the path, the coupling, reflow, and (from
    :class:`~dgm.models.diffusion.cnf.OdeFlowConfig`) the network, evaluation and sampler.

    Args:
        path: ``"lipman"``, ``"icfm"`` or ``"rectified"`` (= icfm with sigma 0).
        sigma: lipman: σ_min in [0, 1); icfm: the constant σ >= 0 of the path's noise (the
            book's σ_const, 0.1 in its figures); rectified: must be 0. Default: 0 for
            rectified, 0.1 otherwise.
        coupling: ``"independent"``, ``"ot"`` (each batch paired by its exact OT permutation)
            or ``"ot_sample"`` (the batch's pairs drawn with replacement from that plan, as
            Tong et al.'s algorithm and torchcfm do: some points repeat, others sit the step
            out); icfm and rectified paths.
        reflow_pairs: size of the buffer of (x̂0, x1) teacher pairs for reflow (0: no reflow;
            the pairs come from :meth:`FlowMatching.make_reflow_pairs`).
        teacher: a trained ODE model's run directory: before training, ``reflow_pairs``
            pairs are generated from it (``reflow_solver``, ``reflow_steps``: default the
            teacher's sampler) and its network is the student's start, so that
            ``dgm train flow_matching --set model.teacher=RUN model.reflow_pairs=N`` is one
            reflow round (Liu et al.'s 2-rectified flow from a 1-rectified RUN).
        prediction: ``"velocity"`` (the network is v_θ) or ``"levels"`` (discrete data, the
            lipman path with σ_min > 0): the network gives logits h over the L levels per
            coordinate, x̂ = E[x | z_t] is the posterior mean with p(x = c_k | z_t) ∝
            N(z_t | α_t c_k, σ_t²) e^{h_k} (:func:`~.common.level_posterior_mean`), ε̂ =
            (z_t - α_t x̂)/σ_t and v_θ = α'_t x̂ + σ'_t ε̂. The model trains on the levels
            themselves (no dequantization): z_0 = x + σ_min ε is then the forward process's
            Gaussian dequantization, scored with the decoder p(x | z_0) ∝ N(z_0 | c_x, σ_min²),
            as VDM's. The regression loss becomes ||x̂ - x||²/σ_t².
        sampler, sample_steps: the ODE solver of ``sample`` (default heun, 50 steps).
    """

    path: Literal["lipman", "icfm", "rectified"] = "icfm"
    sigma: float | None = None
    coupling: Literal["independent", "ot", "ot_sample"] = "independent"
    reflow_pairs: int = 0
    teacher: str | None = None
    reflow_solver: str | None = None
    reflow_steps: int | None = None
    prediction: Literal["velocity", "levels"] = "velocity"
    sampler: str = "heun"
    sample_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prediction not in ("velocity", "levels"):
            raise ConfigError(f"model.prediction must be velocity or levels, got "
                              f"{self.prediction!r}")
        if self.path not in PATHS:
            raise ConfigError(f"model.path must be one of {', '.join(PATHS)}, got {self.path!r}")
        if self.sigma is None:
            object.__setattr__(self, "sigma", 0.0 if self.path == "rectified" else 0.1)
        if self.coupling not in COUPLINGS:
            raise ConfigError(f"model.coupling must be one of {', '.join(COUPLINGS)}, "
                              f"got {self.coupling!r}")
        if self.path == "lipman" and not 0.0 <= self.sigma < 1.0:
            raise ConfigError(f"model.sigma (σ_min of the lipman path) must be in [0, 1), "
                              f"got {self.sigma}")
        if self.path == "icfm" and self.sigma < 0:
            raise ConfigError(f"model.sigma must be >= 0, got {self.sigma}")
        if self.path == "rectified" and self.sigma != 0:
            raise ConfigError("model.path rectified is icfm with sigma 0: set model.sigma: 0 "
                              f"(got {self.sigma}) or use path icfm")
        if self.path == "lipman" and self.coupling != "independent":
            raise ConfigError("model.coupling ot pairs data with the noise end of straight "
                              "paths: use path icfm or rectified")
        if self.reflow_pairs < 0:
            raise ConfigError(f"model.reflow_pairs must be >= 0, got {self.reflow_pairs}")
        if self.teacher is not None and not self.reflow_pairs:
            raise ConfigError("model.teacher needs model.reflow_pairs > 0 (how many teacher "
                              "pairs to train on)")
        if self.reflow_solver is not None:
            check_solver(self.reflow_solver, "model.reflow_solver")
        if self.reflow_steps is not None and self.reflow_steps < 1:
            raise ConfigError(f"model.reflow_steps must be >= 1, got {self.reflow_steps}")
        if self.prediction == "levels" and (self.path != "lipman" or not self.sigma
                                            or self.reflow_pairs):
            raise ConfigError("model.prediction levels needs the Gaussian path lipman with "
                              "sigma (σ_min) > 0 and no reflow: its denoiser is the posterior "
                              "over the levels given z_t = (1 - t) x + (σ_min + (1 - σ_min) t) ε")


@register_model("flow_matching", FlowMatchingConfig)
class FlowMatching(OdeFlowModel):
    r"""Conditional flow matching: a velocity field regressed on conditional paths between data
    and N(0, I) noise, sampled and scored as an ODE (Book §9.4.2; Lipman et al. 2023, Tong et
    al. 2024, Liu et al. 2023).

    Loss per example, t ~ U(0, 1), x1 ~ N(0, I) (paired with the data by minibatch OT when
    ``coupling: ot``):

        ||v_θ(z_t, t, c) - u_t||²,  lipman: z_t = (1 - t) x + (σ + (1 - σ) t) x1,
                                             u_t = (1 - σ) x1 - x            (Eq. 9.65-9.68)
                                     icfm:   z_t = (1 - t) x + t x1 + σ ε,
                                             u_t = x1 - x                    (Eq. 9.69-9.72)

    with t -> 1 - t from the book's equations (here t = 0 is the data). ``path: rectified``
    is icfm with σ = 0 (rectified flow, Liu et al. 2023). The loss is a regression error, not
    nats.

    Likelihood: the ODE likelihood of v_θ (:class:`~.cnf.OdeFlowModel`) with the base
    N(0, I) for lipman and rectified, and N(0, (1 + σ²) I) for icfm (the marginal of
    z_1 = x1 + σ ε); with σ > 0 the flow carries that base to the data smoothed by N(0, σ²)
    (icfm) or N(0, σ_min²) (lipman), whose density is what is scored. Training uses
    dequantized data (discrete data), so the score is a dequantization bound on log P(x).
    The book's listing adds a tanh to its samples and its time embedding to x; neither is here.

    Reflow (Liu et al. 2023), in Python (``reflow_pairs`` fixes the size of the stored pairs,
    so that a run saves and loads them; the teacher here was trained with ``--set
    model.path=rectified model.sigma=0``, and the student keeps its options)::

        import torch, dgm
        run = dgm.open_run("runs/fm_moons")             # a trained flow_matching run
        teacher = run.load_model()
        options = dict(run.config.model_options, reflow_pairs=20000)
        student = dgm.build_model("flow_matching", run.spec, options)
        nfe = student.make_reflow_pairs(teacher, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        x, _ = dgm.datasets.load("moons").train.batch(slice(0, 256), run.spec)
        for step in range(2000):                        # x only sets the batch size here
            opt.zero_grad()
            student.loss(x).mean().backward()
            opt.step()
        student.eval().sample(1000, steps=1, solver="euler")  # one step: nearly straight paths
    """

    what = "flow matching"

    def __init__(self, spec: DataSpec, config: FlowMatchingConfig) -> None:
        if config.prediction == "levels" and not spec.kind.is_discrete:
            raise ConfigError("model.prediction levels needs discrete data (it predicts a "
                              "distribution over the levels)")
        super().__init__(spec, config)
        self.config: FlowMatchingConfig = config
        self.straight = StraightLine(config.sigma) if config.path == "lipman" else None
        self.levels = config.prediction == "levels"
        if self.levels:
            self.dequantization = None
        self._teachers: list[OdeFlowModel] = []
        n = config.reflow_pairs
        if n:
            self.register_buffer("reflow_x0", torch.zeros(n, *spec.event_shape))
            self.register_buffer("reflow_x1", torch.zeros(n, *spec.event_shape))
            self.register_buffer("reflow_y", torch.zeros(n, dtype=torch.long))
            self.register_buffer("reflow_ready", torch.zeros((), dtype=torch.long))

    def base_std(self) -> float:
        """1 for lipman and rectified; sqrt(1 + σ²) for icfm (z_1 = x1 + σ ε)."""
        if self.config.path == "icfm":
            return math.sqrt(1.0 + self.config.sigma**2)
        return 1.0

    def describe(self) -> str:
        c = self.config
        sigma = f", σ={c.sigma:g}" if c.path != "rectified" else ""
        ot = {"independent": "", "ot": ", OT coupling",
              "ot_sample": ", OT coupling, pairs resampled"}[c.coupling]
        levels = ", levels posterior" if self.levels else ""
        return f"flow matching ({c.path} path{sigma}{ot}{levels})"

    def net_outputs(self) -> int:
        """L logits per coordinate with ``prediction: levels``, else the velocity."""
        return self.num_levels if self.config.prediction == "levels" else 1

    def field(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """v_θ(t, z | y): the network, or α'_t x̂ + σ'_t ε̂ from its logits over the levels."""
        if not self.levels:
            return self.net(z, t, y)
        assert self.straight is not None
        x_hat, eps_hat = self.denoise(z, t, y)
        d_alpha, d_sigma = self.straight.derivatives(broadcast_time(t, z))
        return d_alpha * x_hat + d_sigma * eps_hat

    def denoise(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x̂, ε̂) = (E[x | z_t], E[ε | z_t]) from the network's logits over the levels
        (``prediction: levels``), t of shape (N,)."""
        if self.straight is None or not self.levels:
            raise ConfigError("denoise needs model.prediction levels")
        alpha, sigma = self.straight.alpha_sigma(broadcast_time(t, z))
        return read_levels(self.net(z, t, y), z, alpha, sigma, self.num_levels)

    @property
    def teacher_run(self) -> str | None:
        """The run directory of the reflow teacher (``model.teacher``), for the trainer."""
        return self.config.teacher

    def set_teacher(self, teacher: OdeFlowModel) -> None:
        """Hand over the loaded teacher; its pairs are made in :meth:`initialize_from_data`."""
        if not isinstance(teacher, OdeFlowModel):
            raise ConfigError(f"model.teacher {self.config.teacher} holds a "
                              f"{type(teacher).__name__}, not an ODE flow")
        self._teachers = [teacher]  # a list: not a submodule, not saved with the student

    @property
    def has_reflow_pairs(self) -> bool:
        """Whether the loss regresses on stored teacher pairs."""
        return bool(self.config.reflow_pairs) and bool(self.reflow_ready)

    # --- the conditional path ----------------------------------------------------------------

    def conditional_path(self, x: Tensor, x1: Tensor, t: Tensor, eps: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
        """(z_t, u_t) of the path between x (t = 0) and the noise x1 (t = 1); t of shape (N,);
        ``eps`` is the icfm path's extra noise (needed when σ > 0)."""
        tb = broadcast_time(t, x)
        if self.straight is not None:
            alpha, sigma = self.straight.alpha_sigma(tb)
            d_alpha, d_sigma = self.straight.derivatives(tb)
            return alpha * x + sigma * x1, d_alpha * x + d_sigma * x1
        z = (1 - tb) * x + tb * x1
        if self.config.path == "icfm" and self.config.sigma > 0:
            if eps is None:
                raise ValueError("the icfm path with sigma > 0 needs eps")
            z = z + self.config.sigma * eps
        return z, x1 - x

    def _pairs(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x0, x1, labels) of one step: data and fresh noise, or stored reflow pairs."""
        if self.config.reflow_pairs:
            if not self.has_reflow_pairs:
                raise ConfigError("model.reflow_pairs > 0 but no pairs are stored: call "
                                  "make_reflow_pairs(teacher) before training")
            idx = torch.randint(self.config.reflow_pairs, (x.shape[0],), device=x.device)
            stored = self.reflow_y[idx] if self.num_classes else None
            return self.reflow_x0[idx], self.reflow_x1[idx], self.training_labels(stored)
        x0 = self.to_model_space(x) if self.levels else self.dequantize(x)
        x1 = torch.randn_like(x0)
        labels = self.training_labels(y)
        if self.config.coupling != "independent":
            x1 = x1[minibatch_ot(x0, x1)]
        if self.config.coupling == "ot_sample":  # n pairs drawn from the plan π = P/n
            idx = torch.randint(x0.shape[0], (x0.shape[0],), device=x0.device)
            x0, x1 = x0[idx], x1[idx]
            labels = None if labels is None else labels[idx]
        return x0, x1, labels

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """||v_θ(z_t, t, y) - u_t||² per example (summed over dimensions), t ~ U(0, 1)."""
        self.check_input(x)
        x0, x1, labels = self._pairs(x, y)
        t = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype)
        eps = torch.randn_like(x0) if self.config.path == "icfm" and self.config.sigma else None
        z, u = self.conditional_path(x0, x1, t, eps)
        pred = self.field(z, t, labels)
        return (pred - u).pow(2).reshape(x0.shape[0], -1).sum(1)

    # --- likelihood --------------------------------------------------------------------------

    def log_prob_estimate(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> LikelihoodEstimate:
        """The ODE likelihood (:class:`~.cnf.OdeFlowModel`); with ``prediction: levels``, the
        probability-flow ODE of the straight path in log-SNR time from t = 0 to 1 - 10⁻⁶
        (α_1 = 0 has log SNR -∞), dequantized by the forward process z_0 = x + σ_min ε with
        the decoder p(x | z_0) ∝ N(z_0 | c_x, σ_min²)
        (:meth:`~.common.ContinuousTimeModel.flow_estimate`)."""
        if not self.levels:
            return super().log_prob_estimate(x, y, generator=generator)
        assert self.straight is not None

        def denoiser(lab: Tensor | None) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
            return lambda z, t: self.denoise(z, t, lab)

        return self.flow_estimate(x, denoiser, self.straight, self.config, t_min=0.0,
                                  t_max=T_MAX, labels=self.likelihood_labels(x, y),
                                  generator=generator,
                                  decoder=self.levels_decoder(self.straight, 0.0),
                                  what=f"{self.describe()}, in log-SNR time")

    # --- reflow ------------------------------------------------------------------------------

    def make_reflow_pairs(
        self,
        teacher: OdeFlowModel,
        n: int | None = None,
        *,
        steps: int | None = None,
        solver: str | None = None,
        guidance: float = 1.0,
        batch_size: int = 1024,
        generator: torch.Generator | None = None,
        copy_weights: bool = True,
    ) -> float:
        """Store ``n`` (= ``reflow_pairs``) pairs (x̂0, x1) for reflow: x1 from the teacher's
        base, x̂0 its ODE solution at t = 0 (``solver``/``steps``, default the teacher's
        sampler), in the teacher's model space. Returns the mean NFE per solve.

        The model space (the standardization of continuous data) is copied from the teacher,
        and with ``copy_weights`` its network too (Liu et al. start the k-rectified flow from
        the (k-1)-th); a class-conditional student stores the classes 0, 1, ... in turn and
        the teacher (conditional too) generates each pair for its class.
        """
        size = self.config.reflow_pairs
        n = size if n is None else n
        if not size or n != size:
            raise ConfigError(f"make_reflow_pairs: n must equal model.reflow_pairs ({size}) "
                              f"> 0 (the buffers' size), got {n}")
        if not isinstance(teacher, OdeFlowModel):
            raise ConfigError(f"the reflow teacher must be an ODE model, got "
                              f"{type(teacher).__name__}")
        if (teacher.spec.event_shape != self.spec.event_shape
                or teacher.discrete != self.discrete or teacher.num_levels != self.num_levels):
            raise ConfigError(f"the teacher models other data ({teacher.spec}) than this "
                              f"model ({self.spec})")
        if self.num_classes and teacher.num_classes != self.num_classes:
            raise ConfigError("a class-conditional student needs a teacher conditional on the "
                              "same classes")
        if copy_weights:
            try:
                self.net.load_state_dict(teacher.net.state_dict())
            except RuntimeError as e:
                raise ConfigError(f"copy_weights: the teacher's network differs: {e}") from None
        self.loc.copy_(teacher.loc)
        self.scale.copy_(teacher.scale)
        labels = None
        if self.num_classes:
            labels = torch.arange(n, device=self.loc.device) % self.num_classes
        was_training = teacher.training
        teacher.eval()
        nfe, solves = 0, 0
        try:
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                x1 = teacher.base_noise(m, generator).to(self.loc.device)
                lab = labels[start:start + m] if labels is not None else None
                sol = teacher.integrate(x1.to(teacher.loc.device), lab, guidance=guidance,
                                        solver=solver, steps=steps)
                assert isinstance(sol.state, Tensor)
                self.reflow_x0[start:start + m] = sol.state.to(self.loc.device)
                self.reflow_x1[start:start + m] = x1
                if lab is not None:
                    self.reflow_y[start:start + m] = lab
                nfe += sol.nfe
                solves += 1
        finally:
            teacher.train(was_training)
        self.reflow_ready.fill_(1)
        return nfe / max(1, solves)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """The standardization of continuous data, unless reflow pairs are stored (they live
        in the teacher's model space, which :meth:`make_reflow_pairs` copied); with a
        ``teacher`` run, its pairs are made here."""
        if self.config.teacher is not None and not self.has_reflow_pairs:
            if not self._teachers:
                raise ConfigError("model.teacher is loaded by the trainer (dgm train); in "
                                  "Python, call make_reflow_pairs(teacher) instead")
            self.make_reflow_pairs(self._teachers.pop(), steps=self.config.reflow_steps,
                                   solver=self.config.reflow_solver, generator=generator)
        if self.has_reflow_pairs:
            self.check_input(x)
            return
        super().initialize_from_data(x, generator)
