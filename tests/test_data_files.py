"""The user's own data: .npy/.npz arrays, image folders, and the CLI's --data argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dgm.data.files  # noqa: F401  (registers the datasets)
from dgm.core.errors import DataError, DgmError
from dgm.data import load
from dgm.data.files import random_split, resolve_data_argument
from dgm.core.spec import DataKind

# ----------------------------------------------------------------------------------- arrays


def _npy(tmp_path, array, name="x.npy"):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def test_integer_array_is_discrete_and_split(tmp_path):
    x = np.random.default_rng(0).integers(0, 17, (100, 64))
    x[0, 0] = 16
    d = load("array", path=_npy(tmp_path, x))
    assert d.spec.kind is DataKind.DISCRETE and d.spec.num_levels == 17
    assert d.spec.event_shape == (64,)
    assert (len(d.train), len(d.val), len(d.test)) == (80, 10, 10)
    rows = torch.cat([d.train.x, d.val.x, d.test.x]).long()
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, x.tolist()))  # a partition
    xb, _ = d.train.all(d.spec)
    assert xb.dtype == torch.long
    d.spec.validate(xb)
    assert load("array", path=_npy(tmp_path, x), levels=32).spec.num_levels == 32
    again = load("array", path=_npy(tmp_path, x))
    assert torch.equal(again.test.x, d.test.x)  # the split is reproducible
    other = load("array", path=_npy(tmp_path, x), seed=1)
    assert not torch.equal(other.test.x, d.test.x)


def test_binary_and_continuous_inference(tmp_path):
    bits = np.random.default_rng(0).integers(0, 2, (50, 2, 4, 4)).astype(np.int64)
    d = load("array", path=_npy(tmp_path, bits))
    assert d.spec.kind is DataKind.BINARY and d.spec.event_shape == (2, 4, 4)
    d = load("array", path=_npy(tmp_path, bits.astype(bool), "b.npy"))
    assert d.spec.kind is DataKind.BINARY
    d = load("array", path=_npy(tmp_path, np.random.default_rng(0).normal(size=(40, 3))))
    assert d.spec.kind is DataKind.CONTINUOUS and d.train.x.dtype == torch.float32
    d.spec.validate(d.train.all(d.spec)[0])
    d = load("array", path=_npy(tmp_path, np.zeros((30, 5, 6), np.uint8) + 200))
    assert d.spec.event_shape == (1, 5, 6) and d.spec.num_levels == 201  # channel axis added


def test_npz_with_named_splits_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        train=rng.integers(0, 4, (20, 3)), val=rng.integers(0, 4, (5, 3)),
        test=rng.integers(0, 4, (6, 3)),
        y_train=np.arange(20) % 3, y_val=np.arange(5) % 3, y_test=np.arange(6) % 3,
    )  # fmt: skip
    d = load("array", path=str(path))
    assert (len(d.train), len(d.val), len(d.test)) == (20, 5, 6)
    assert d.spec.num_classes == 3 and d.train.y.tolist() == (np.arange(20) % 3).tolist()

    np.savez(path, train=rng.normal(size=(50, 2)))  # missing val/test: carved from train
    d = load("array", path=str(path), val_fraction=0.2, test_fraction=0.0)
    assert (len(d.train), len(d.val), len(d.test)) == (40, 10, 0)


def test_npz_single_array_with_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((30, 4), np.int32), y=np.arange(30) % 5)
    d = load("array", path=str(path))
    assert d.spec.num_classes == 5 and len(d.train) + len(d.val) + len(d.test) == 30
    np.savez(path, pixels=np.ones((30, 4), np.int32))
    assert load("array", path=str(path)).spec.event_shape == (4,)  # the only key
    np.savez(path, a=np.ones((30, 4)), b=np.ones((30, 4)))
    with pytest.raises(DataError, match="several arrays"):
        load("array", path=str(path))
    assert load("array", path=str(path), key="b").spec.kind is DataKind.CONTINUOUS


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]] * 5), "NaN or infinite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]] * 5), "NaN or infinite"),
        (np.array([[1, -1], [0, 1]] * 5), "non-negative"),
        (np.arange(10), r"expected shape \(N, D\)"),
        (np.zeros((2, 2, 2, 2, 2)), "rank 5"),
        (np.array([[1 + 1j]] * 10), "not supported"),
        (np.zeros((0, 3)), "empty"),
    ],
)
def test_array_errors(tmp_path, array, message):
    with pytest.raises(DataError, match=message):
        load("array", path=_npy(tmp_path, array))


def test_array_file_errors(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="object dtype"):
        load("array", path=str(path))
    with pytest.raises(DataError, match="not found"):
        load("array", path=str(tmp_path / "missing.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a .npy file"):
        load("array", path=str(tmp_path / "junk.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a readable numpy file"):
        load("array", path=str(tmp_path / "junk.npz"))
    x = _npy(tmp_path, np.arange(20).reshape(10, 2))
    with pytest.raises(DataError, match="levels=5"):
        load("array", path=x, levels=5)
    with pytest.raises(DataError, match="too few"):
        load("array", path=_npy(tmp_path, np.ones((2, 2)), "tiny.npy"))
    with pytest.raises(DataError, match="below 1"):
        load("array", path=x, val_fraction=0.5, test_fraction=0.5)


def test_random_split_is_a_partition():
    tr, va, te = random_split(101, 0.1, 0.2, seed=3)
    assert (len(tr), len(va), len(te)) == (71, 10, 20)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(101))


# ----------------------------------------------------------------------------------- images


def _png(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_grayscale_images_with_labels(tmp_path):
    for i in range(6):
        _png(tmp_path / "cats" / f"{i}.png", "L", (5, 4), 10 * i)
        _png(tmp_path / "dogs" / f"{i}.PNG", "L", (5, 4), 200)
    d = load("images", path=str(tmp_path), val_fraction=0.2, test_fraction=0.2)
    assert d.spec.kind is DataKind.DISCRETE and d.spec.num_levels == 256
    assert d.spec.event_shape == (1, 4, 5) and d.spec.num_classes == 2  # (C, H, W)
    assert d.train.x.dtype == torch.uint8
    assert len(d.train) + len(d.val) + len(d.test) == 12 and len(d.test) == 2
    x = torch.cat([d.train.x, d.val.x, d.test.x])
    y = torch.cat([d.train.y, d.val.y, d.test.y])
    assert (x[y == 1] == 200).all() and (x[y == 0] <= 50).all()
    assert "0=cats" in d.description and "1=dogs" in d.description


def test_rgb_images_resize_and_grayscale_option(tmp_path):
    for i in range(5):
        _png(tmp_path / f"a{i}.png", "RGB", (8, 8), (255, 0, 0))
        _png(tmp_path / f"b{i}.png", "L", (16, 12), 7)
    with pytest.raises(DataError, match="different sizes"):
        load("images", path=str(tmp_path))
    d = load("images", path=str(tmp_path), size=6)
    assert d.spec.event_shape == (3, 6, 6) and d.spec.num_classes is None and d.train.y is None
    x = torch.cat([d.train.x, d.val.x, d.test.x])
    assert set(x[:, 0].flatten().tolist()) == {255, 7}  # the red channel of red and of gray
    d = load("images", path=str(tmp_path), size=6, grayscale=True)
    assert d.spec.event_shape == (1, 6, 6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load("images", path=str(tmp_path))
    for i in range(4):
        _png(tmp_path / f"{i}.png", "L", (4, 4), 0)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load("images", path=str(tmp_path))
    (tmp_path / "broken.jpg").unlink()
    _png(tmp_path / "sub" / "x.png", "L", (4, 4), 0)
    with pytest.raises(DataError, match="both directly inside"):
        load("images", path=str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load("images", path=str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------- --data


def test_resolve_data_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_argument("digits") == ("digits", {})
    (tmp_path / "digits").mkdir()  # a registered name wins over a same-named folder
    assert resolve_data_argument("digits") == ("digits", {})
    assert resolve_data_argument("./digits") == ("images", {"path": "./digits"})
    assert resolve_data_argument("x.npy") == ("array", {"path": "x.npy"})
    assert resolve_data_argument(str(tmp_path / "y.npz")) == (
        "array",
        {"path": str(tmp_path / "y.npz")},
    )
    assert resolve_data_argument("pics") == ("pics", {})  # unknown name: the registry says so
    (tmp_path / "pics").mkdir()
    assert resolve_data_argument("pics") == ("images", {"path": "pics"})
    (tmp_path / "notes.txt").write_text("hi")
    assert resolve_data_argument("notes.txt") == ("text", {"path": "notes.txt"})
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.md").write_text("hi")
    assert resolve_data_argument("texts/") == ("text", {"path": "texts/"})
    (tmp_path / "table.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported data file"):
        resolve_data_argument("table.csv")
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_data_argument("some/where")


# ------------------------------------------------------------------- implausible level counts


def _million_levels(tmp_path):
    x = np.random.default_rng(0).integers(0, 10**6, (200, 4, 4))
    x[0, 0, 0, ...] = 10**6 - 1
    return _npy(tmp_path, x, "big.npy")


def test_a_million_inferred_levels_is_refused_with_what_was_inferred(tmp_path):
    path = _million_levels(tmp_path)
    with pytest.raises(DataError) as info:
        load("array", path=path)
    message = str(info.value)
    assert "1,000,000 levels" in message and "int64" in message  # what was inferred
    assert "16.4 GB" in message  # what it would cost: 16 x 10^6 x 256 float32 weights
    assert "data.options.kind=continuous" in message and "data.options.levels=N" in message


def test_explicit_levels_and_kinds_override_the_guess(tmp_path):
    path = _million_levels(tmp_path)
    d = load("array", path=path, levels=10**6)
    assert d.spec.kind is DataKind.DISCRETE and d.spec.num_levels == 10**6
    assert d.train.x.dtype == torch.int32  # stored compactly
    c = load("array", path=path, kind="continuous")
    assert c.spec.kind is DataKind.CONTINUOUS and c.train.x.dtype == torch.float32
    assert "integers read as floats" in c.description
    bits = _npy(tmp_path, np.random.default_rng(0).integers(0, 2, (50, 6)), "bits.npy")
    assert load("array", path=bits).spec.kind is DataKind.BINARY
    assert load("array", path=bits, kind="discrete").spec.kind is DataKind.DISCRETE
    assert load("array", path=bits, kind="binary").spec.num_levels == 2


@pytest.mark.parametrize(
    "data, options, message",
    [
        ("ints", {"kind": "binary"}, "kind=binary needs values 0 and 1"),
        ("floats", {"kind": "discrete"}, "store it as integers, or use kind=continuous"),
        ("ints", {"kind": "ordinal"}, "'ordinal' is not one of"),
        ("ints", {"kind": "continuous", "levels": 8}, "not kind=continuous"),
        ("ints", {"levels": 1}, "levels must be at least 2"),
    ],
)
def test_bad_kind_and_level_options(tmp_path, data, options, message):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (50, 6)) if data == "ints" else rng.normal(size=(50, 6))
    with pytest.raises(DgmError, match=message):
        load("array", path=_npy(tmp_path, x), **options)


def test_cli_refuses_a_million_levels_before_building_anything(tmp_path, monkeypatch, capsys):
    from dgm.cli import main

    monkeypatch.chdir(tmp_path)
    path = _million_levels(tmp_path)
    rc = main(["train", "vae", "--data", path, "--set", "train.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err and "1,000,000 levels" in err
    assert not (tmp_path / "runs" / "vae-array" / "run.json").exists()
    rc = main(["train", "independent", "--data", path, "--set", "data.options.kind=continuous",
               "train.epochs=1", "train.progress=false"])
    assert rc == 0 and (tmp_path / "runs" / "independent-array" / "run.json").is_file()
