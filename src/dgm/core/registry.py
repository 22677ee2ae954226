"""The model registry: names to classes and their config dataclasses.

Models register where they are defined, with ``@register_model("arm", ARMConfig)``; lookups of
an unknown name list the names that exist. ``core`` imports no model: importing the ``dgm``
package registers the built-in ones (``dgm/__init__.py`` imports ``dgm.models``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from dgm.core.base import GenerativeModel
from dgm.core.configuration import from_dict
from dgm.core.errors import ConfigError
from dgm.core.spec import DataSpec

__all__ = ["ModelEntry", "register_model", "model_entry", "model_names", "build_model"]

M = TypeVar("M", bound=type[GenerativeModel])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[GenerativeModel]
    config_cls: type
    summary: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type) -> Callable[[M], M]:
    """Class decorator: register ``cls(spec, config)`` under ``name``."""

    def decorate(cls: M) -> M:
        if name in _MODELS:
            raise RuntimeError(f"model name {name!r} registered twice")
        doc = (cls.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(name, cls, config_cls, doc[0] if doc else "")
        return cls

    return decorate


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def build_model(name: str, spec: DataSpec, config: Any = None, **overrides: Any) -> GenerativeModel:
    """Build a registered model for data of ``spec``.

    Args:
        name: registry name, e.g. ``"arm"``.
        spec: the data spec of the dataset the model is for.
        config: a config dataclass instance or a mapping of its fields (optional).
        **overrides: config fields to set, checked by name and type.
    """
    entry = model_entry(name)
    if config is None:
        fields: dict[str, Any] = {}
    elif isinstance(config, dict):
        fields = dict(config)
    else:
        from dgm.core.configuration import to_dict

        fields = to_dict(config)
    fields.update(overrides)
    cfg = from_dict(entry.config_cls, fields, where=f"model {name}")
    return entry.cls(spec, cfg)
