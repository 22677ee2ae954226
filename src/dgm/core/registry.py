"""The model registry: names to classes and their config dataclasses.

Models register where they are defined, with ``@register_model("arm", ARMConfig)``; lookups of
an unknown name list the names that exist. ``core`` imports no model: importing the ``dgm``
package registers the built-in ones (``dgm/__init__.py`` imports ``dgm.models``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from dgm.core.base import GenerativeModel
from dgm.core.configuration import from_dict
from dgm.core.errors import ConfigError
from dgm.core.spec import DataSpec

__all__ = [
    "ModelEntry", "register_model", "model_entry", "model_names", "build_model", "first_sentence"
]

B = TypeVar("B", bound=Callable[..., GenerativeModel])


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``build(spec, config)`` makes one; ``cls`` is the class it returns
    (its declared likelihood and data kinds); ``summary`` the docstring's first sentence."""

    name: str
    cls: type[GenerativeModel]
    config_cls: type
    summary: str
    build: Callable[[DataSpec, Any], GenerativeModel]


_MODELS: dict[str, ModelEntry] = {}


_ROLE = re.compile(r":\w+:`~?([^`]*)`")
_ABBREVIATIONS = ("al.", "Eq.", "Eqs.", "e.g.", "i.e.", "Fig.", "Figs.", "cf.", "vs.", "etc.")


def _plain(text: str) -> str:
    """Docstring markup as plain text: ``x`` -> x, :class:`~a.b.C` -> C."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, plain and on one line: up to the
    first full stop outside parentheses that does not end an abbreviation (a paragraph that
    runs on into a formula ends at its last clause)."""
    paragraph = _plain(" ".join((doc or "").strip().split("\n\n")[0].split()))
    depth = 0
    for i, ch in enumerate(paragraph):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        at_end = i + 1 == len(paragraph) or paragraph[i + 1] == " "
        if ch == "." and depth <= 0 and at_end:
            word = paragraph[: i + 1].rsplit(" ", 1)[-1]
            if not word.endswith(_ABBREVIATIONS):
                return paragraph[: i + 1]
    if not paragraph:
        return ""
    return paragraph if paragraph.endswith((".", "!", "?")) else paragraph.rstrip(",;: ") + "."


def register_model(
    name: str, config_cls: type, *, builds: type[GenerativeModel] | None = None
) -> Callable[[B], B]:
    """Decorator: register ``name`` for a model class ``cls(spec, config)``, or for a builder
    function ``fn(spec, config)`` that returns an instance of ``builds``."""

    def decorate(target: B) -> B:
        if name in _MODELS:
            raise RuntimeError(f"model name {name!r} registered twice")
        if isinstance(target, type):
            cls = target
        elif builds is None:
            raise RuntimeError(f"register_model({name!r}) on a function needs builds=<class>")
        else:
            cls = builds
        _MODELS[name] = ModelEntry(name, cls, config_cls, first_sentence(target.__doc__), target)
        return target

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
    return entry.build(spec, cfg)
