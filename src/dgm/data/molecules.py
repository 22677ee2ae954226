"""Molecules as SMILES strings: the B3DB dataset and sample quality metrics.

Registered dataset ``b3db`` (kind TOKENS, variable length): the blood-brain-barrier database
B3DB (Meng et al., 2021; CC0), as shipped in the ``qc-b3db==1.1.1`` wheel (``dgm fetch b3db``
once). Its classification table holds 7,807 molecules; those whose SMILES have ``min_length`` to
``max_length`` characters (10..100: 7,086, with 35 distinct characters) are kept. It stands in
for the Tox21 set of the textbook's transformer notebook (7,410 molecules of 10-100 tokens),
which no package ships.

Each example is the SMILES, one character per token, then the end token, padded with the end
token to ``max_length + 1`` positions (see :attr:`~dgm.data.spec.DataSpec.end_token`). The
vocabulary is the distinct characters of all kept SMILES plus the end token. Labels ``y``:
1 for BBB+ (crosses the blood-brain barrier), 0 for BBB-. The split is random, about 90/5/5,
reproducible from ``seed``. ``Split.characters`` is the length of each SMILES.

:func:`molecule_metrics` scores generated SMILES: validity (needs RDKit, the optional extra
``pip install dgm[molecules]``), uniqueness and novelty.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dgm.core.errors import ConfigError, DataError
from dgm.data.dataset import SPLITS, Dataset, Split, register_dataset
from dgm.data.fetch import read_fetched_file
from dgm.data.files import random_split
from dgm.core.spec import DataKind, DataSpec
from dgm.data.tokenizers import CharTokenizer

__all__ = ["LABELS", "MoleculeMetrics", "load_b3db", "molecule_metrics", "read_b3db"]

LABELS = {"BBB-": 0, "BBB+": 1}
_TSV = "B3DB_classification.tsv"


def read_b3db(root: str | None = None) -> list[tuple[str, int]]:
    """All (SMILES, label) rows of B3DB's classification table, in file order."""
    raw = read_fetched_file("b3db", _TSV, root)
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")), delimiter="\t")
    missing = {"SMILES", "BBB+/BBB-"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{_TSV}: missing column(s) {', '.join(sorted(missing))}")
    rows = []
    for line, row in enumerate(reader, start=2):
        label = LABELS.get(row["BBB+/BBB-"])
        if label is None:
            raise DataError(f"{_TSV} line {line}: label {row['BBB+/BBB-']!r} is not BBB+ or BBB-")
        rows.append((row["SMILES"], label))
    return rows


@register_dataset(
    "b3db", DataKind.TOKENS, "B3DB SMILES (7,086 of 10-100 chars), char tokens, BBB+/- labels"
)
def load_b3db(
    min_length: int = 10, max_length: int = 100, seed: int = 0, root: str | None = None
) -> Dataset:
    """B3DB molecules as end-terminated character sequences (needs ``dgm fetch b3db`` once)."""
    if not 1 <= min_length <= max_length:
        raise ConfigError(
            f"b3db: need 1 <= min_length <= max_length, got {min_length} and {max_length}"
        )
    rows = [(s, y) for s, y in read_b3db(root) if min_length <= len(s) <= max_length]
    if len(rows) < 3:
        raise DataError(
            f"b3db: only {len(rows)} SMILES have {min_length}..{max_length} characters"
        )
    smiles = [s for s, _ in rows]
    tok = CharTokenizer.from_text("".join(smiles), end=True)
    end = tok.end_token
    assert end is not None
    x = np.full((len(rows), max_length + 1), end, dtype=np.uint8 if end < 256 else np.int16)
    for i, s in enumerate(smiles):
        x[i, : len(s)] = tok.encode(s)
    xs = torch.from_numpy(x)
    ys = torch.tensor([y for _, y in rows], dtype=torch.long)
    chars = torch.tensor([len(s) for s in smiles], dtype=torch.long)
    index = dict(zip(SPLITS, random_split(len(rows), 0.05, 0.05, seed, "b3db")))
    splits = {}
    for part, i in index.items():
        i = torch.from_numpy(i)
        splits[part] = Split(xs[i], ys[i], characters=chars[i])
    spec = DataSpec(
        (max_length + 1,), DataKind.TOKENS, num_levels=tok.vocab_size, num_classes=2, end_token=end
    )
    return Dataset(
        name="b3db",
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description=(
            f"B3DB classification (PyPI qc-b3db==1.1.1): {len(rows):,} SMILES of "
            f"{min_length}..{max_length} characters ({int(ys.sum()):,} BBB+ = label 1); "
            f"char tokens ({tok.vocab_size - 1} characters + end token {end}), padded with the "
            f"end token to {max_length + 1}; random split "
            f"{'/'.join(str(len(splits[k])) for k in SPLITS)} "
            f"with seed {seed}"
        ),
        tokenizer=tok,
    )


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class MoleculeMetrics:
    """Quality of ``n`` generated SMILES.

    ``valid``: the fraction RDKit parses (None without RDKit). ``unique``: distinct molecules
    over the pool. ``novel``: distinct molecules not in the training set over the distinct ones
    (as in MOSES and GuacaMol). ``among`` says what the pool is: ``"valid"`` (with RDKit;
    molecules compared by canonical SMILES) or ``"all"`` (without; compared as raw strings).
    """

    n: int
    valid: float | None
    unique: float
    novel: float
    among: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "valid": self.valid,
            "unique": self.unique,
            "novel": self.novel,
            "among": self.among,
        }


def _rdkit_canonicalizer() -> Any:
    """A function SMILES -> canonical SMILES or None if invalid; None if RDKit is missing."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        return None
    RDLogger.DisableLog("rdApp.*")  # invalid samples are expected; don't print each one

    def canonical(smiles: str) -> str | None:
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        return None if mol is None else Chem.MolToSmiles(mol)

    return canonical


def molecule_metrics(
    samples: list[str], training: Iterable[str], *, rdkit: bool | None = None
) -> MoleculeMetrics:
    """Validity, uniqueness and novelty of ``samples`` against the ``training`` SMILES.

    ``rdkit``: None uses RDKit when it is importable; False never; True requires it (ConfigError
    if missing). Fractions over an empty pool are 0.
    """
    canonical = None if rdkit is False else _rdkit_canonicalizer()
    if rdkit and canonical is None:
        raise ConfigError("molecule validity needs RDKit: pip install rdkit (or dgm[molecules])")
    samples = list(samples)
    if canonical is None:
        pool, known, valid, among = samples, set(training), None, "all"
    else:
        pool = [c for c in map(canonical, samples) if c is not None]
        known = {canonical(s) or s for s in training}
        valid = len(pool) / len(samples) if samples else 0.0
        among = "valid"
    distinct = set(pool)
    return MoleculeMetrics(
        n=len(samples),
        valid=valid,
        unique=len(distinct) / len(pool) if pool else 0.0,
        novel=len(distinct - known) / len(distinct) if distinct else 0.0,
        among=among,
    )
