"""Benchmark: our flow matching beside the peer library torchcfm 1.0.7, trained side by side.

    python benchmarks/cfm_peers.py [--toys moons eight_gaussians checkerboard] [--steps 2500]
        [--digits] [--digits-steps 3000] [--digits-seeds 0 1 2] [--seed 0] [--render-only]

Two pairs, each trained twice from the same network (our velocity MLP, the same initialization
seed), optimizer (Adam 1e-3, no EMA), batches (one seeded order of the training split), number of
steps and loss scale (the batch mean of the per-example squared error summed over dimensions):

- ``icfm``: our ``flow_matching`` (path icfm, coupling independent, σ) beside
  ``torchcfm.ConditionalFlowMatcher(σ)`` (I-CFM);
- ``ot``: ours with coupling ``ot`` (the exact minibatch assignment, a permutation from scipy's
  Hungarian algorithm) beside ``torchcfm.ExactOptimalTransportConditionalFlowMatcher(σ)``
  (OT-CFM: POT's exact plan, from which the batch's pairs are *resampled with replacement*).

The two sides differ only in how a step's (t, z_t, target) triple is made: ours by
``model.loss(x)``, theirs by the peer's ``sample_location_and_conditional_flow(x0, x1)`` with
x0 ~ N(0, I) the noise and x1 the data in our model space. Time runs the other way in torchcfm
(t = 0 noise, t = 1 data; ours: t = 0 data, t = 1 noise), so the network is trained on
net(x_t, 1 - t) ≈ -u_t. Both trained networks sit in the same ``FlowMatching`` object and are
scored by the same code: our ODE likelihood (dopri5, exact trace), our samplers, our MMD.

Toys (σ = 0.1; the flow_matching_moons preset's network, MLP 256 x 2 blocks; batch 256): the
test negative log-density in nats per 2-D point (continuous data: a density, not a discrete
NLL; with σ > 0 the flow models the data smoothed by N(0, σ²) in the standardized space),
MMD² (Gaussian kernel, median heuristic) ± its jackknife standard error of 2000 samples against
the 2000 test points (adaptive dopri5, and Euler with 5 steps to show how straight the paths
are), CPU seconds per training step (the OT solve included) and the samplers' NFE.

Digits (``--digits``; the OT pair only, three sides: ours with the exact permutation (``ot``), ours
with the pairs resampled from the plan as torchcfm does (``ot_sample``, side ``ours_sample``) and
torchcfm; ``--digits-seeds`` pairs them by seed; σ = 0, the MLP 512 x 3 of the
flow_matching_dequantized_digits preset, batch 128): the ODE likelihood on the 447 test images (an
estimate of the uniform-dequantization bound, nats per image and bits/dim) and FD / KID / precision
/ recall of 1000 samples (Heun, 50 steps) on the shipped digits feature net. Left out by default:
an estimated 6-8 CPU minutes more (35 ms per step, about a minute or two per side for the exact-
trace likelihood in 64-D).

torchcfm is installed, if it cannot be imported, with ``pip install --no-deps --target
benchmarks/results/tmp/peers torchcfm==1.0.7 pot==0.9.7`` (its own dependency list pulls a stale
torchdyn) and imported from there; the package ``dgm`` never imports it.

Results: ``benchmarks/results/cfm_peers.json`` (the rows of a part, toys or digits, that is not
run keep their last values), the figure ``benchmarks/results/cfm_peers.png`` (rows: toys;
columns: the data, each side's density, and sample paths of the OT pair; its arrays are kept in
``benchmarks/results/tmp/cfm_peers_figure.npz`` for ``--render-only``), and the section of
``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402
from toy_flows import density_grid, grid_box  # noqa: E402

from dgm.core.registry import build_model  # noqa: E402
from dgm.core.solvers import solve_ode  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.quality import compare  # noqa: E402
from dgm.models.diffusion.flow_matching import FlowMatching, minibatch_ot  # noqa: E402

PEERS = RESULTS / "tmp" / "peers"
OUT = RESULTS / "cfm_peers.json"
#: the figure's density grids and paths (git-ignored), for --render-only
FIGURE_DATA = RESULTS / "tmp" / "cfm_peers_figure.npz"
PINS = ("torchcfm==1.0.7", "pot==0.9.7")
TOYS = ["moons", "eight_gaussians", "checkerboard"]
SIDES = ("ours", "torchcfm")
#: the digits pair adds ours with the OT pairs resampled from the plan (coupling ot_sample)
DIGITS_SIDES = ("ours", "ours_sample", "torchcfm")
COUPLING = {"ours": "ot", "ours_sample": "ot_sample", "torchcfm": "independent"}
#: pair -> (our coupling, torchcfm's class)
PAIRS = {"icfm": ("independent", "ConditionalFlowMatcher"),
         "ot": ("ot", "ExactOptimalTransportConditionalFlowMatcher")}

TOY_MODEL = {"path": "icfm", "sigma": 0.1, "network": "mlp", "hidden": 256, "num_hidden": 2,
             "sampler": "dopri5", "eval_chunk": 1000}
DIGITS_MODEL = {"path": "icfm", "sigma": 0.0, "network": "mlp", "hidden": 512, "num_hidden": 3,
                "sampler": "heun", "sample_steps": 50}
ANCHORS = {"independent": 106.5, "mixture40": 100.0}


# --- the peer ------------------------------------------------------------------------------------


def import_peer() -> tuple[Any, dict[str, str]]:
    """torchcfm (installed into ``PEERS`` with --no-deps if missing) and the peer versions."""
    if PEERS.is_dir() and str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        torchcfm = importlib.import_module("torchcfm")
    except ImportError:
        PEERS.mkdir(parents=True, exist_ok=True)
        print(f"installing {' '.join(PINS)} into {PEERS} (--no-deps)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(PEERS), *PINS], check=True)
        if str(PEERS) not in sys.path:
            sys.path.insert(0, str(PEERS))
        importlib.invalidate_caches()
        torchcfm = importlib.import_module("torchcfm")
    import ot
    import scipy

    versions = {"torch": torch.__version__, "torchcfm": getattr(torchcfm, "__version__", "?"),
                "pot": ot.__version__, "numpy": np.__version__, "scipy": scipy.__version__}
    return torchcfm, versions


# --- training ------------------------------------------------------------------------------------


def train(model: FlowMatching, side: str, matcher: Any, x_train: Tensor, *, steps: int,
          batch: int, lr: float, seed: int) -> dict[str, Any]:
    """The same plain loop for both sides: Adam, one seeded batch order (reshuffled each epoch),
    the loss the batch mean of the per-example squared error summed over dimensions. Only the
    (t, z_t, target) triple differs: ours from ``model.loss``, theirs from the peer's sampler
    with t_ours = 1 - t and the target -u_t (torchcfm's time runs from noise to data)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)  # t, noise (and ours: the icfm path's ε)
    np.random.seed(seed + 1)  # torchcfm resamples the OT plan with numpy's global generator
    n = x_train.shape[0]
    perm, pos = torch.randperm(n, generator=order), 0
    losses: list[float] = []
    model.train()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=order), 0
        xb = x_train[perm[pos:pos + batch]]
        pos += batch
        if side != "torchcfm":  # ours, ours_sample
            loss = model.loss(xb).mean()
        else:
            x1 = model.dequantize(xb)  # torchcfm's target (data) end, in our model space
            x0 = torch.randn_like(x1)  # its source (noise) end
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            pred = model.net(xt, 1 - t, None)
            loss = (pred + ut).pow(2).reshape(xt.shape[0], -1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    model.eval()
    tail = losses[-min(200, len(losses)):]
    return {"train_cpu_s": cpu, "train_wall_s": wall, "cpu_s_per_step": cpu / steps,
            "wall_s_per_step": wall / steps, "loss_first": losses[0],
            "loss_last": sum(tail) / len(tail)}


def make_model(spec: Any, options: dict[str, Any], coupling: str, x_init: Tensor,
               seed: int) -> FlowMatching:
    model = build_model("flow_matching", spec, {**options, "coupling": coupling, "seed": seed})
    assert isinstance(model, FlowMatching)
    model.initialize_from_data(x_init, torch.Generator().manual_seed(seed))
    return model


def make_matcher(torchcfm: Any, pair: str, sigma: float) -> Any:
    return getattr(torchcfm, PAIRS[pair][1])(sigma=sigma)


def ot_timing(data: str, x_model: Tensor, batch: int, reps: int, seed: int
              ) -> dict[str, Any]:
    """CPU ms per batch of the two OT pairings alone, on the same ``reps`` batches of training
    points (``x_model``: in our model space) against fresh N(0, I) noise: the solve's cost
    depends on the data's layout, so random-vs-random batches would not do."""
    from torchcfm.optimal_transport import OTPlanSampler

    g = torch.Generator().manual_seed(seed)
    flat = x_model.reshape(x_model.shape[0], -1)
    batches = [(flat[torch.randint(flat.shape[0], (batch,), generator=g)],
                torch.randn(batch, flat.shape[1], generator=g)) for _ in range(reps)]
    sampler = OTPlanSampler(method="exact")
    c0 = time.process_time()
    for x, x1 in batches:
        x1[minibatch_ot(x, x1)]
    ours = time.process_time() - c0
    c0 = time.process_time()
    for x, x1 in batches:
        sampler.sample_plan(x1, x)
    theirs = time.process_time() - c0
    return {"data": data, "dim": flat.shape[1], "batch": batch, "reps": reps,
            "ours_ms": 1e3 * ours / reps, "torchcfm_ms": 1e3 * theirs / reps}


# --- evaluation ----------------------------------------------------------------------------------


def likelihood(model: FlowMatching, x: Tensor) -> dict[str, Any]:
    c0 = time.process_time()
    e = model.log_prob_estimate(x)
    lp = e.log_prob.double()
    return {"nats": float(-lp.mean()), "nats_stderr": float(lp.std() / math.sqrt(len(lp))),
            "lik_nfe": float(e.nfe), "lik_cpu_s": time.process_time() - c0, "lik_label": e.note}


@torch.no_grad()
def trajectories(model: FlowMatching, z1: Tensor, steps: int = 40) -> np.ndarray:
    """Heun paths from the base (t = 1) to the data (t = 0), in data coordinates:
    (steps + 1, N, 2)."""
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    z, out = z1, [z1]
    for a, b in zip(ts[:-1], ts[1:]):  # one Heun step of the library's solver per interval
        z = solve_ode(lambda t, s: model.velocity(s, t.expand(s.shape[0])), z, a, b,
                      solver="heun", steps=1).state
        out.append(z)
    return torch.stack([model.to_data(s) for s in out]).numpy()


def run_toy(toy: str, torchcfm: Any, args: argparse.Namespace, box: tuple[float, ...]
            ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray],
                       dict[str, np.ndarray], dict[str, Any]]:
    ds = load(toy)
    x_train, x_test = ds.train.x, ds.test.x
    sigma = TOY_MODEL["sigma"]
    rows, dens, traj = [], {}, {}
    for pair, (coupling, peer_cls) in PAIRS.items():
        for side in SIDES:
            model = make_model(ds.spec, TOY_MODEL, coupling if side == "ours" else "independent",
                               x_train, args.seed)
            matcher = make_matcher(torchcfm, pair, sigma) if side == "torchcfm" else None
            fit = train(model, side, matcher, x_train, steps=args.steps, batch=args.batch,
                        lr=args.lr, seed=args.seed)
            lik = likelihood(model, x_test)
            gen = torch.Generator().manual_seed(args.seed + 2)
            z1 = model.base_noise(args.n_samples, gen)  # the same noise for both sides
            c0 = time.process_time()
            sol = model.integrate(z1, solver="dopri5")
            sample_cpu = time.process_time() - c0
            q = compare(x_test, model.to_data(sol.state), dataset=toy, spec=ds.spec,
                        metrics=["mmd"])
            sol5 = model.integrate(z1, solver="euler", steps=5)
            q5 = compare(x_test, model.to_data(sol5.state), dataset=toy, spec=ds.spec,
                         metrics=["mmd"])
            c0 = time.process_time()
            dens[(pair, side)] = density_grid(model, box, args.grid)
            grid_cpu = time.process_time() - c0
            if pair == "ot":
                traj[side] = trajectories(model, z1[:args.n_paths])
            row = {
                "data": toy, "pair": pair, "side": side,
                "method": (f"dgm flow_matching icfm σ={sigma:g}, coupling {coupling}"
                           if side == "ours" else f"torchcfm.{peer_cls}(sigma={sigma:g})"),
                "sigma": sigma, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                "seed": args.seed, "params": model.num_parameters(), **fit, **lik,
                "mmd2": q.mmd, "mmd2_stderr": q.mmd_stderr, "mmd_bandwidth": q.mmd_bandwidth,
                "sample_solver": "dopri5", "sample_nfe": sol.nfe, "sample_cpu_s": sample_cpu,
                "mmd2_euler5": q5.mmd, "mmd2_euler5_stderr": q5.mmd_stderr,
                "n_samples": args.n_samples, "n_test": len(x_test), "grid_cpu_s": grid_cpu,
            }
            rows.append(row)
            print(f"{toy} {pair} {side}: {row['nats']:.3f} ± {row['nats_stderr']:.3f} nats/point "
                  f"(NFE {row['lik_nfe']:.0f}), MMD² {q.mmd:.5f} ± {q.mmd_stderr:.5f} "
                  f"(dopri5, {sol.nfe} NFE), Euler-5 MMD² {q5.mmd:.5f}, "
                  f"{1e3 * fit['cpu_s_per_step']:.2f} CPU ms/step, loss {fit['loss_first']:.3f}"
                  f" -> {fit['loss_last']:.3f}, grid {grid_cpu:.1f} s", flush=True)
    timing = ot_timing(toy, model.to_model_space(x_train), args.batch, 200, args.seed)
    return rows, dens, traj, timing


