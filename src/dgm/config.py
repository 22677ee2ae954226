"""The run config: a tree of typed dataclasses read from YAML and written back, resolved.

A preset (``configs/<model>_<data>.yaml``) looks like::

    model: {name: arm, hidden_channels: 256}
    data: {name: digits}
    optim: {name: adamax, lr: 1.0e-3}
    train: {epochs: 1000, batch_size: 64, patience: 20}

and any field can be overridden with ``--set train.epochs=5`` or ``--set model.hidden=128``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dgm.core.configuration import from_dict, to_dict
from dgm.core.errors import ConfigError

__all__ = [
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "FinetuneConfig",
    "RunConfig",
    "load_config",
    "read_config_file",
    "preset_path",
    "apply_overrides",
    "save_config",
]

OPTIMIZERS = ("adam", "adamw", "adamax", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
DEVICES = ("auto", "cpu", "cuda", "mps")
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(kw_only=True)
class DataConfig:
    """Which dataset, and the options its loader takes (checked by the loader's signature)."""

    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped once per optimizer step)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name: {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"optim.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}"
            )
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop.

    ``patience``: stop after this many epochs without a better validation score (None: never).
    ``val_k``: importance samples per validation example for lower-bound models (1: the ELBO).
    ``max_bad_steps``: consecutive non-finite steps before rolling back to the last checkpoint.
    ``time_budget_s``: stop after the first epoch that ends past this many wall seconds.
    ``monitor``: the validation score for early stopping and best weights: ``auto`` (the
    likelihood's natural method, else the validation objective), an evaluation method
    (``exact``, ``elbo``, ``iwae``, ...), ``objective`` (the mean training loss on the
    validation split, labelled as such), a sample-quality metric (``fd``, ``kid``; ``mmd`` on
    continuous low-dimensional data) or ``error``, the classification error of a model that
    classifies (JEM).
    ``checkpoint_every_s``: write the resume checkpoint (and the best weights, run.json) after
    the first epoch that ends this many seconds after the last one, and after the final epoch
    (0: after every epoch). A resumed run still equals an uninterrupted one; a crash loses at
    most this much work.
    """

    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 1024
    patience: int | None = 20
    grad_clip: float | None = None
    ema_decay: float | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    val_k: int = 1
    max_bad_steps: int = 5
    max_rollbacks: int = 3
    progress: bool = True
    time_budget_s: float | None = None
    monitor: str = "auto"
    monitor_samples: int = 1000
    checkpoint_every_s: float = 30.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise ConfigError(f"train.device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.patience is not None and self.patience < 0:
            raise ConfigError(f"train.patience must be >= 0, got {self.patience}")


@dataclass(kw_only=True)
class FinetuneConfig:
    """Start from a trained run and, optionally, train only LoRA adapters (Book §11.2.2).

    ``base_run``: the run directory whose best weights start this run (its model options are
    taken over, and its tokenizer for text data). ``lora_rank``: 0 trains every weight; r > 0
    freezes them and trains rank-r adapters (α = ``lora_alpha``) on the linear layers named in
    ``lora_targets`` (for transformers: qkv, out, fc_in, fc_out).
    """

    base_run: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 8.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "out"])

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"finetune.lora_rank must be >= 0, got {self.lora_rank}")
        if not self.lora_targets:
            raise ConfigError("finetune.lora_targets must name at least one layer")


@dataclass(kw_only=True)
class RunConfig:
    """Everything a run needs; saved resolved as ``config.yaml`` in the run directory.

    ``model`` holds ``name`` plus the fields of that model's config dataclass; they are checked
    when the model is built (:func:`dgm.build_model`), and written back in full.
    """

    model: dict[str, Any] = field(default_factory=lambda: {"name": "vae"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    players: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model.get("name"), str):
            raise ConfigError("model.name is required (e.g. model: {name: arm})")
        for name, fields in self.players.items():
            if not isinstance(fields, dict):
                raise ConfigError(f"players.{name} must be a mapping of optim fields")
            self.optim_for(name)  # checks the fields now, not at the first step

    def optim_for(self, player: str) -> OptimConfig:
        """The optimizer config of ``player``: ``optim`` with ``players.<player>`` on top
        (e.g. ``players: {discriminator: {lr: 4.0e-4}}`` for a two-player model)."""
        overrides = self.players.get(player, {})
        return from_dict(OptimConfig, {**to_dict(self.optim), **overrides}, f"players.{player}")

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return from_dict(cls, d, where="config")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a plain config dict (values parsed as YAML)."""
    d = to_dict(d)
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in sections:
            raise ConfigError(
                f"override {key!r}: unknown section {parts[0]!r}; valid: {', '.join(sorted(sections))}"
            )
        if len(parts) < 2:
            raise ConfigError(f"override {key!r} must name a field, e.g. {parts[0]}.<field>")
        node = d.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(text)
    return d


def preset_path(name: str) -> Path | None:
    """A preset by file path, or by name under the repository's ``configs/`` (None if neither)."""
    p = Path(name)
    if p.is_file():
        return p
    for candidate in (REPO_CONFIGS / name, REPO_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _kind_of(value: Any) -> str:
    """A YAML value's kind in words, for error messages."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    return f"{type(value).__name__} {value!r}"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what a YAML parse error is, on one line."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; every section that is not a mapping is refused.

    This is the one place a config file is read: a missing, unreadable or malformed file, a top
    level that is not a mapping (a list, a string) or a section such as ``model:`` that is not a
    mapping is one :class:`ConfigError` that names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read: {e}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {p} must hold a mapping of sections at the top level "
            f"(model:, data:, optim:, train:), not {_kind_of(loaded)}"
        )
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    for key, value in loaded.items():
        if key in sections and value is not None and not isinstance(value, dict):
            raise ConfigError(
                f"config file {p}: section {key!r} must be a mapping "
                f"(e.g. {key}: {{...}}), not {_kind_of(value)}"
            )
    return {k: ({} if v is None and k in sections else v) for k, v in loaded.items()}


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML preset (or start from ``base``), apply overrides and check everything."""
    d: dict[str, Any] = dict(base or {})
    if path is not None:
        for k, v in read_config_file(path).items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                d[k] = {**d[k], **v}
            else:
                d[k] = v
    d = apply_overrides(d, overrides or [])
    return RunConfig.from_dict(d)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
