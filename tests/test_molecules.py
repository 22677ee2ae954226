"""B3DB SMILES dataset (synthetic table, and the real one when fetched) and molecule metrics."""

import dataclasses
import io
import zipfile

import pytest
import torch

from dgm.core.errors import ConfigError, DataError
from dgm.data import fetch as F
from dgm.data import load
from dgm.data.idx import checksum
from dgm.data.molecules import MoleculeMetrics, molecule_metrics
from dgm.core.spec import DataKind

HEADER = "NO.\tcompound_name\tSMILES\tlogBB\tBBB+/BBB-\tgroup\n"
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
          "OC(=O)c1ccccc1OC(C)=O", "CCN(CC)CC", "C1CCCCC1", "[Na+].[Cl-]",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "O=C1NC(=O)C(N1)(c1ccccc1)c1ccccc1"]  # fmt: skip


def _table(rows) -> bytes:
    lines = [f"{i}\tname{i}\t{s}\t\t{label}\tA\n" for i, (s, label) in enumerate(rows, 1)]
    return (HEADER + "".join(lines)).encode()


def _use_table(monkeypatch, root, data: bytes) -> None:
    (root / "b3db").mkdir(exist_ok=True)
    (root / "b3db" / "B3DB_classification.tsv").write_bytes(data)
    monkeypatch.setitem(
        F.RAW_FILES, "b3db", {"B3DB_classification.tsv": ("sha256", checksum(data))}
    )


@pytest.fixture
def table(tmp_path, monkeypatch):
    rows = [(s, "BBB+" if i % 3 else "BBB-") for i, s in enumerate(SMILES)] * 4
    _use_table(monkeypatch, tmp_path, _table(rows))
    return tmp_path, rows


def test_b3db_examples_end_token_and_labels(table):
    root, rows = table
    d = load("b3db", min_length=5, max_length=30, root=str(root))
    kept = [(s, y) for s, y in rows if 5 <= len(s) <= 30]
    spec, tok = d.spec, d.tokenizer
    assert spec.kind is DataKind.TOKENS and spec.event_shape == (31,) and spec.num_classes == 2
    assert spec.end_token == tok.end_token == tok.vocab_size - 1 == spec.num_levels - 1
    assert tok.chars == "".join(sorted(set("".join(s for s, _ in kept))))
    assert sum(len(d.split(p)) for p in ("train", "val", "test")) == len(kept)
    assert min(len(d.val), len(d.test)) >= 1
    by_smiles = dict(kept)
    for part in ("train", "val", "test"):
        split = d.split(part)
        x, y = split.batch(slice(None), spec)
        assert x.dtype == torch.long and split.x.dtype == torch.uint8
        spec.validate(x)
        lengths = spec.lengths(x)
        assert torch.equal(lengths, split.characters + 1)  # the SMILES and its end token
        for row, label, n in zip(x.tolist(), y.tolist(), lengths.tolist()):
            smiles = tok.decode(row[: n - 1])
            assert row[n - 1 :] == [spec.end_token] * (31 - n + 1)
            assert label == (1 if by_smiles[smiles] == "BBB+" else 0)
    again = load("b3db", min_length=5, max_length=30, root=str(root))
    assert torch.equal(again.test.x, d.test.x)  # the split is reproducible from the seed
    other = load("b3db", min_length=5, max_length=30, seed=1, root=str(root))
    assert not torch.equal(other.train.y, d.train.y) or not torch.equal(other.train.x, d.train.x)


def test_b3db_errors(tmp_path, monkeypatch, table):
    root, _ = table
    with pytest.raises(ConfigError, match="min_length"):
        load("b3db", min_length=20, max_length=10, root=str(root))
    with pytest.raises(DataError, match="only 0 SMILES"):
        load("b3db", min_length=90, max_length=100, root=str(root))
    with pytest.raises(DataError, match="dgm fetch b3db"):
        load("b3db", root=str(tmp_path / "elsewhere"))
    _use_table(monkeypatch, root, _table([("CCO", "maybe")]))
    with pytest.raises(DataError, match="line 2: label 'maybe'"):
        load("b3db", root=str(root))
    _use_table(monkeypatch, root, b"NO.\tsmiles\n1\tCCO\n")
    with pytest.raises(DataError, match="missing column"):
        load("b3db", root=str(root))


def test_fetch_b3db_extracts_the_table_from_the_wheel(tmp_path, monkeypatch):
    data = _table([("CCO", "BBB+")])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("B3DB/B3DB_classification.tsv", data)
        wheel.writestr("B3DB/b3db.py", "")
    source = F.SOURCES["b3db"][0]
    (tmp_path / source.filename).write_bytes(buffer.getvalue())
    patched = dataclasses.replace(source, sha256=checksum(buffer.getvalue()))
    monkeypatch.setitem(F.SOURCES, "b3db", (patched,))
    monkeypatch.setitem(
        F.RAW_FILES, "b3db", {"B3DB_classification.tsv": ("sha256", checksum(data))}
    )
    monkeypatch.setattr(F, "_run", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    folder = F.fetch("b3db", tmp_path)
    assert (folder / "B3DB_classification.tsv").read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["B3DB_classification.tsv"]


def test_real_b3db():
    try:
        F.read_fetched_file("b3db", "B3DB_classification.tsv")
    except DataError:
        pytest.skip(f"b3db not fetched into {F.data_dir()} (run `dgm fetch b3db`)")
    d = load("b3db")
    sizes = [len(d.split(p)) for p in ("train", "val", "test")]
    assert sum(sizes) == 7086 and sizes[1] == sizes[2] == 354
    assert d.spec.num_levels == 36 and d.spec.end_token == 35 and d.spec.event_shape == (101,)
    characters = torch.cat([d.split(p).characters for p in ("train", "val", "test")])
    assert int(characters.min()) >= 10 and int(characters.max()) <= 100


# ---------------------------------------------------------------------------- metrics


def test_metrics_without_rdkit_compare_strings():
    m = molecule_metrics(["CCO", "CCO", "OCC", "xyz"], ["CCO"], rdkit=False)
    assert m == MoleculeMetrics(n=4, valid=None, unique=0.75, novel=2 / 3, among="all")
    assert m.to_dict()["among"] == "all"
    empty = molecule_metrics([], ["CCO"], rdkit=False)
    assert (empty.n, empty.unique, empty.novel) == (0, 0.0, 0.0)


def test_metrics_with_rdkit_canonicalize():
    pytest.importorskip("rdkit")
    # "OCC" is ethanol written differently; "C1CC" does not parse; "" is not a molecule.
    m = molecule_metrics(["CCO", "OCC", "C1CC", "", "c1ccccc1"], {"CCO"}, rdkit=True)
    assert m.n == 5 and m.valid == pytest.approx(3 / 5) and m.among == "valid"
    assert m.unique == pytest.approx(2 / 3) and m.novel == pytest.approx(1 / 2)
    assert molecule_metrics(["C1CC"], ["CCO"]).valid == 0.0


def test_metrics_require_rdkit_when_asked(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rdkit(name, *args, **kwargs):
        if name.startswith("rdkit"):
            raise ImportError("no rdkit here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rdkit)
    assert molecule_metrics(["CCO"], []).among == "all"  # optional: falls back to strings
    with pytest.raises(ConfigError, match="pip install rdkit"):
        molecule_metrics(["CCO"], [], rdkit=True)