def run_digits(torchcfm: Any, args: argparse.Namespace
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from dgm.eval.features import feature_net

    ds = load("digits")
    x_train, _ = ds.train.all(ds.spec)
    x_test, _ = ds.test.all(ds.spec)
    x_test = x_test[:args.digits_test] if args.digits_test else x_test
    real = ds.test.batch(slice(None), ds.spec, torch.Generator().manual_seed(0))[0]
    net = feature_net("digits")
    sigma = DIGITS_MODEL["sigma"]
    rows = []
    for seed, side in itertools.product(args.digits_seeds or [args.seed],
                                        args.digits_sides or DIGITS_SIDES):
        model = make_model(ds.spec, DIGITS_MODEL, COUPLING[side], x_train, seed)
        matcher = make_matcher(torchcfm, "ot", sigma) if side == "torchcfm" else None
        fit = train(model, side, matcher, x_train, steps=args.digits_steps, batch=128,
                    lr=args.lr, seed=seed)
        lik = likelihood(model, x_test)
        gen = torch.Generator().manual_seed(seed + 2)
        z1 = model.base_noise(args.digits_samples, gen)
        c0 = time.process_time()
        sol = model.integrate(z1, solver="heun", steps=50)
        sample_cpu = time.process_time() - c0
        r = compare(real, model.to_data(sol.state), dataset="digits", spec=ds.spec,
                    metrics=["fd", "kid", "pr"], split="test", seed=seed, net=net)
        dim = ds.spec.dim
        row = {
            "data": "digits", "pair": "ot", "side": side,
            "method": (f"dgm flow_matching icfm σ=0, coupling {COUPLING[side]}"
                       if side != "torchcfm"
                       else "torchcfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0)"),
            "sigma": sigma, "steps": args.digits_steps, "batch": 128, "lr": args.lr,
            "seed": seed, "params": model.num_parameters(), **fit, **lik,
            "bpd": lik["nats"] / (dim * math.log(2)), "n_test": len(x_test),
            "sample_solver": "heun", "sample_steps": 50, "sample_nfe": sol.nfe,
            "sample_cpu_s": sample_cpu, "n_samples": args.digits_samples,
            "fd": r.fd, "kid": r.kid, "kid_stderr": r.kid_stderr, "precision": r.precision,
            "recall": r.recall, "feature_net": r.feature_net,
        }
        rows.append(row)
        print(f"digits ot {side} seed {seed}: {row['nats']:.2f} ± {row['nats_stderr']:.2f} "
              "nats/image "
              f"({row['bpd']:.3f} bits/dim, NFE {row['lik_nfe']:.0f}), FD {r.fd:.2f}, "
              f"KID {r.kid:.4f}, P {r.precision:.3f} R {r.recall:.3f}, "
              f"{1e3 * fit['cpu_s_per_step']:.1f} CPU ms/step", flush=True)
    timing = ot_timing("digits", model.dequantize(x_train), 128, 200, args.seed)
    return rows, timing


# --- the figure ----------------------------------------------------------------------------------


def draw(toys: list[str], data: dict[str, Tensor], boxes: dict[str, tuple[float, ...]],
         dens: dict[str, dict[tuple[str, str], np.ndarray]],
         traj: dict[str, dict[str, np.ndarray]], rows: list[dict[str, Any]], n_samples: int,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["data"], r["pair"], r["side"]): r for r in rows}
    cols = [("density", "icfm", "ours"), ("density", "icfm", "torchcfm"),
            ("density", "ot", "ours"), ("density", "ot", "torchcfm"),
            ("paths", "ot", "ours"), ("paths", "ot", "torchcfm")]
    label = {"icfm": "I-CFM", "ot": "OT-CFM"}
    ncol = 1 + len(cols)
    fig, axes = plt.subplots(len(toys), ncol, figsize=(1.75 * ncol, 2.05 * len(toys) + 0.75),
                             squeeze=False)
    for i, toy in enumerate(toys):
        box = boxes[toy]
        ax = axes[i, 0]
        pts = data[toy][:2000].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=0.3, alpha=0.5, color="k", rasterized=True)
        ax.set_title(f"{toy}\n(test data)", fontsize=8)
        for j, (kind, pair, side) in enumerate(cols, start=1):
            ax = axes[i, j]
            r = by[(toy, pair, side)]
            if kind == "density":
                d = dens[toy][(pair, side)]
                finite = np.isfinite(d)
                vmax = float(np.percentile(d[finite], 99.5)) if finite.any() else 1.0
                ax.imshow(np.where(finite, d, 0.0), origin="lower", extent=box, cmap="viridis",
                          vmin=0.0, vmax=vmax or 1.0, interpolation="nearest", aspect="equal")
                ax.set_title(f"{side} {label[pair]}\n{r['nats']:.3f} nats, MMD² "
                             f"{1e3 * r['mmd2']:.2f}e-3", fontsize=7)
            else:
                p = traj[toy][side]
                ax.plot(p[:, :, 0], p[:, :, 1], color="0.35", lw=0.35, alpha=0.6)
                ax.scatter(p[0, :, 0], p[0, :, 1], s=0.6, color="tab:blue", zorder=3)
                ax.scatter(p[-1, :, 0], p[-1, :, 1], s=0.6, color="tab:red", zorder=3)
                ax.set_title(f"{side} {label[pair]} paths\n(dopri5 sampler: {r['sample_nfe']} "
                             "NFE)", fontsize=7)
        for ax in axes[i]:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Flow matching: dgm vs torchcfm 1.0.7, trained side by side (same net, data "
                 "order, steps; σ = 0.1). Densities: our ODE likelihood of each trained net "
                 "(title: test negative\nlog-density, nats/point, continuous; MMD² of "
                 f"{n_samples} dopri5 samples vs the test set). Paths: Heun, 40 steps, from the "
                 "base noise (blue, t = 1) to the samples (red, t = 0)", fontsize=8)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=1 - 0.75 / fig.get_figheight(),
                        wspace=0.05, hspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    from PIL import Image

    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, format="PNG", optimize=True)


