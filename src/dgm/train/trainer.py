"""The one trainer: every family, one loop.

Per epoch: shuffle with the run's generator, step through in-memory batches (no DataLoader),
then score the validation split with the model's natural method (exact NLL or -ELBO), keep the
best weights, write a metrics line and an exact checkpoint, and stop after ``patience`` epochs
without improvement. Models fitted by EM get an E-step pass and an M-step instead of optimizer
steps. Under ``torchrun`` each global batch is split across processes and the loss is scaled so
that the averaged gradient equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dgm.config import OptimConfig, RunConfig, save_config
from dgm.core.base import Fit, GenerativeModel
from dgm.core.configuration import from_dict, to_dict
from dgm.core.errors import CheckpointError, ConfigError, TrainingError
from dgm.core.registry import model_entry
from dgm.data.dataset import Dataset, Split
from dgm.data.dataset import load as load_dataset
from dgm.eval.likelihood import per_example_nll, resolve_method
from dgm.train import distributed as dist
from dgm.train.checkpoint import (
    flatten_optimizer_state,
    load_tensors,
    prefixed,
    restore_rng,
    rng_tensors,
    save_tensors,
    strip_prefix,
    unflatten_optimizer_state,
)
from dgm.train.ema import EMA
from dgm.train.run import (
    BEST,
    CONFIG,
    INFO,
    LAST,
    METRICS,
    TOKENIZER,
    build_run_model,
    finetune_config,
    open_run,
    write_json_atomic,
)

__all__ = ["TrainResult", "train", "make_optimizer", "lr_factor"]


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or early-stopped) run reached."""

    run_dir: Path
    epochs: int
    best_epoch: int
    best_val: float
    val_method: str
    stopped_early: bool
    wall_s: float
    cpu_s: float
    num_parameters: int


