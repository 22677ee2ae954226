"""Tokenizers: strings to token ids and back, for text and SMILES datasets.

Two kinds, both trained by this library and stored as small JSON files:

- :class:`CharTokenizer`: one id per character of a fixed alphabet (char-level language models,
  SMILES). A character outside the alphabet is a :class:`~dgm.core.errors.DataError`.
- :class:`BPETokenizer`: byte-level byte-pair encoding. The base vocabulary is the 256 bytes,
  so any string encodes; training adds merges of the most frequent adjacent pair.

Either may reserve one extra id, the last, as an *end token* (variable-length sequences, see
:attr:`~dgm.data.spec.DataSpec.end_token`). :meth:`~Tokenizer.decode` renders the end token as
nothing; stopping a sequence at its first end token is the caller's business.

:meth:`~Tokenizer.token_lengths` says how many characters of the decoded text each token
accounts for, so that a dataset can report characters per example and the evaluator bits per
character whatever the tokenizer.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dgm.core.errors import ConfigError, DataError

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "decode_sequence",
    "load_tokenizer",
    "save_tokenizer",
    "split_chunks",
    "tokenizer_from_dict",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What datasets and models need from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, end token included: ids are 0..vocab_size-1."""
        ...

    @property
    def end_token(self) -> int | None:
        """The id that ends a sequence, or None if this tokenizer has none."""
        ...

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        """Token ids of ``text`` (never adds an end token). ``errors="ignore"`` drops what the
        vocabulary cannot express instead of raising DataError."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; the end token renders as nothing."""
        ...

    def token_lengths(self, ids: Sequence[int]) -> list[int]:
        """Characters of the decoded text that each token accounts for (0 for the end token)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description, with a "type" key (see :func:`tokenizer_from_dict`)."""
        ...


def _check_ids(ids: Sequence[int], vocab_size: int) -> None:
    bad = [int(i) for i in ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise DataError(
            f"token ids must lie in 0..{vocab_size - 1}, got {len(bad)} outside, e.g. {bad[:5]}"
        )


def _describe_unknown(chars: Iterable[str], text: str, known: int) -> str:
    unknown = set(chars)
    counts = Counter(c for c in text if c in unknown)
    listed = ", ".join(repr(c) for c, _ in counts.most_common(20))
    more = f" and {len(counts) - 20} more" if len(counts) > 20 else ""
    return (
        f"{len(counts)} character(s) not in the tokenizer's vocabulary of {known} "
        f"({sum(counts.values())} occurrence(s)): {listed}{more}"
    )


# ---------------------------------------------------------------------------------------------
# Characters


class CharTokenizer:
    """One id per character of ``chars`` (in that order), plus an end token if ``end``.

    Use :meth:`from_text` to take the sorted distinct characters of a corpus.
    """

    def __init__(self, chars: str, *, end: bool = False) -> None:
        if not chars:
            raise ConfigError("CharTokenizer needs at least one character")
        if len(set(chars)) != len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ConfigError(f"CharTokenizer characters repeat: {', '.join(map(repr, repeated))}")
        self.chars = chars
        self.end = bool(end)
        self._index = {c: i for i, c in enumerate(chars)}
        # Code point -> id lookup table (-1: unknown), for encoding long texts with numpy.
        self._table = np.full(max(map(ord, chars)) + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in chars]] = np.arange(len(chars))

    @classmethod
    def from_text(cls, text: str, end: bool = False) -> CharTokenizer:
        """The sorted distinct characters of ``text``."""
        return cls("".join(sorted(set(text))), end=end)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + int(self.end)

    @property
    def end_token(self) -> int | None:
        return len(self.chars) if self.end else None

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        """One id per character; DataError naming the characters outside the vocabulary (or,
        with ``errors="ignore"``, those characters dropped)."""
        if errors not in ("strict", "ignore"):
            raise ConfigError(f"errors must be 'strict' or 'ignore', got {errors!r}")
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        inside = points < len(self._table)
        ids = np.where(inside, self._table[np.where(inside, points, 0)], -1)
        if errors == "ignore":
            return ids[ids >= 0].tolist()
        if (ids < 0).any():
            unknown = {chr(p) for p in np.unique(points[ids < 0]).tolist()}
            raise DataError(_describe_unknown(unknown, text, len(self.chars)))
        return ids.tolist()

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        n = len(self.chars)
        return "".join(self.chars[i] for i in map(int, ids) if i < n)

    def token_lengths(self, ids: Sequence[int]) -> list[int]:
        """1 per character token, 0 for the end token."""
        n = len(self.chars)
        return [int(int(i) < n) for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars, "end": self.end}

    def __repr__(self) -> str:
        return f"CharTokenizer({self.vocab_size} ids{', end token' if self.end else ''})"


