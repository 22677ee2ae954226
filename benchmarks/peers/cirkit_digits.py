"""Peer benchmark: a cirkit (libcirkit 0.3.1, GPL) probabilistic circuit on the 8x8 digits.

Runs ONLY in its own virtual environment, as a separate process (see setup_cirkit.sh):

    benchmarks/results/tmp/cirkit-venv/bin/python benchmarks/peers/cirkit_digits.py \
        --data /tmp/digits17.npz --units 32

It never imports dgm (and dgm never imports cirkit). The data file holds the arrays train, val
and test: int64, shape (N, 1, 8, 8), values 0..16.

The circuit is cirkit's image-data template: the Quad-Graph region graph, categorical input
layers, CP sum-product layers, num_input_units = num_sum_units = K, one output unit, softmax
(normalized) sum weights with mixing weights for n-ary sums, compiled with the torch backend
in the "lse-sum" semiring. cirkit's template `image_data` fixes the categorical inputs at 256
categories (8-bit pixels); with --categories 256 the template is called as it is, with any other
number (default 17, the data's levels) the same construction is done through the template's own
public pieces (QuadGraph(...).build_circuit with the same factories) with that many categories.

Training: Adam(lr) on the mean -log p(x) over shuffled mini-batches, validation NLL after each
epoch, early stopping with the given patience, best-validation weights restored. Prints one
line of JSON on stdout.

--selfcheck enumerates every state of a 2x2 image with 3 levels (81 states) and checks that the
pmf sums to 1 (also every state of a 1x2 image with 256 levels for the 256-category template),
and that cirkit's partition function (pipeline.integrate) is 1.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import math
import sys
import time

import numpy as np
import torch
from cirkit.pipeline import PipelineContext, integrate
from cirkit.pipeline import compile as compile_circuit
from cirkit.symbolic.parameters import mixing_weight_factory
from cirkit.templates import data_modalities
from cirkit.templates.region_graph import QuadGraph
from cirkit.templates.utils import (
    Parameterization,
    name_to_input_layer_factory,
    parameterization_to_factory,
)

PEER = "cirkit 0.3.1"


def build_symbolic(image_shape: tuple[int, int, int], units: int, categories: int):
    """The image-data circuit: Quad-Graph, categorical inputs, CP layers, one output."""
    if categories == 256:
        # cirkit's template exactly as shipped (it hard-codes 256 categories).
        return data_modalities.image_data(
            image_shape,
            region_graph="quad-graph",
            input_layer="categorical",
            num_input_units=units,
            sum_product_layer="cp",
            num_sum_units=units,
            num_classes=1,
        )
    # The same construction as cirkit.templates.data_modalities.image_data (0.3.1) with its
    # defaults (softmax/normal sum weights, mixing weights for n-ary sums), but with the
    # categorical inputs sized to the data's levels.
    sum_weight_factory = parameterization_to_factory(
        Parameterization(activation="softmax", initialization="normal")
    )
    return QuadGraph(image_shape).build_circuit(
        input_factory=name_to_input_layer_factory("categorical", num_categories=categories),
        sum_product="cp",
        sum_weight_factory=sum_weight_factory,
        nary_sum_weight_factory=functools.partial(
            mixing_weight_factory, param_factory=sum_weight_factory
        ),
        num_input_units=units,
        num_sum_units=units,
        num_classes=1,
        factorize_multivariate=True,
    )


def build(image_shape, units, categories):
    """Returns (pipeline context, compiled circuit, compiled log-partition circuit)."""
    ctx = PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True)
    sc = build_symbolic(image_shape, units, categories)
    with ctx:
        cc = compile_circuit(sc)
        # log Z: shares the sum weights of cc; the integrals of the (softmax-normalized)
        # categorical inputs are constants equal to 1.
        cz = integrate(cc)
    return ctx, cc, cz


def log_prob(cc, x: torch.Tensor) -> torch.Tensor:
    """log p(x) for x of shape (B, C, H, W) (integers). The circuit is normalized (softmax
    sum weights and categorical probabilities: log Z = 0, checked by --selfcheck and reported
    as log_z for the trained circuit), so no partition function is subtracted."""
    out = cc(x.reshape(x.shape[0], -1))  # (B, 1, 1): one output layer, one class
    return out.reshape(x.shape[0])


@torch.no_grad()
def nll_per_image(cc, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat(
        [-log_prob(cc, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def selfcheck(seed: int) -> None:
    torch.manual_seed(seed)
    # 2x2 image, 3 levels, categorical inputs with 3 categories: all 81 states.
    _, cc, cz = build((1, 2, 2), 4, 3)
    states = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.long)
    with torch.no_grad():
        lp = cc(states).reshape(-1).double()
        total = lp.exp().sum().item()
        log_z = cz().item()
    print(f"selfcheck 2x2, 3 levels: {len(states)} states, sum p = {total:.8f}, "
          f"log Z (integrate) = {log_z:.2e}", file=sys.stderr)
    assert abs(total - 1.0) < 1e-4, total
    assert abs(log_z) < 1e-4, log_z
    # cirkit's own template (256 categories) on a 1x2 image: all 65,536 states.
    _, cc, cz = build((1, 1, 2), 4, 256)
    states = torch.tensor(list(itertools.product(range(256), repeat=2)), dtype=torch.long)
    with torch.no_grad():
        lp = cc(states).reshape(-1).double()
        total = lp.exp().sum().item()
        log_z = cz().item()
        # the same template on 2x2 with 3 levels: mass left on the 81 states (< 1)
        _, cc3, _ = build((1, 2, 2), 4, 256)
        small = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.long)
        mass3 = cc3(small).reshape(-1).double().exp().sum().item()
    print(f"selfcheck 1x2, 256 categories (image_data template): {len(states)} states, "
          f"sum p = {total:.8f}, log Z = {log_z:.2e}; its mass on 3 levels of 2x2: {mass3:.3g}",
          file=sys.stderr)
    assert abs(total - 1.0) < 1e-4, total
    assert abs(log_z) < 1e-4, log_z
    print("selfcheck ok", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="npz with train/val/test, int64 (N, C, H, W)")
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--categories", type=int, default=17,
                    help="categories of each input layer; 256 = cirkit's image_data template "
                         "as shipped (default 17, the data's levels)")
    ap.add_argument("--selfcheck", action="store_true",
                    help="check by enumeration that the pmf sums to 1, then exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.selfcheck:
        selfcheck(args.seed)
        return
    if args.data is None:
        ap.error("--data is required")

    d = np.load(args.data)
    train, val, test = (torch.from_numpy(d[k].astype(np.int64)) for k in ("train", "val", "test"))
    image_shape = tuple(int(s) for s in train.shape[1:])
    assert len(image_shape) == 3, train.shape
    levels = int(max(train.max(), val.max(), test.max())) + 1
    assert int(min(train.min(), val.min(), test.min())) >= 0
    if levels > args.categories:
        raise SystemExit(f"data has {levels} levels > --categories {args.categories}")

    torch.manual_seed(args.seed)
    _, cc, cz = build(image_shape, args.units, args.categories)
    n_params = sum(p.numel() for p in cc.parameters())
    opt = torch.optim.Adam(cc.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    best_val, best_epoch, best_state, epochs_run = math.inf, 0, None, 0
    t0 = time.process_time()
    for epoch in range(1, args.epochs + 1):
        cc.train()
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), args.batch_size):
            xb = train[perm[i : i + args.batch_size]]
            loss = -log_prob(cc, xb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        cc.eval()
        val_nll = nll_per_image(cc, val).mean().item()
        epochs_run = epoch
        if val_nll < best_val:
            best_val, best_epoch = val_nll, epoch
            best_state = copy.deepcopy(cc.state_dict())
        print(f"epoch {epoch} val {val_nll:.3f} best {best_val:.3f}@{best_epoch}",
              file=sys.stderr, flush=True)
        if epoch - best_epoch >= args.patience:
            break
    cpu_s = time.process_time() - t0

    cc.load_state_dict(best_state)
    cc.eval()
    with torch.no_grad():
        log_z = cz().item()
    test_nll = nll_per_image(cc, test).double()
    result = {
        "peer": PEER,
        "units": args.units,
        "seed": args.seed,
        "val_nats": round(nll_per_image(cc, val).mean().item(), 4),
        "test_nats": round(test_nll.mean().item(), 4),
        "test_stderr": round((test_nll.std(unbiased=True) / math.sqrt(len(test_nll))).item(), 4),
        "cpu_s": round(cpu_s, 1),
        "params": n_params,
        "epochs": epochs_run,
        "best_epoch": best_epoch,
        "region_graph": "quad-graph",
        "layers": "cp",
        "categories": args.categories,
        "log_z": log_z,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
