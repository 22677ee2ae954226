"""The one trainer: every family, one loop.

Per epoch: shuffle with the run's generator, step through in-memory batches (no DataLoader)
with the model's update rule (:mod:`dgm.train.updates`: plain gradient, EM, two players, main +
auxiliary), then score the validation split with the monitor (:mod:`dgm.train.validation`: the
model's natural likelihood method, a labelled validation objective or a sample-quality score),
keep the best weights, write a metrics line and an exact checkpoint, and stop after
``patience`` epochs without improvement. Under ``torchrun`` each global batch is split across
processes and every objective is scaled so that the averaged gradient equals the
single-process gradient of the same global batch.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dgm.config import OptimConfig, RunConfig, save_config
from dgm.core.base import GenerativeModel
from dgm.core.configuration import from_dict, to_dict
from dgm.core.errors import CheckpointError, ConfigError, TrainingError
from dgm.core.fitting import MAIN, StepInfo
from dgm.core.registry import model_entry
from dgm.data.dataset import Dataset, Split
from dgm.data.dataset import load as load_dataset
from dgm.train import distributed as dist
from dgm.checkpoints import (
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
from dgm.runs import (
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
from dgm.train.updates import average_gradients, make_update_rule, total_steps
from dgm.train.validation import resolve_monitor

__all__ = ["TrainResult", "train", "make_optimizer", "lr_factor"]

# Within an epoch, a line of progress at most this often when stderr is not a terminal.
LOG_EVERY_S = 30.0
# Between epochs (not a terminal): a line at most this often, plus the first and the last.
EPOCH_LOG_EVERY_S = 5.0
# On a terminal, a bar over the batches of an epoch with at least this many batches.
BATCH_BAR_MIN = 50


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or early-stopped) run reached.

    ``best_val`` is the monitor's score (``val_method``, described by ``val_label``): nats per
    example for a likelihood method, else what the label says.
    """

    run_dir: Path
    epochs: int
    best_epoch: int
    best_val: float
    val_method: str
    stopped_early: bool
    wall_s: float
    cpu_s: float
    num_parameters: int
    val_label: str = ""


