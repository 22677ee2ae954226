"""Tiny sizes for the contract test (``tests/test_contract.py``).

:func:`shrink` takes a model's config fields (a preset's ``model:`` section, or nothing for the
defaults) and caps every integer field whose name means a width, a depth or a count, by one
rule over the config dataclass, recursing into nested config dataclasses (a VAE's ``prior`` and
``posterior``). A model added later is shrunk by the same rule; a field the rule does not know
is matched by the patterns below, and only where that is not enough does :data:`OVERRIDES`
name the model.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Union

__all__ = ["CAPS", "PATTERNS", "OVERRIDES", "KEEP", "MAX_PARAMETERS", "shrink"]

#: a model with more parameters than this after shrinking fails: add an entry to OVERRIDES
MAX_PARAMETERS = 200_000

#: caps by exact field name (a value below the cap, 0 or None is kept as it is)
CAPS: dict[str, int] = {
    # widths
    "hidden": 8,
    "channels": 8,
    "growth": 4,
    "context_dim": 4,
    "dequant_hidden": 8,
    "prior_hidden": 8,
    "base": 8,  # a U-Net's width
    "time_dim": 8,
    # depths and counts
    "num_hidden": 1,
    "num_layers": 2,
    "layers": 2,
    "prior_layers": 1,
    "num_flows": 2,
    "dequant_flows": 1,
    "num_blocks": 2,
    "blocks": 2,
    "steps": 1,
    "depth": 2,
    "num_heads": 2,
    "n_head": 2,
    "prior_heads": 2,
    "num_components": 2,
    "num_reflections": 2,
    "num_ortho": 2,
    "num_bins": 4,
    # latents and codebooks
    "latent_dim": 2,
    "latent_dims": 2,
    "num_latents": 2,
    "code_dim": 4,
    "codebook_size": 8,
}

#: caps for names not in CAPS, by the first pattern that matches (a model added later)
PATTERNS: list[tuple[re.Pattern[str], int]] = [
    (re.compile(r"hidden|width|channels|embd|growth"), 8),
    (re.compile(r"latent|code"), 4),
    (re.compile(r"(layers?|flows|blocks|depth|heads?|components|reflections)$"), 2),
    (re.compile(r"steps$"), 2),  # warm-up and initial-fit steps: a few are enough here
]

KEEP = object()  # in OVERRIDES: leave the field as the preset (or the default) has it

#: per-model fields the rule gets wrong, set or kept as they are
OVERRIDES: dict[str, dict[str, Any]] = {
    # the preset's dilations have one entry per layer, so the layer count must stay
    "arm": {"num_layers": KEEP},
    # a hybrid's density is a plain dict (any model's config), which the rule cannot walk
    "hybrid": {"density": {"name": "idf", "hidden": 8, "num_hidden": 1, "num_flows": 2,
                           "prior_hidden": 8}, "hidden": 8, "num_hidden": 1},
    # so is the pixel codec's entropy model
    "pixel_codec": {"entropy_model": {"name": "pixelcnn", "hidden": 8, "num_layers": 2},
                    "hidden": 8, "num_layers": 1},
}


def _cap(name: str) -> int | None:
    if name in CAPS:
        return CAPS[name]
    for pattern, cap in PATTERNS:
        if pattern.search(name):
            return cap
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dataclass_type(hint: Any) -> type | None:
    """The config dataclass a field holds (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def _as_dict(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return dict(value or {})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def shrink(
    config_cls: type, given: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``given`` (config fields of ``config_cls``) with widths, depths and counts capped.

    Returns the fields to pass to the model: those given plus those the rule changed.
    """
    out = dict(given)
    overrides = overrides or {}
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in overrides:
            if overrides[f.name] is not KEEP:
                out[f.name] = overrides[f.name]
            continue
        value = given.get(f.name, _default(f))
        nested = _dataclass_type(hints.get(f.name))
        if nested is not None and value is not None:
            base = _default(f)
            known = {} if base is dataclasses.MISSING or base is None else _as_dict(base)
            inner = {**known, **_as_dict(value)}
            out[f.name] = shrink(nested, inner)
            continue
        cap = _cap(f.name)
        if cap is None:
            continue
        if _is_int(value) and value > cap:
            out[f.name] = cap
        elif isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            capped = [min(v, cap) for v in value]
            if capped != list(value):
                out[f.name] = capped
    return out
