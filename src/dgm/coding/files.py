"""Reading what ``dgm compress`` codes and writing what ``dgm decompress`` gives back: NumPy
arrays (.npy, one example or a batch) and image files (PNG, BMP, PGM, TIFF, WebP, JPEG: one
grey or RGB image whose pixel values are the data's levels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dgm.core.errors import ConfigError, DataError
from dgm.core.spec import DataSpec

__all__ = ["IMAGE_SUFFIXES", "read_examples", "write_examples"]

IMAGE_SUFFIXES = (".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".jpg", ".jpeg")


def _image_array(path: Path, spec: DataSpec) -> np.ndarray:
    from PIL import Image

    if not spec.is_image or spec.event_shape[0] not in (1, 3):
        raise ConfigError(f"the model's data {spec.event_shape} are not grey or RGB images; "
                          "pass a .npy array")
    with Image.open(path) as image:
        mode = "L" if spec.event_shape[0] == 1 else "RGB"
        if image.mode not in (mode, "P", "1", "I;16", "I") and mode == "L":
            raise DataError(f"{path.name} is a {image.mode} image; the model codes grey images")
        pixels = np.asarray(image.convert(mode) if image.mode != mode else image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_examples(path: str | Path, spec: DataSpec) -> Tensor:
    """Examples (N, *event) from a .npy ((N, *event) or one (*event)) or
    one image file, checked against the data spec (shape, levels); integer arrays keep their
    dtype (a lossless round trip gives it back), whole-valued floats become integers."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            array = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise DataError(f"{p.name} is not a .npy array: {error}") from None
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        array = _image_array(p, spec)
    else:
        raise ConfigError(f"{p.name}: give a .npy array or an image ({', '.join(IMAGE_SUFFIXES)})")
    x = torch.as_tensor(np.array(array))
    if tuple(x.shape) == spec.event_shape:
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != spec.event_shape:
        raise DataError(f"{p.name} holds shape {tuple(array.shape)}; the model codes "
                        f"{spec.event_shape} or (N, {', '.join(map(str, spec.event_shape))})")
    if spec.kind.is_discrete and x.dtype.is_floating_point:
        if not torch.equal(x, x.round()):
            raise DataError(f"{p.name} holds non-integer values; the model codes the levels "
                            f"0..{spec.num_levels - 1}")
        x = x.long()
    elif not spec.kind.is_discrete:
        x = x.float()
    spec.validate(x)
    return x


def write_examples(path: str | Path, x: Tensor, spec: DataSpec) -> None:
    """x (N, *event) to a .npy, or to an image file when N = 1 and the data are images."""
    p = Path(path)
    suffix = p.suffix.lower()
    array = x.detach().cpu().numpy()
    if suffix == ".npy":
        np.save(p, array)
        return
    if suffix not in IMAGE_SUFFIXES:
        raise ConfigError(f"{p.name}: write a .npy array or an image ({', '.join(IMAGE_SUFFIXES)})")
    if not spec.is_image or array.shape[0] != 1 or spec.event_shape[0] not in (1, 3):
        raise ConfigError(f"{array.shape[0]} examples of shape {spec.event_shape} do not make one "
                          "image file; write a .npy")
    from PIL import Image

    top = 255 if spec.num_levels is None else spec.num_levels - 1
    if spec.kind.is_discrete and top > 255:
        raise ConfigError("values above 255 do not fit an 8-bit image; write a .npy")
    pixels = np.clip(np.rint(array[0]), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    image.save(p)