@dataclass
class _State:
    """Loop bookkeeping saved in every checkpoint (everything else is tensors)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken, all players together
    steps: dict[str, int] = field(default_factory=dict)  # per player
    lr_scale: dict[str, float] = field(default_factory=dict)  # per player, halved on rollback
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    rollbacks: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stopped_early: bool = False
    rule: dict[str, Any] = field(default_factory=dict)  # the update rule's own state


def make_optimizer(params: Any, oc: OptimConfig) -> torch.optim.Optimizer:
    if oc.name == "adam":
        return torch.optim.Adam(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    if oc.name == "adamw":
        return torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    if oc.name == "adamax":
        return torch.optim.Adamax(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    if oc.name == "rmsprop":  # the WGAN's optimizer with weight clipping (Arjovsky et al. 2017)
        return torch.optim.RMSprop(params, lr=oc.lr, momentum=oc.momentum,
                                   weight_decay=oc.weight_decay)
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
    fields_ = to_dict(cfg) if cfg is not None else dict(given)
    return {"name": name, **fields_}


def _resolved(config: RunConfig, section: str) -> dict[str, Any]:
    """A config section with every default filled in, for comparing a resume with its run."""
    if section == "model":
        entry = model_entry(config.model_name)
        values = to_dict(from_dict(entry.config_cls, config.model_options, "model"))
        return {"name": config.model_name, **values}
    return to_dict(getattr(config, section))


def _log(msg: str) -> None:
    if dist.rank() == 0:
        print(msg, file=sys.stderr, flush=True)


class _EpochTotals:
    """Per-player sums of the training objective over an epoch (summed across processes)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, player: str, values: Tensor) -> None:
        total = values.detach().double().sum()  # stays on its device: no sync per step
        self.sums[player] = self.sums[player] + total if player in self.sums else total
        self.counts[player] = self.counts.get(player, 0) + values.numel()


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
        self.monitor = resolve_monitor(
            self.model, tc.monitor, self.dataset, k=tc.val_k, batch_size=tc.eval_batch_size,
            seed=tc.seed, samples=tc.monitor_samples,
        )
        self.val_method = self.monitor.name
        self.state = _State()
        if not resume and base_run is None:
            teacher = getattr(self.model, "teacher_run", None)
            if teacher is not None:  # a reflow student: its pairs come from a trained run
                self.model.set_teacher(open_run(teacher).load_model())  # type: ignore[attr-defined]
            init_gen = torch.Generator().manual_seed(tc.seed + 1)
            x_init = self._init_subset(init_gen)
            self.model.initialize_from_data(x_init, init_gen)
        self.model.to(self.device)
        self.rule = make_update_rule(
            self.model, lambda name, params: make_optimizer(params, config.optim_for(name))
        )
        unknown = set(config.players) - set(self.rule.players)
        if unknown:
            raise ConfigError(
                f"players: {', '.join(sorted(unknown))} not a player of {config.model_name} "
                f"(its players: {', '.join(self.rule.players) or 'none, it is fitted by EM'})"
            )
        for name in self.rule.players:
            self.state.steps.setdefault(name, 0)
            self.state.lr_scale.setdefault(name, 1.0)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay else None
        self.wrapped: nn.Module = self.model
        if self.distributed and self.rule.uses_ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=ids)
        self.batches_per_epoch = math.ceil(len(self.train_split) / tc.batch_size)
        self.total_steps = {
            name: total_steps(self.rule, name, tc.epochs * self.batches_per_epoch)
            for name in self.rule.players
        }
        if resume:
            self._restore()
        elif self.main:
            self._write_new_run()
            self._save_last()  # a run killed in its first epoch can still be resumed
        self._good = self._snapshot()
        self._best: tuple[dict[str, Tensor], dict[str, Any]] | None = None
        self._last_checkpoint = time.perf_counter()
        self._optim = {name: config.optim_for(name) for name in self.rule.players}
        self._bad_steps = {name: 0 for name in self.rule.players}
        self._totals = _EpochTotals()
        self._step_taken = False
        self._epoch = 0
        self._batch = 0

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
            "fit": type(self.model.fit).__name__,
            "players": list(self.rule.players),
            "val_method": self.val_method,
            "val_label": self.monitor.label,
            "num_parameters": self.model.num_parameters(),
            "status": status,
            "epochs_completed": s.epoch,
            "best_epoch": s.best_epoch,
            "best_val": s.best_val if math.isfinite(s.best_val) else None,
            "stopped_early": s.stopped_early,
            "rollbacks": s.rollbacks,
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
        for name, player in self.rule.players.items():
            opt_tensors, plain[name] = flatten_optimizer_state(player.optimizer.state_dict())
            tensors.update(prefixed(f"optim.{name}", opt_tensors))
        if self.ema is not None:
            tensors.update(prefixed("ema", self.ema.state_tensors()))
        tensors.update(prefixed("rng", rng_tensors(self.generator)))
        self.state.rule = self.rule.state()
        state = {"loop": self.state.__dict__, "optim": plain}
        return tensors, state

    def _save_last(self) -> None:
        tensors, state = self._checkpoint_tensors()
        save_tensors(self.run_dir / LAST, tensors, state)

    def _restore(self) -> None:
        path = self.run_dir / LAST
        tensors, state = load_tensors(path)
        try:
            known = {f.name for f in fields(_State)}
            loop = state["loop"]
            if not isinstance(loop, dict) or set(loop) - known:
                raise ValueError(f"unexpected loop state keys {sorted(set(loop) - known)}")
            self.state = _State(**loop)
            self.model.load_state_dict(strip_prefix("model", tensors))
            for name, player in self.rule.players.items():
                player.optimizer.load_state_dict(unflatten_optimizer_state(
                    strip_prefix(f"optim.{name}", tensors), state["optim"][name]
                ))
            if self.ema is not None:
                self.ema.load_state_tensors(strip_prefix("ema", tensors))
            restore_rng(strip_prefix("rng", tensors), self.generator)
            self.rule.load_state(self.state.rule)
            if set(self.state.steps) != set(self.rule.players):
                raise ValueError(f"players {sorted(self.state.steps)} in the checkpoint")
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise CheckpointError(
                f"{path} does not hold a checkpoint of this run's model and trainer ({e}); "
                "train again into a new --out"
            ) from None
        if self.main:  # drop metric lines written after the checkpoint (a crash mid-epoch)
            lines = (self.run_dir / METRICS).read_text().splitlines()
            kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= self.state.epoch]
            (self.run_dir / METRICS).write_text("".join(ln + "\n" for ln in kept))

    def _snapshot(self) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
        """The state the non-finite guard rolls back to, copied into the previous snapshot's
        tensors where the shapes still match (no allocation per epoch)."""
        old = getattr(self, "_good", None)
        old_model, old_optim = (old[0], old[1]) if old is not None else (None, {})
        optimizers = {
            name: _copy_into(old_optim.get(name), p.optimizer.state_dict())
            for name, p in self.rule.players.items()
        }
        return _copy_into(old_model, self.model.state_dict()), optimizers, self.rule.state()

    def _keep_best(self, epoch: int, val: float) -> None:
        """Hold the best weights (EMA weights when EMA is on) in memory until the next
        checkpoint writes them."""
        if self.ema is not None:
            self.ema.swap(self.model)
        self._best = ({k: v.detach().clone() for k, v in self.model.state_dict().items()},
                      {"epoch": epoch, "val": val, "val_method": self.val_method,
                       "val_label": self.monitor.label})
        if self.ema is not None:
            self.ema.swap(self.model)

    def _checkpoint(self) -> None:
        """Write the best weights if they changed, then the resume checkpoint, then run.json:
        in this order a checkpoint never names a best epoch whose weights are not on disk."""
        if self._best is not None:
            weights, meta = self._best
            save_tensors(self.run_dir / BEST, weights, meta)
            self._best = None
        self._save_last()
        self._write_info("running")
        self._last_checkpoint = time.perf_counter()

    # -- steps --------------------------------------------------------------------------------
    def _shard(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.world == 1:
            return x, y
        return x[self.rank :: self.world], None if y is None else y[self.rank :: self.world]

    def _all_finite(self, value: Tensor) -> bool:
        if self.world == 1:
            return bool(torch.isfinite(value).all())
        flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=self.device)
        return float(dist.all_reduce_sum(flag)) == 0.0

    def _non_finite(
        self, player: str, what: str, rng: Tensor, terms: Callable[[], dict[str, Tensor]]
    ) -> None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.set_rng_state(rng)  # replay the step's noise so that the same term fails
            values = terms()
        bad = [name for name, v in values.items() if not torch.isfinite(v).all()]
        names = ", ".join(bad) if bad else "none of the loss terms (the gradient)"
        who = "" if player == MAIN else f" of player {player}"
        epoch, batch = self._epoch, self._batch
        msg = (
            f"non-finite {what}{who} at epoch {epoch + 1}, batch {batch}: term(s) {names}; "
            "step skipped"
        )
        self._event({"event": "non_finite", "epoch": epoch + 1, "batch": batch,
                     "player": player, "what": what, "terms": bad})
        self._bad_steps[player] += 1
        if self._bad_steps[player] < self.tc.max_bad_steps:
            _log(msg)
            return
        self.state.rollbacks += 1
        if self.state.rollbacks > self.tc.max_rollbacks:
            raise TrainingError(
                f"{msg}; still non-finite after {self.tc.max_rollbacks} rollbacks with a halved "
                "learning rate each time. Lower optim.lr, set train.grad_clip, or check the data."
            )
        model_sd, optimizers, rule_state = self._good
        self.model.load_state_dict(model_sd)
        for name, p in self.rule.players.items():
            p.optimizer.load_state_dict(copy.deepcopy(optimizers[name]))
        self.rule.load_state(rule_state)
        self.model.after_rollback()
        self.state.lr_scale[player] *= 0.5
        self._bad_steps = {name: 0 for name in self.rule.players}
        _log(f"{msg}; rolled back to the start of the epoch, learning rate{who} halved")
        self._event({"event": "rollback", "epoch": epoch + 1, "player": player,
                     "lr_scale": self.state.lr_scale[player]})

    def take(
        self, player: str, objective: Callable[[], Tensor], *, per_example: bool = True
    ) -> Tensor | None:
        """One optimizer step of ``player`` (the :class:`~dgm.train.updates.Steps` protocol)."""
        p = self.rule.players[player]
        rng = torch.get_rng_state()
        values = objective()
        if per_example:
            total = values.sum() * (self.world / self._global_batch)
        else:
            total = values.sum()

        def terms() -> dict[str, Tensor]:
            if player == MAIN and per_example:
                return self.model.loss_terms(self._x, self._y)
            return {player: objective()}

        if not self._all_finite(total.detach()):
            self._non_finite(player, "loss", rng, terms)
            return None
        p.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if not self.rule.uses_ddp:
            average_gradients(p.params, self.world)
        grad_norm = _gradient_norm(p.params, self.tc.grad_clip)
        if not self._all_finite(grad_norm):
            p.optimizer.zero_grad(set_to_none=True)
            self._non_finite(player, "gradient", rng, terms)
            return None
        oc = self._optim[player]
        steps = self.state.steps[player]
        lr = oc.lr * self.state.lr_scale[player] * lr_factor(steps, self.total_steps[player], oc)
        for group in p.optimizer.param_groups:
            group["lr"] = lr
        p.optimizer.step()
        self.state.steps[player] = steps + 1
        self.state.step += 1
        self._bad_steps[player] = 0
        self._step_taken = True
        self.model.after_step(StepInfo(player, steps + 1, dist.all_reduce_sum, dist.broadcast))
        detached = values.detach()
        self.record(player, detached if per_example else detached.reshape(1))
        return detached

    def record(self, player: str, values: Tensor) -> None:
        self._totals.add(player, values)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self._epoch = epoch
        self._totals = _EpochTotals()
        spec = self.dataset.spec
        bar = self._batch_bar(epoch)
        t0 = last_log = time.perf_counter()
        self.rule.begin_epoch()
        for b, idx in enumerate(_batches(self.train_split, self.tc.batch_size, self.generator)):
            x, y = self.train_split.batch(idx.to(self.train_split.x.device), spec, self._data_gen())
            self._batch, self._global_batch = b, x.shape[0]
            self._x, self._y = self._shard(x, y)
            self._step_taken = False
            self.rule.batch(self._x, self._y, self, self.wrapped)
            if self._step_taken and self.ema is not None:
                self.ema.update(self.model)
            if bar is not None:
                bar.update(1)
            elif self.main and self.tc.progress and time.perf_counter() - last_log > LOG_EVERY_S:
                last_log = time.perf_counter()
                _log(f"epoch {epoch + 1}: batch {b + 1}/{self.batches_per_epoch}, "
                     f"{last_log - t0:.0f} s")
        if bar is not None:
            bar.close()
        self.rule.end_epoch()
        return self._epoch_means()

    def _epoch_means(self) -> dict[str, float]:
        out = {}
        for player in self.rule.players or [MAIN]:
            total = self._totals.sums.get(player, torch.zeros((), dtype=torch.float64))
            count = self._totals.counts.get(player, 0)
            t = torch.stack([total.cpu(), torch.tensor(float(count), dtype=torch.float64)]).to(
                self.device)
            dist.all_reduce_sum(t)
            out[player] = float(t[0] / t[1]) if float(t[1]) > 0 else math.nan
        return out

    def _data_gen(self) -> torch.Generator | None:
        # Dynamic binarization draws on the CPU generator; on other devices the global RNG.
        return self.generator if self.train_split.x.device.type == "cpu" else None

    def _validate(self) -> float:
        if self.ema is not None:
            self.ema.swap(self.model)
        try:
            return self.monitor.score(self.model, self.val_split)
        finally:
            if self.ema is not None:
                self.ema.swap(self.model)

    def _event(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _batch_bar(self, epoch: int) -> Any:
        if not (self.tc.progress and self.main and sys.stderr.isatty()):
            return None
        if self.batches_per_epoch < BATCH_BAR_MIN:
            return None
        from tqdm import tqdm

        return tqdm(total=self.batches_per_epoch, desc=f"epoch {epoch + 1}", unit="batch",
                    leave=False, dynamic_ncols=True)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            self._loop()
        except KeyboardInterrupt:
            if self.main:
                self._write_info("interrupted")
                _log(f"interrupted; continue with --resume (last checkpoint: epoch "
                     f"{self.state.epoch})")
            raise
        except Exception:
            if self.main and (self.run_dir / INFO).exists():
                self._write_info("failed")
            raise
        dist.barrier()
        if (self.run_dir / BEST).is_file():
            best, _ = load_tensors(self.run_dir / BEST)
            self.model.load_state_dict(best)
        if self.main:
            self._write_info("finished")
        s = self.state
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
            val_label=self.monitor.label,
        )

    def _loop(self) -> None:
        tc, s = self.tc, self.state
        bar = _progress(tc, s.epoch, self.main)
        last_line = -math.inf
        for epoch in range(s.epoch, tc.epochs):
            if s.stopped_early:
                break
            wall0, cpu0 = time.perf_counter(), time.process_time()
            self.model.train()
            self._good = self._snapshot()
            losses = self._train_epoch(epoch)
            val = self._validate()
            if val < s.best_val:
                s.best_val, s.best_epoch, s.bad_epochs = val, epoch + 1, 0
                if self.main:
                    self._keep_best(epoch + 1, val)
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
            first = next(iter(losses))
            record: dict[str, Any] = {"epoch": s.epoch, "train_loss": losses[first]}
            if len(losses) > 1:
                record.update({f"train_loss_{name}": v for name, v in losses.items()})
            record.update({
                "val": val, "val_method": self.val_method, "best_val": s.best_val,
                "lr": self._current_lr(), "wall_s": s.wall_s, "cpu_s": s.cpu_s, "step": s.step,
            })
            self._event(record)
            done = s.epoch == tc.epochs or s.stopped_early
            since = time.perf_counter() - self._last_checkpoint
            if self.main and (done or since >= tc.checkpoint_every_s):
                self._checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train=f"{losses[first]:.2f}", val=f"{val:.2f}",
                                best=f"{s.best_val:.2f}")
            elif self.main and tc.progress:
                if done or s.epoch == 1 or time.perf_counter() - last_line >= EPOCH_LOG_EVERY_S:
                    last_line = time.perf_counter()
                    _log(self._epoch_line(losses, val))
        if bar is not None:
            bar.close()

    def _current_lr(self) -> float:
        if not self.rule.players:
            return 0.0
        name = next(iter(self.rule.players))
        oc = self._optim[name]
        step = max(0, self.state.steps[name] - 1)
        return oc.lr * self.state.lr_scale[name] * lr_factor(step, self.total_steps[name], oc)

    def _epoch_line(self, losses: dict[str, float], val: float) -> str:
        s = self.state
        train = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
        return (f"epoch {s.epoch}/{self.tc.epochs}: train {train}; val {val:.3f} "
                f"({self.val_method}); best {s.best_val:.3f} at epoch {s.best_epoch}; "
                f"{s.wall_s:.0f} s")


