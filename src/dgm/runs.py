"""Run directories: what a training run leaves behind, and loading a model back from it.

A run directory holds::

    config.yaml                  the resolved config (every field, defaults included)
    run.json                     model name, data spec, versions, status and best epoch
    tokenizer.json               text data only: the tokenizer that maps strings to tokens
    metrics.jsonl                one JSON object per epoch (and one per notable event)
    model.safetensors            the best weights (EMA weights when EMA is on)
    checkpoints/last.safetensors everything needed to resume exactly after the last epoch
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from dgm.config import RunConfig
from dgm.core.base import GenerativeModel
from dgm.core.errors import CheckpointError, ConfigError, DgmError
from dgm.core.lora import apply_lora, merge_lora
from dgm.core.configuration import renamed_keys
from dgm.core.registry import build_model, model_entry, model_names
from dgm.core.spec import DataSpec
from dgm.checkpoints import load_tensors

if TYPE_CHECKING:
    from dgm.data.tokenizers import Tokenizer

__all__ = [
    "Run",
    "open_run",
    "load",
    "build_run_model",
    "finetune_config",
    "write_json_atomic",
    "CONFIG",
    "INFO",
    "METRICS",
    "BEST",
    "LAST",
    "TOKENIZER",
]

CONFIG = "config.yaml"
INFO = "run.json"
METRICS = "metrics.jsonl"
BEST = "model.safetensors"
LAST = "checkpoints/last.safetensors"
TOKENIZER = "tokenizer.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@dataclass
class Run:
    """A run directory read back: its config, data spec and bookkeeping."""

    path: Path
    config: RunConfig
    spec: DataSpec
    info: dict[str, Any]

    def build_model(self) -> GenerativeModel:
        return build_run_model(self.config, self.spec)

    def tokenizer(self) -> "Tokenizer | None":
        """The run's tokenizer (text data), or None."""
        from dgm.data.tokenizers import load_tokenizer

        path = self.path / TOKENIZER
        return load_tokenizer(path) if path.is_file() else None

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / METRICS
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def load_model(self, device: str | torch.device = "cpu", which: str = "best") -> GenerativeModel:
        """The model with the best (or last) weights, in eval mode."""
        model = self.build_model()
        path = self.path / (BEST if which == "best" else LAST)
        if which == "best" and not path.is_file():
            raise CheckpointError(f"{self.path} has no trained weights yet ({BEST} missing)")
        tensors, _ = load_tensors(path)
        if which != "best":
            tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {path} do not fit the model in {CONFIG}: {e}") from None
        return model.to(device).eval()


def open_run(path: str | Path) -> Run:
    """Read a run directory, with one clear error if it is not a complete run."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory not found: {path}")
    for name in (CONFIG, INFO):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a dgm run directory (no {name})")
    try:
        raw = yaml.safe_load((path / CONFIG).read_text())
        info = json.loads((path / INFO).read_text())
        config = RunConfig.from_dict(_current_names(raw))
        spec = DataSpec.from_dict(info["data_spec"])
    except (yaml.YAMLError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: run files are corrupt: {e}") from None
    except DgmError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return Run(path, config, spec, info)


def _current_names(raw: Any) -> Any:
    """A saved config with model keys renamed since the run was written under their new names,
    so that older runs still load."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        return raw
    name = raw["model"].get("name")
    if name not in model_names():
        return raw
    return {**raw, "model": renamed_keys(model_entry(name).config_cls, raw["model"])}


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """``dgm.load(run_dir)``: the trained model with its best weights, in eval mode."""
    return open_run(run_dir).load_model(device)


def build_run_model(
    config: RunConfig, spec: DataSpec, base: GenerativeModel | None = None
) -> GenerativeModel:
    """The model a run trains: the registry model, with ``base``'s weights if given, wrapped
    with LoRA adapters if ``config.finetune.lora_rank`` > 0."""
    model = build_model(config.model_name, spec, config.model_options)
    if base is not None:
        merge_lora(base)
        try:
            model.load_state_dict(base.state_dict(), strict=True)
        except RuntimeError as e:
            raise ConfigError(f"the base run's weights do not fit this model: {e}") from None
    ft = config.finetune
    if ft.lora_rank:
        apply_lora(model, ft.lora_rank, ft.lora_alpha, ft.lora_targets)
    return model


def finetune_config(config: RunConfig, base: Run) -> RunConfig:
    """``config`` completed from its base run: the base's model options (the config's own
    override them) and, for text data, the base's tokenizer file."""
    if config.model_name != base.config.model_name:
        raise ConfigError(
            f"finetune.base_run holds a {base.config.model_name} model, not {config.model_name}"
        )
    d = config.to_dict()
    d["model"] = {**base.config.model, **config.model}
    if (base.path / TOKENIZER).is_file():
        from dgm.data.dataset import dataset_entry

        loader = dataset_entry(config.data.name).loader
        options = d["data"]["options"]
        if "tokenizer_file" in inspect.signature(loader).parameters and not options.get(
            "tokenizer_file"
        ):
            options["tokenizer_file"] = str((base.path / TOKENIZER).resolve())
    return RunConfig.from_dict(d)