@dataclass
class _State:
    """Loop bookkeeping saved in every checkpoint (everything else is tensors)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(params: Any, oc: OptimConfig) -> torch.optim.Optimizer:
    if oc.name == "adam":
        return torch.optim.Adam(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    if oc.name == "adamw":
        return torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    if oc.name == "adamax":
        return torch.optim.Adamax(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    return torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)


def lr_factor(step: int, total_steps: int, oc: OptimConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    warm = min(1.0, (step + 1) / oc.warmup_steps) if oc.warmup_steps > 0 else 1.0
    progress = min(1.0, step / max(1, total_steps))
    if oc.schedule == "cosine":
        decay = oc.min_lr_ratio + (1 - oc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif oc.schedule == "linear":
        decay = 1.0 - (1.0 - oc.min_lr_ratio) * progress
    else:
        decay = 1.0
    return warm * decay


def _batches(split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    perm = torch.randperm(len(split), generator=generator)
    for start in range(0, len(split), batch_size):
        yield perm[start : start + batch_size]


def _resolved_model_config(name: str, model: GenerativeModel, given: dict[str, Any]) -> dict:
    cfg = getattr(model, "config", None)
    fields = to_dict(cfg) if cfg is not None else dict(given)
    return {"name": name, **fields}


def _resolved(config: RunConfig, section: str) -> dict[str, Any]:
    """A config section with every default filled in, for comparing a resume with its run."""
    if section == "model":
        entry = model_entry(config.model_name)
        fields = to_dict(from_dict(entry.config_cls, config.model_options, "model"))
        return {"name": config.model_name, **fields}
    return to_dict(getattr(config, section))


def _log(msg: str) -> None:
    if dist.rank() == 0:
        print(msg, file=sys.stderr, flush=True)


class _Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, resume: bool, dataset: Dataset | None):
        tc = config.train
        self.config, self.tc, self.run_dir, self.resume = config, tc, run_dir, resume
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = dist.local_device(tc.device)
        self.distributed = dist.init_distributed(self.device.type)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.main = self.rank == 0
        base_run = open_run(config.finetune.base_run) if config.finetune.base_run else None
        if base_run is not None:
            config = self.config = finetune_config(config, base_run)
        self._check_run_dir()

        torch.manual_seed(tc.seed)
        self.generator = torch.Generator().manual_seed(tc.seed)
        self.dataset = dataset if dataset is not None else load_dataset(
            config.data.name, **config.data.options
        )
        spec = self.dataset.spec
        if base_run is not None and base_run.spec != spec:
            raise ConfigError(
                f"finetune.base_run was trained on data of another shape or vocabulary "
                f"({base_run.spec}) than {config.data.name} ({spec})"
            )
        base = base_run.load_model() if base_run is not None and not resume else None
        self.model = build_run_model(config, spec, base)
        self.model_config = _resolved_model_config(
            config.model_name, self.model, config.model_options
        )
        self.train_split = self.dataset.train.to(self.device)
        self.val_split = self.dataset.val.to(self.device)
        self.val_method = resolve_method(self.model, "auto")
        self.state = _State()
        if not resume and base_run is None:
            init_gen = torch.Generator().manual_seed(tc.seed + 1)
            x_init = self._init_subset(init_gen)
            self.model.initialize_from_data(x_init, init_gen)
        self.model.to(self.device)
        self.em = self.model.fit is Fit.EM
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.em and not params:
            raise ConfigError(f"{config.model_name} has no trainable parameters")
        self.optimizer = None if self.em else make_optimizer(params, config.optim)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay else None
        self.wrapped: nn.Module = self.model
        if self.distributed and not self.em:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=ids)
        steps_per_epoch = math.ceil(len(self.train_split) / tc.batch_size)
        self.total_steps = tc.epochs * steps_per_epoch
        if resume:
            self._restore()
        elif self.main:
            self._write_new_run()
        self._good = self._snapshot()
        self._bad_steps = 0

    # -- run directory ------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        if self.resume:
            if not (self.run_dir / LAST).is_file():
                raise CheckpointError(f"nothing to resume: {self.run_dir / LAST} not found")
            saved = open_run(self.run_dir).config
            for section in ("model", "data"):
                a, b = _resolved(saved, section), _resolved(self.config, section)
                if a != b:
                    raise ConfigError(
                        f"cannot resume {self.run_dir} with a different {section} config "
                        f"(saved {a}, given {b})"
                    )
        elif (self.run_dir / INFO).exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run; use --resume to continue it, "
                "or --out to choose another directory"
            )

    def _write_new_run(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = RunConfig.from_dict({**self.config.to_dict(), "model": self.model_config})
        save_config(cfg, self.run_dir / CONFIG)
        if self.dataset.tokenizer is not None:
            from dgm.data.tokenizers import save_tokenizer

            save_tokenizer(self.dataset.tokenizer, self.run_dir / TOKENIZER)
        (self.run_dir / METRICS).write_text("")
        self._write_info("running")

    def _write_info(self, status: str) -> None:
        s = self.state
        info = {
            "model": self.config.model_name,
            "data": self.config.data.name,
            "data_spec": self.dataset.spec.to_dict(),
            "likelihood": self.model.likelihood_on(self.dataset.spec.kind).value,
            "val_method": self.val_method,
            "num_parameters": self.model.num_parameters(),
            "status": status,
            "epochs_completed": s.epoch,
            "best_epoch": s.best_epoch,
            "best_val_nats": s.best_val if math.isfinite(s.best_val) else None,
            "stopped_early": s.stopped_early,
            "wall_s": s.wall_s,
            "cpu_s": s.cpu_s,
            "world_size": self.world,
            "device": str(self.device),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "dgm": _dgm_version(),
            },
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        }
        write_json_atomic(self.run_dir / INFO, info)

    def _init_subset(self, generator: torch.Generator, limit: int = 10000) -> Tensor:
        n = len(self.dataset.train)
        idx = torch.randperm(n, generator=generator)[:limit] if n > limit else slice(None)
        x, _ = self.dataset.train.batch(idx, self.dataset.spec, generator)
        return x.to(self.device)

    # -- checkpoints --------------------------------------------------------------------------
    def _checkpoint_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = prefixed("model", self.model.state_dict())
        plain: dict[str, Any] = {}
        if self.optimizer is not None:
            opt_tensors, plain = flatten_optimizer_state(self.optimizer.state_dict())
            tensors.update(prefixed("optim", opt_tensors))
        if self.ema is not None:
            tensors.update(prefixed("ema", self.ema.state_tensors()))
        tensors.update(prefixed("rng", rng_tensors(self.generator)))
        state = {"loop": self.state.__dict__, "optim": plain}
        return tensors, state

    def _save_last(self) -> None:
        tensors, state = self._checkpoint_tensors()
        save_tensors(self.run_dir / LAST, tensors, state)

    def _restore(self) -> None:
        tensors, state = load_tensors(self.run_dir / LAST)
        self.model.load_state_dict(strip_prefix("model", tensors))
        if self.optimizer is not None:
            self.optimizer.load_state_dict(
                unflatten_optimizer_state(strip_prefix("optim", tensors), state["optim"])
            )
        if self.ema is not None:
            self.ema.load_state_tensors(strip_prefix("ema", tensors))
        restore_rng(strip_prefix("rng", tensors), self.generator)
        self.state = _State(**state["loop"])
        if self.main:  # drop metric lines written after the checkpoint (a crash mid-epoch)
            lines = (self.run_dir / METRICS).read_text().splitlines()
            kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= self.state.epoch]
            (self.run_dir / METRICS).write_text("".join(ln + "\n" for ln in kept))

    def _snapshot(self) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        opt = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None
        return copy.deepcopy(self.model.state_dict()), opt

    def _save_best(self, epoch: int, val: float) -> None:
        if self.ema is not None:
            self.ema.swap(self.model)
        meta = {"epoch": epoch, "val_nats": val, "val_method": self.val_method}
        save_tensors(self.run_dir / BEST, self.model.state_dict(), meta)
        if self.ema is not None:
            self.ema.swap(self.model)

    # -- steps --------------------------------------------------------------------------------
    def _shard(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.world == 1:
            return x, y
        return x[self.rank :: self.world], None if y is None else y[self.rank :: self.world]

    def _all_finite(self, value: Tensor) -> bool:
        flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=self.device)
        return float(dist.all_reduce_sum(flag)) == 0.0

    def _non_finite(
        self, epoch: int, batch: int, x: Tensor, y: Tensor | None, what: str, rng: Tensor
    ) -> None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.set_rng_state(rng)  # replay the step's noise so that the same term fails
            terms = self.model.loss_terms(x, y)
        bad = [name for name, v in terms.items() if not torch.isfinite(v).all()]
        names = ", ".join(bad) if bad else "none of the loss terms (the gradient)"
        msg = (
            f"non-finite {what} at epoch {epoch + 1}, batch {batch}: term(s) {names}; "
            "step skipped"
        )
        self._event({"event": "non_finite", "epoch": epoch + 1, "batch": batch,
                     "what": what, "terms": bad})
        self._bad_steps += 1
        if self._bad_steps < self.tc.max_bad_steps:
            _log(msg)
            return
        self.state.rollbacks += 1
        if self.state.rollbacks > self.tc.max_rollbacks:
            raise TrainingError(
                f"{msg}; still non-finite after {self.tc.max_rollbacks} rollbacks with a halved "
                "learning rate each time. Lower optim.lr, set train.grad_clip, or check the data."
            )
        model_sd, opt_sd = self._good
        self.model.load_state_dict(model_sd)
        if self.optimizer is not None and opt_sd is not None:
            self.optimizer.load_state_dict(copy.deepcopy(opt_sd))
        self.state.lr_scale *= 0.5
        self._bad_steps = 0
        _log(f"{msg}; rolled back to the start of the epoch, learning rate halved")
        self._event({"event": "rollback", "epoch": epoch + 1, "lr_scale": self.state.lr_scale})

    def _gradient_epoch(self, epoch: int) -> float:
        assert self.optimizer is not None
        total, count = torch.zeros((), dtype=torch.float64), 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.tc.grad_clip if self.tc.grad_clip is not None else math.inf
        spec = self.dataset.spec
        for b, idx in enumerate(_batches(self.train_split, self.tc.batch_size, self.generator)):
            x, y = self.train_split.batch(idx.to(self.train_split.x.device), spec, self._data_gen())
            xs, ys = self._shard(x, y)
            rng = torch.get_rng_state()
            loss = self.wrapped(xs, ys)
            objective = loss.sum() * (self.world / x.shape[0])
            if not self._all_finite(objective.detach()):
                self._non_finite(epoch, b, xs, ys, "loss", rng)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if not self._all_finite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                self._non_finite(epoch, b, xs, ys, "gradient", rng)
                continue
            lr = self.config.optim.lr * self.state.lr_scale
            lr *= lr_factor(self.state.step, self.total_steps, self.config.optim)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.state.step += 1
            self._bad_steps = 0
            if self.ema is not None:
                self.ema.update(self.model)
            total += loss.detach().double().sum().cpu()
            count += xs.shape[0]
        return self._global_mean(total, count)

    def _em_epoch(self, epoch: int) -> float:
        model: Any = self.model
        total, count = torch.zeros((), dtype=torch.float64), 0
        spec = self.dataset.spec
        with torch.no_grad():
            model.em_begin()
            for idx in _batches(self.train_split, self.tc.batch_size, self.generator):
                x, _ = self.train_split.batch(idx.to(self.train_split.x.device), spec, self._data_gen())
                xs, _ = self._shard(x, None)
                ll = model.em_accumulate(xs)
                total += -ll.double().sum().cpu()
                count += xs.shape[0]
            for stat in model.em_statistics():
                dist.all_reduce_sum(stat)
            model.em_maximize()
        return self._global_mean(total, count)

    def _data_gen(self) -> torch.Generator | None:
        # Dynamic binarization draws on the CPU generator; on other devices the global RNG.
        return self.generator if self.train_split.x.device.type == "cpu" else None

    def _global_mean(self, total: Tensor, count: int) -> float:
        t = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)]).to(self.device)
        dist.all_reduce_sum(t)
        return float(t[0] / max(1.0, float(t[1])))

    def _validate(self) -> float:
        if self.ema is not None:
            self.ema.swap(self.model)
        try:
            nll = per_example_nll(
                self.model,
                self.val_split,
                method=self.val_method,
                k=self.tc.val_k,
                batch_size=self.tc.eval_batch_size,
                seed=self.tc.seed,
            )
        finally:
            if self.ema is not None:
                self.ema.swap(self.model)
        return float(nll.mean())

    def _event(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        tc, s = self.tc, self.state
        bar = _progress(tc, s.epoch, self.main)
        for epoch in range(s.epoch, tc.epochs):
            if s.stopped_early:
                break
            wall0, cpu0 = time.perf_counter(), time.process_time()
            self.model.train()
            self._good = self._snapshot()
            train_loss = self._em_epoch(epoch) if self.em else self._gradient_epoch(epoch)
            val = self._validate()
            improved = val < s.best_val
            if improved:
                s.best_val, s.best_epoch, s.bad_epochs = val, epoch + 1, 0
                if self.main:
                    self._save_best(epoch + 1, val)
            else:
                s.bad_epochs += 1
            s.epoch = epoch + 1
            s.wall_s += time.perf_counter() - wall0
            s.cpu_s += time.process_time() - cpu0
            if tc.patience is not None and s.bad_epochs > tc.patience:
                s.stopped_early = True
            if tc.time_budget_s is not None and s.wall_s >= tc.time_budget_s:
                s.stopped_early = True
                self._event({"event": "time_budget", "epoch": s.epoch, "wall_s": s.wall_s})
            lr = self.config.optim.lr * s.lr_scale * lr_factor(
                max(0, s.step - 1), self.total_steps, self.config.optim
            )
            self._event({
                "epoch": s.epoch, "train_loss": train_loss, "val_nll": val,
                "val_method": self.val_method, "best_val": s.best_val, "lr": lr,
                "wall_s": s.wall_s, "cpu_s": s.cpu_s, "step": s.step,
            })
            if self.main:
                self._save_last()
                self._write_info("running")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.2f}", val=f"{val:.2f}", best=f"{s.best_val:.2f}")
        if bar is not None:
            bar.close()
        dist.barrier()
        if (self.run_dir / BEST).is_file():
            best, _ = load_tensors(self.run_dir / BEST)
            self.model.load_state_dict(best)
        if self.main:
            self._write_info("finished")
        return TrainResult(
            run_dir=self.run_dir,
            epochs=s.epoch,
            best_epoch=s.best_epoch,
            best_val=s.best_val,
            val_method=self.val_method,
            stopped_early=s.stopped_early,
            wall_s=s.wall_s,
            cpu_s=s.cpu_s,
            num_parameters=self.model.num_parameters(),
        )


def _progress(tc: Any, start: int, main: bool) -> Any:
    if not (tc.progress and main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=tc.epochs, initial=start, desc="epochs", unit="ep", dynamic_ncols=True)


def _dgm_version() -> str:
    from dgm import __version__

    return __version__


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (or continue it exactly with ``resume=True``).

    Args:
        config: the run config (model, data, optimizer, loop).
        run_dir: where config, metrics, checkpoints and best weights go.
        resume: continue from ``checkpoints/last.safetensors``; the result equals an
            uninterrupted run bit for bit on CPU.
        dataset: an already loaded dataset (else ``config.data`` is loaded).
    """
    return _Trainer(config, Path(run_dir), resume, dataset).run()
