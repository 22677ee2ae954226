"""Benchmark: sampling speed of the transformer ARM with and without the key/value cache.

    python benchmarks/transformer_cache.py [--n 8] [--threads 1]

At 64 positions (8x8 digits, 17 levels) and 784 positions (28x28 binary images), the same model
(width 128, 4 blocks, 4 heads; untrained, since speed does not depend on the weights) draws
``--n`` samples with the cache (one new row of attention per token) and without it (a pass over
the whole prefix per token, as the book's sampler does). Both use the same seed and give the
same samples; the script checks that. Writes ``benchmarks/results/transformer_cache.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

from dgm.core.registry import build_model  # noqa: E402
from dgm.core.spec import DataKind, DataSpec  # noqa: E402

CASES = {
    64: DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17),
    784: DataSpec((1, 28, 28), DataKind.BINARY),
}


def _time_sampling(model: torch.nn.Module, n: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    x = model.sample(n, generator=g, use_cache=use_cache)
    return time.perf_counter() - start, x


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for positions, spec in CASES.items():
        torch.manual_seed(0)
        model = build_model("transformer", spec, {"hidden": 128, "num_layers": 4, "num_heads": 4})
        model.eval()
        _time_sampling(model, 2, True)  # warm-up
        cached_s, a = _time_sampling(model, args.n, True)
        full_s, b = _time_sampling(model, args.n, False)
        row = {
            "positions": positions, "n": args.n, "params": model.num_parameters(),
            "cached_s": cached_s, "uncached_s": full_s, "speedup": full_s / cached_s,
            "same_samples": bool(torch.equal(a, b)),
            "cached_ms_per_token": 1000 * cached_s / positions,
            "uncached_ms_per_token": 1000 * full_s / positions,
        }
        rows.append(row)
        print(row, flush=True)
    write_result("transformer_cache", {"machine": machine(), "threads": args.threads, "rows": rows})
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