def _copy_into(dst: Any, src: Any) -> Any:
    """A deep copy of ``src`` (nested dicts, lists and tensors) that reuses ``dst``'s tensors
    when ``dst`` has the same structure, shapes and dtypes."""
    if isinstance(src, Tensor):
        if isinstance(dst, Tensor) and dst.shape == src.shape and dst.dtype == src.dtype \
                and dst.device == src.device:
            return dst.copy_(src)
        return src.detach().clone()
    if isinstance(src, dict):
        same = isinstance(dst, dict) and dst.keys() == src.keys()
        return {k: _copy_into(dst[k] if same else None, v) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        same = isinstance(dst, type(src)) and len(dst) == len(src)
        return type(src)(_copy_into(dst[i] if same else None, v) for i, v in enumerate(src))
    return copy.deepcopy(src)


def _gradient_norm(params: list[nn.Parameter], clip: float | None) -> Tensor:
    """The total gradient norm (its finiteness is the guard's test), clipped to ``clip``."""
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # One fused kernel per dtype and device; clip_grad_norm_ computes the same norms through it
    # but then also rescales every gradient, which costs ~5% of a small model's step.
    foreach_norm = getattr(torch, "_foreach_norm", None)
    if foreach_norm is None:
        return torch.nn.utils.clip_grad_norm_(params, math.inf)
    return torch.linalg.vector_norm(torch.stack([n.double() for n in foreach_norm(grads)]))


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