def render_figure(results: dict[str, Any]) -> None:
    """Draw ``cfm_peers.png`` from the results and the arrays saved in ``FIGURE_DATA``."""
    part = results.get("parts", {}).get("toys")
    if part is None or not FIGURE_DATA.is_file():
        print("no toy results to draw")
        return
    saved = np.load(FIGURE_DATA)
    toys = [t for t in part["toys"] if f"{t}/ot/ours/paths" in saved.files]
    data = {t: load(t).test.x for t in toys}
    boxes = {t: grid_box(data[t]) for t in toys}
    dens = {t: {(pair, side): saved[f"{t}/{pair}/{side}/density"] for pair in PAIRS
                for side in SIDES} for t in toys}
    traj = {t: {side: saved[f"{t}/ot/{side}/paths"] for side in SIDES} for t in toys}
    png = RESULTS / "cfm_peers.png"
    draw(toys, data, boxes, dens, traj, results["rows"], part["n_samples"], png)
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB)")


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toys", nargs="*", default=TOYS, choices=TOYS,
                   help="toys to run (none: skip the toys)")
    p.add_argument("--steps", type=int, default=2500, help="training steps per toy run")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--n-paths", type=int, default=300)
    p.add_argument("--grid", type=int, default=80)
    p.add_argument("--digits", action="store_true", help="also run the digits OT pair")
    p.add_argument("--digits-steps", type=int, default=3000)
    p.add_argument("--digits-samples", type=int, default=1000)
    p.add_argument("--digits-test", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--digits-seeds", type=int, nargs="*", default=None,
                   help="seeds of the digits pair (default: --seed); each trains every side")
    p.add_argument("--digits-sides", nargs="*", default=None, choices=DIGITS_SIDES,
                   help="digits sides to run (default all); rows of the others are kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render-only", action="store_true",
                   help="redraw the figure and BENCHMARKS.md from the last results")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.render_only:
        render_figure(json.loads(OUT.read_text()))
        from report_md import write_benchmarks_md

        write_benchmarks_md()
        return
    c_start = time.process_time()
    torchcfm, versions = import_peer()
    print(f"versions: {versions}", flush=True)

    rows: list[dict[str, Any]] = []
    parts: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}  # the figure's densities and paths
    ot_cost: list[dict[str, Any]] = []
    for toy in args.toys:
        c0 = time.process_time()
        r, dens, traj, timing = run_toy(toy, torchcfm, args, grid_box(load(toy).test.x))
        arrays.update({f"{toy}/{pair}/{side}/density": d for (pair, side), d in dens.items()})
        arrays.update({f"{toy}/ot/{side}/paths": t for side, t in traj.items()})
        rows += r
        ot_cost.append(timing)
        print(f"{toy}: OT pairing alone {timing['ours_ms']:.2f} (ours) vs "
              f"{timing['torchcfm_ms']:.2f} (torchcfm) CPU ms per batch", flush=True)
        print(f"{toy}: {time.process_time() - c0:.0f} CPU s", flush=True)
    if args.toys:
        parts["toys"] = {"machine": machine(), "toys": args.toys, "steps": args.steps,
                         "batch": args.batch, "lr": args.lr, "model": TOY_MODEL,
                         "n_samples": args.n_samples, "grid": args.grid, "ot_timing": ot_cost}
        FIGURE_DATA.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIGURE_DATA, **arrays)
    if args.digits:
        c0 = time.process_time()
        drows, timing = run_digits(torchcfm, args)
        rows += drows
        parts["digits"] = {"machine": machine(), "steps": args.digits_steps, "batch": 128,
                           "lr": args.lr, "model": DIGITS_MODEL,
                           "n_samples": args.digits_samples, "anchors": ANCHORS,
                           "ot_timing": [timing]}
        print(f"digits: {time.process_time() - c0:.0f} CPU s", flush=True)
    total = time.process_time() - c_start
    for part in parts.values():
        part["total_cpu_s"] = total

    # The rows of a part (toys, digits) not run now are kept from the last results.
    if OUT.is_file():
        prev = json.loads(OUT.read_text())
        new = {(r["data"], r.get("seed", 0), r["side"]) for r in rows}
        keep = [r for r in prev.get("rows", [])
                if ("digits" if r["data"] == "digits" else "toys") not in parts
                or (r["data"] == "digits"
                    and (r["data"], r.get("seed", 0), r["side"]) not in new)]
        rows = keep + rows
        parts = {**{k: v for k, v in prev.get("parts", {}).items() if k not in parts}, **parts}
    payload = {"machine": machine(), "versions": versions, "total_cpu_s": total,
               "parts": parts, "rows": rows}
    path = write_result("cfm_peers", payload)
    print(f"wrote {path}; {total:.0f} CPU s in all")
    if args.toys:
        render_figure(payload)
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