# ---------------------------------------------------------------------------------------------
# Byte-level byte-pair encoding

# Chunks that merges never cross: a word with its leading space, a run of digits, a run of
# punctuation (with its leading space), whitespace up to and including line breaks, other
# whitespace (a run before a word leaves its last space to that word). Together the alternatives match every character, so chunks rebuild the text.
_CHUNK = re.compile(r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s*[\r\n]+|\s+(?!\S)|\s+")


def split_chunks(text: str) -> list[str]:
    """The pre-tokenization chunks of ``text``; ``"".join(split_chunks(t)) == t``."""
    return _CHUNK.findall(text)


def _merge(symbols: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """``symbols`` with every non-overlapping occurrence of ``pair`` (left to right) merged."""
    out: list[int] = []
    i, n = 0, len(symbols)
    a, b = pair
    while i < n:
        if i + 1 < n and symbols[i] == a and symbols[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _pairs(symbols: list[int]) -> Counter[tuple[int, int]]:
    return Counter(pairwise(symbols))


class BPETokenizer:
    """Byte-level BPE: ids 0..255 are bytes, 256.. are merges in rank order, then the end token.

    Build one with :meth:`train`. Encoding splits text into chunks (:func:`split_chunks`),
    turns each chunk into its UTF-8 bytes and applies the merges in rank order; chunk encodings
    are cached. Any string encodes. Decoding joins the bytes and decodes UTF-8 with
    ``errors="replace"`` (a sequence cut inside a multi-byte character shows U+FFFD).
    """

    _CACHE_LIMIT = 1 << 18

    def __init__(self, merges: Sequence[tuple[int, int]], *, end: bool = False) -> None:
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.end = bool(end)
        self._rank: dict[tuple[int, int], int] = {}
        self._bytes: list[bytes] = [bytes([i]) for i in range(256)]
        for rank, (a, b) in enumerate(self.merges):
            new = 256 + rank
            if not (0 <= a < new and 0 <= b < new):
                raise ConfigError(f"BPE merge {rank} ({a}, {b}) refers to an id not yet defined")
            if (a, b) in self._rank:
                raise ConfigError(f"BPE merge {rank} ({a}, {b}) repeats merge {self._rank[a, b]}")
            self._rank[a, b] = rank
            self._bytes.append(self._bytes[a] + self._bytes[b])
        # Characters each token starts: its bytes that are not UTF-8 continuation bytes.
        self._starts = [sum((byte & 0xC0) != 0x80 for byte in t) for t in self._bytes]
        if self.end:
            self._starts.append(0)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, *, end: bool = False) -> BPETokenizer:
        """Learn merges on ``text`` until the vocabulary (end token included) has ``vocab_size``.

        Each step merges the most frequent adjacent pair of symbols within chunks, counted over
        the distinct chunks of the text weighted by their counts; ties go to the smallest pair,
        so the same text always gives the same merges. Training stops early, with a smaller
        vocabulary, if no pair occurs any more (a tiny text).
        """
        base = 256 + int(end)
        if vocab_size < base:
            raise ConfigError(
                f"BPE vocab_size must be at least {base} (256 bytes"
                f"{' + the end token' if end else ''}), got {vocab_size}"
            )
        counts = Counter(split_chunks(text))
        words = [list(chunk.encode("utf-8")) for chunk in counts]
        freq = list(counts.values())
        pair_count: Counter[tuple[int, int]] = Counter()
        where: dict[tuple[int, int], set[int]] = {}
        for w, symbols in enumerate(words):
            for pair in pairwise(symbols):
                pair_count[pair] += freq[w]
                where.setdefault(pair, set()).add(w)
        heap = [(-c, pair) for pair, c in pair_count.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - base and heap:
            negative, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -negative or -negative <= 0:
                continue  # stale entry: the count changed since it was pushed
            new = 256 + len(merges)
            merges.append(pair)
            changed: set[tuple[int, int]] = set()
            for w in where.pop(pair, ()):
                old = words[w]
                merged = _merge(old, pair, new)
                if len(merged) == len(old):
                    continue
                f = freq[w]
                for p, c in _pairs(old).items():
                    pair_count[p] -= c * f
                    changed.add(p)
                for p, c in _pairs(merged).items():
                    pair_count[p] += c * f
                    where.setdefault(p, set()).add(w)
                    changed.add(p)
                words[w] = merged
            for p in changed:
                c = pair_count[p]
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del pair_count[p]
        return cls(merges, end=end)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + int(self.end)

    @property
    def end_token(self) -> int | None:
        return 256 + len(self.merges) if self.end else None

    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        symbols = list(chunk.encode("utf-8"))
        rank = self._rank
        while len(symbols) > 1:
            best = min(pairwise(symbols), key=lambda p: rank.get(p, len(rank)))
            if best not in rank:
                break
            symbols = _merge(symbols, best, 256 + rank[best])
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = symbols
        return symbols

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        """Byte-level: every text encodes, so ``errors`` changes nothing."""
        ids: list[int] = []
        extend, cached, encode_chunk = ids.extend, self._cache.get, self._encode_chunk
        for chunk in split_chunks(text):
            extend(cached(chunk) or encode_chunk(chunk))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        n = len(self._bytes)
        return b"".join(self._bytes[i] for i in map(int, ids) if i < n).decode(
            "utf-8", errors="replace"
        )

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token (empty for the end token)."""
        _check_ids([token], self.vocab_size)
        return self._bytes[token] if token < len(self._bytes) else b""

    def token_lengths(self, ids: Sequence[int]) -> list[int]:
        """Characters each token *starts*: its bytes that are not UTF-8 continuation bytes.

        A character split over two tokens counts once, for the token holding its first byte,
        so the lengths of a stream sum to the characters of its text (for ASCII, the bytes).
        """
        _check_ids(ids, self.vocab_size)
        starts = self._starts
        return [starts[int(i)] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bpe", "merges": [list(m) for m in self.merges], "end": self.end}

    def __repr__(self) -> str:
        return f"BPETokenizer({self.vocab_size} ids{', end token' if self.end else ''})"


# ---------------------------------------------------------------------------------------------
# Files


def decode_sequence(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of one generated sequence: ``ids`` up to (not including) the first end token."""
    ids = [int(i) for i in ids]
    end = tokenizer.end_token
    if end is not None and end in ids:
        ids = ids[: ids.index(end)]
    return tokenizer.decode(ids)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """The tokenizer described by ``d`` (the output of ``to_dict``)."""
    if not isinstance(d, dict) or "type" not in d:
        raise DataError(
            f"a tokenizer description must be a mapping with a 'type' key, got {d!r:.80}"
        )
    kind = d["type"]
    try:
        if kind == "char":
            return CharTokenizer(str(d["chars"]), end=bool(d.get("end", False)))
        if kind == "bpe":
            return BPETokenizer([tuple(m) for m in d["merges"]], end=bool(d.get("end", False)))
    except KeyError as e:
        raise DataError(f"corrupt {kind} tokenizer description: no {e} key") from None
    except (TypeError, ValueError) as e:  # ConfigError included: merges that make no sense
        raise DataError(f"corrupt {kind} tokenizer description: {e}") from None
    raise DataError(f"unknown tokenizer type {kind!r}; expected 'char' or 'bpe'")


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer.to_dict()`` to ``path`` as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=True) + "\n", encoding="utf-8")
    return path


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer written by :func:`save_tokenizer`; DataError if missing or corrupt."""
    path = Path(path).expanduser()
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read tokenizer file {path}: {e}") from None
    try:
        return tokenizer_from_dict(d)
    except (DataError, ConfigError) as e:
        raise DataError(f"{path}: {e}") from None
