r"""The retrieval half of retrieval-augmented generation (Book §11.3.4.1).

A retrieval-augmented generator answers a query x by first retrieving passages z_1..z_k from a
document store and then generating from p(y | x, z_1..z_k); here the passages are simply pasted
into the prompt. This module is everything before the generator:

1. :func:`split_passages` cuts a text into :class:`Passage` objects of at most ``max_chars``
   characters: blank-line separated paragraphs are packed greedily, and a paragraph longer than
   ``max_chars`` is cut into overlapping windows.
2. :class:`DocumentStore` holds the passages of a set of files and folders.
3. :class:`TfidfRetriever` scores every passage by the cosine similarity of TF-IDF vectors
   (Spärck Jones 1972; Salton & Buckley 1988) and returns the best as :class:`Hit` objects.
4. :func:`build_prompt` pastes the hits, best first, into a prompt of at most ``max_chars``.
5. :class:`RetrievalAugmentedGenerator` puts it together with a trained token model (a GPT):
   retrieve, build a prompt that fits the model's context, generate the continuation.

Every passage is a verbatim slice of its source: ``text[p.start : p.start + len(p.text)]`` is
``p.text``, with ``text`` the file decoded as UTF-8 (undecodable bytes replaced by U+FFFD, line
endings kept as they are).

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §11.3.4.1.
    Lewis et al., Retrieval-augmented generation for knowledge-intensive NLP tasks, 2020,
    arXiv:2005.11401.
    Spärck Jones, A statistical interpretation of term specificity and its application in
    retrieval, Journal of Documentation, 1972.
    Salton & Buckley, Term-weighting approaches in automatic text retrieval, Information
    Processing & Management, 1988.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dgm.core.errors import ConfigError, DataError

__all__ = [
    "Passage",
    "Hit",
    "split_passages",
    "DocumentStore",
    "TfidfRetriever",
    "build_prompt",
    "tokenize",
    "DEFAULT_TEMPLATE",
    "Answer",
    "RetrievalAugmentedGenerator",
]

DEFAULT_TEMPLATE = "{context}\n\nQuestion: {query}\nAnswer:"

_BLANK_LINES = re.compile(r"\n[^\S\n]*\n(?:[^\S\n]*\n)*")  # one or more lines of only spaces
_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------ passages


@dataclass(frozen=True)
class Passage:
    """A piece of a document: ``text`` is ``source``'s characters ``start .. start + len(text)``.

    Args:
        source: the file it comes from (as found by :meth:`DocumentStore.from_paths`).
        index: its position among the passages of that file (0, 1, ...).
        start: offset of its first character in the decoded file.
        text: the passage itself, never empty, without leading or trailing whitespace.
    """

    source: str
    index: int
    start: int
    text: str

    @property
    def end(self) -> int:
        """Offset one past its last character in the decoded file."""
        return self.start + len(self.text)


def _check_sizes(max_chars: int, overlap: int) -> None:
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"max_chars must be a positive integer, got {max_chars!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < max_chars:
        raise ConfigError(f"overlap must be an integer in [0, max_chars), got {overlap!r}")


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans (start, end) of the blank-line separated paragraphs, trimmed of whitespace."""
    spans, begin = [], 0
    for match in [*_BLANK_LINES.finditer(text), None]:
        stop = len(text) if match is None else match.start()
        chunk = text[begin:stop]
        stripped = chunk.lstrip()
        if stripped.strip():
            start = begin + len(chunk) - len(stripped)
            spans.append((start, start + len(stripped.rstrip())))
        if match is not None:
            begin = match.end()
    return spans


def _windows(
    text: str, start: int, end: int, max_chars: int, overlap: int
) -> list[tuple[int, int]]:
    """Cut the span [start, end) (no whitespace at its ends) into windows of <= max_chars.

    A window ends at the last whitespace that leaves the next window a fresh start, else it is
    cut hard after ``max_chars`` characters. The next window starts ``overlap`` characters
    before the cut, moved forward to the start of a word when one begins before the cut.
    """
    spans = []
    s = start
    while end - s > max_chars:
        limit = s + max_chars
        cut = limit
        for j in range(limit, s + overlap, -1):  # text[j] whitespace: text[s:j] ends a word
            if text[j].isspace():
                cut = j
                break
        spans.append((s, s + len(text[s:cut].rstrip())))
        nxt = cut - overlap
        if 0 < nxt and not text[nxt - 1].isspace() and not text[nxt].isspace():
            j = nxt
            while j < cut and not text[j].isspace():
                j += 1
            if j < cut or (j == cut and text[cut].isspace()):
                nxt = j
        while text[nxt].isspace():  # the span ends in a non-space, so this stops before `end`
            nxt += 1
        s = nxt
    spans.append((s, end))
    return spans


def split_passages(
    text: str, *, source: str, max_chars: int = 600, overlap: int = 100
) -> list[Passage]:
    """Cut ``text`` into passages of at most ``max_chars`` characters.

    Paragraphs (separated by lines holding only whitespace) are packed greedily: a passage runs
    from the start of its first paragraph to the end of its last, blank lines between them
    included, and takes the next paragraph whenever the result still fits in ``max_chars``.
    A paragraph longer than ``max_chars`` gets passages of its own: windows of at most
    ``max_chars`` characters, each starting at most ``overlap`` characters before the end of
    the previous one (less when that moves it to the start of a word), cut at whitespace where
    possible. Windows do not overlap across paragraphs; packed passages never overlap.

    Every passage is a verbatim, whitespace-trimmed slice ``text[p.start : p.end]``; together
    they cover every non-whitespace character of ``text``. A text of only whitespace gives
    no passages.

    Raises:
        ConfigError: ``max_chars < 1`` or ``overlap`` outside ``[0, max_chars)``.
    """
    _check_sizes(max_chars, overlap)
    spans: list[tuple[int, int]] = []
    group: tuple[int, int] | None = None
    for p_start, p_end in _paragraphs(text):
        if group is not None and p_end - group[0] <= max_chars:
            group = (group[0], p_end)
            continue
        if group is not None:
            spans.append(group)
            group = None
        if p_end - p_start <= max_chars:
            group = (p_start, p_end)
        else:
            spans.extend(_windows(text, p_start, p_end, max_chars, overlap))
    if group is not None:
        spans.append(group)
    return [Passage(source, i, s, text[s:e]) for i, (s, e) in enumerate(spans)]


# ------------------------------------------------------------------------------------- store


class DocumentStore:
    """An ordered, immutable collection of passages (the corpus a retriever searches).

    Args:
        passages: the passages, in the order that breaks ties between equal scores.

    Raises:
        DataError: no passages.
    """

    def __init__(self, passages: Sequence[Passage]) -> None:
        self._passages = tuple(passages)
        if not self._passages:
            raise DataError("a DocumentStore needs at least one passage, got none")
        for p in self._passages:
            if not isinstance(p, Passage):
                raise DataError(f"a DocumentStore holds Passage objects, got {type(p).__name__}")

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str | Path] | str | Path,
        *,
        max_chars: int = 600,
        overlap: int = 100,
        suffixes: Sequence[str] = (".txt", ".md", ".rst"),
    ) -> DocumentStore:
        """Read files and folders and split them with :func:`split_passages`.

        A file named in ``paths`` is read whatever its suffix. A folder is searched
        recursively for files whose suffix is in ``suffixes`` (case-insensitive), skipping
        hidden files and folders (names starting with a dot), in sorted order. A file reached
        twice is read once. Files are decoded as UTF-8 with undecodable bytes replaced.

        Raises:
            DataError: a path that does not exist, or no passages in any of the files.
            ConfigError: bad ``max_chars`` or ``overlap``.
        """
        _check_sizes(max_chars, overlap)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        wanted = {s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes}
        files: list[Path] = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                found = (
                    f
                    for f in path.rglob("*")
                    if f.is_file()
                    and f.suffix.lower() in wanted
                    and not any(part.startswith(".") for part in f.relative_to(path).parts)
                )
                files.extend(sorted(found))
            elif path.is_file():
                files.append(path)
            else:
                raise DataError(f"no such file or folder: {str(path)!r}")
        passages: list[Passage] = []
        seen: set[Path] = set()
        for f in files:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            with open(f, encoding="utf-8", errors="replace", newline="") as handle:
                text = handle.read()
            passages += split_passages(text, source=str(f), max_chars=max_chars, overlap=overlap)
        if not passages:
            names = ", ".join(repr(str(p)) for p in paths) or "(no paths)"
            raise DataError(
                f"no passages found in {names}: {len(seen)} file(s) read (folders searched "
                f"for {', '.join(sorted(wanted))}), all empty or only whitespace"
            )
        return cls(passages)

    @property
    def passages(self) -> tuple[Passage, ...]:
        return self._passages

    @property
    def sources(self) -> tuple[str, ...]:
        """The distinct sources, in order of first appearance."""
        return tuple(dict.fromkeys(p.source for p in self._passages))

    def __len__(self) -> int:
        return len(self._passages)

    def __getitem__(self, i: int) -> Passage:
        return self._passages[i]

    def __iter__(self) -> Iterator[Passage]:
        return iter(self._passages)

    def __repr__(self) -> str:
        return f"DocumentStore({len(self)} passages from {len(self.sources)} sources)"


# --------------------------------------------------------------------------------- retriever


def tokenize(text: str, ngram: int = 1) -> list[str]:
    """Terms of ``text``: the lower-cased words (regex ``\\w+``), then for n = 2..``ngram``
    the n-grams of consecutive words, joined by single spaces."""
    words = _WORD.findall(text.lower())
    terms = list(words)
    for n in range(2, ngram + 1):
        terms += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return terms


@dataclass(frozen=True)
class Hit:
    """A retrieved passage.

    Args:
        passage: the passage.
        score: cosine similarity of the TF-IDF vectors of query and passage, in (0, 1].
        rank: 1 for the best hit, 2 for the next, ...
    """

    passage: Passage
    score: float
    rank: int


class TfidfRetriever:
    r"""Rank passages by the cosine similarity of their TF-IDF vectors with the query's.

    With N passages, c(t, d) the number of times term t occurs in passage d and df(t) the
    number of passages that contain t, the weight of t in d is

        idf(t)  = ln((1 + N) / (1 + df(t))) + 1                      (smoothed idf)
        tf(t,d) = 1 + ln c(t, d)   if sublinear_tf,   c(t, d) otherwise   (0 if c = 0)
        w(t,d)  = tf(t, d) idf(t),        v_d = w(·, d) / ||w(·, d)||_2

    (a passage without terms keeps the zero vector). A query q gets the same weights, over
    the passages' vocabulary only (unknown terms are dropped), and

        score(q, d) = <v_q, v_d>,

    the cosine similarity, in [0, 1] since all weights are non-negative. The +1 keeps a term
    that occurs in every passage (idf = 1) from vanishing; the 1 + ... inside the log is one
    pseudo-passage containing every term, which keeps idf finite. This is the formula of
    scikit-learn's ``TfidfVectorizer(smooth_idf=True, norm="l2")``, written here with torch.

    Terms are lower-cased ``\w+`` words, plus word n-grams up to ``ngram`` (see
    :func:`tokenize`). The passage vectors are kept as an (N, V) sparse CSR matrix
    (:attr:`matrix`), float64.

    Args:
        store: the passages to search.
        sublinear_tf: use 1 + ln c instead of the raw count c.
        ngram: longest word n-gram used as a term (1: single words only).
    """

    def __init__(self, store: DocumentStore, *, sublinear_tf: bool = True, ngram: int = 1) -> None:
        if not isinstance(store, DocumentStore):
            raise ConfigError(f"store must be a DocumentStore, got {type(store).__name__}")
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise ConfigError(f"ngram must be a positive integer, got {ngram!r}")
        self.store = store
        self.sublinear_tf = bool(sublinear_tf)
        self.ngram = ngram

        counts = [Counter(tokenize(p.text, ngram)) for p in store]
        df: Counter[str] = Counter()
        for c in counts:
            df.update(c.keys())
        self._vocabulary = {term: i for i, term in enumerate(sorted(df))}
        n = len(store)
        self.idf = torch.tensor(
            [math.log((1 + n) / (1 + df[t])) + 1.0 for t in sorted(df)], dtype=torch.float64
        )

        crow, cols, values = [0], [], []
        for c in counts:
            row_cols = sorted(self._vocabulary[t] for t in c)
            cols += row_cols
            values.append(self._weights(c, row_cols))
            crow.append(len(cols))
        with warnings.catch_warnings():  # CSR support is "beta" in torch; we only use mv
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = torch.sparse_csr_tensor(
                torch.tensor(crow, dtype=torch.long),
                torch.tensor(cols, dtype=torch.long),
                torch.cat(values) if values else torch.zeros(0, dtype=torch.float64),
                size=(n, len(self._vocabulary)),
                dtype=torch.float64,
                check_invariants=False,
            )

    def _weights(self, counts: Counter[str], cols: list[int]) -> Tensor:
        """The L2-normalised TF-IDF weights of the terms ``cols`` (all in the vocabulary)."""
        terms = sorted(counts, key=self._vocabulary.__getitem__)
        c = torch.tensor([counts[t] for t in terms], dtype=torch.float64)
        tf = 1.0 + torch.log(c) if self.sublinear_tf else c
        w = tf * self.idf[torch.tensor(cols, dtype=torch.long)]
        norm = torch.linalg.vector_norm(w)
        return w / norm if norm > 0 else w

    @property
    def vocabulary(self) -> dict[str, int]:
        """Term -> column of :attr:`matrix` (a copy)."""
        return dict(self._vocabulary)

    def query_vector(self, query: str) -> Tensor:
        """The dense, L2-normalised TF-IDF vector v_q of ``query``, shape (V,), float64.

        All zeros if the query has no term of the vocabulary.
        """
        counts = Counter(t for t in tokenize(query, self.ngram) if t in self._vocabulary)
        v = torch.zeros(len(self._vocabulary), dtype=torch.float64)
        if counts:
            cols = sorted(self._vocabulary[t] for t in counts)
            v[torch.tensor(cols, dtype=torch.long)] = self._weights(counts, cols)
        return v

    def scores(self, query: str) -> Tensor:
        """Cosine similarity of ``query`` with every passage, shape (N,), float64."""
        q = self.query_vector(query)
        if not bool(q.any()):
            return torch.zeros(len(self.store), dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.mv(self.matrix, q)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The (at most) ``k`` passages most similar to ``query``, best first.

        Only passages with a positive score (sharing at least one term with the query) are
        returned, so an empty query, or one whose words occur in no passage, gives ``[]``.
        Equal scores keep the store's order.

        Raises:
            ConfigError: ``k < 1``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        scores = self.scores(query)
        candidates = torch.nonzero(scores > 0).flatten()
        order = torch.sort(scores[candidates], descending=True, stable=True).indices[:k]
        return [
            Hit(self.store[int(i)], min(float(scores[i]), 1.0), rank)
            for rank, i in enumerate(candidates[order].tolist(), start=1)
        ]

    def __repr__(self) -> str:
        return (
            f"TfidfRetriever({len(self.store)} passages, {len(self._vocabulary)} terms, "
            f"sublinear_tf={self.sublinear_tf}, ngram={self.ngram})"
        )


# ------------------------------------------------------------------------------------ prompt


def _check_template(template: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"bad prompt template {template!r}: {e}") from None
    if sorted(fields) != ["context", "query"]:
        raise ConfigError(
            "the prompt template must hold {context} and {query} once each and no other "
            f"field, got fields {fields} in {template!r}"
        )


def _cut_at_whitespace(text: str, room: int) -> str:
    """The longest prefix of ``text`` of at most ``room`` characters that ends a word, else a
    hard cut; without trailing whitespace."""
    if len(text) <= room:
        return text
    head = text[:room]
    if not text[room].isspace():
        cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        if cut > 0:
            head = head[:cut]
    return head.rstrip()


def build_prompt(
    query: str, hits: Sequence[Hit], *, max_chars: int, template: str = DEFAULT_TEMPLATE
) -> str:
    """Paste the retrieved passages and the query into ``template``, in at most ``max_chars``.

    The context is the hits' texts in rank order (best first), separated by blank lines.
    If the prompt would be longer than ``max_chars``, the context is cut from the end: the
    lowest-ranked passages are dropped, and the last one that partly fits is cut at a word
    boundary (or dropped if nothing of it fits). The query is never cut while it fits with the
    template and an empty context; otherwise the context is empty and only the query's last
    characters that fit are kept.

    Raises:
        ConfigError: ``max_chars`` too small for the template's own text, or a template
            without exactly one ``{context}`` and one ``{query}`` field.
    """
    _check_template(template)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int):
        raise ConfigError(f"max_chars must be an integer, got {max_chars!r}")
    fixed = len(template.format(context="", query=""))
    if fixed > max_chars:
        raise ConfigError(
            f"max_chars={max_chars} is shorter than the template's own {fixed} characters"
        )
    if fixed + len(query) > max_chars:
        keep = max_chars - fixed
        return template.format(context="", query=query[len(query) - keep :])
    room = max_chars - fixed - len(query)
    parts: list[str] = []
    for hit in sorted(hits, key=lambda h: h.rank):
        sep = 2 if parts else 0
        text = hit.passage.text
        if sep + len(text) <= room:
            parts.append(text)
            room -= sep + len(text)
            continue
        head = _cut_at_whitespace(text, room - sep) if room - sep > 0 else ""
        if head:
            parts.append(head)
        break
    return template.format(context="\n\n".join(parts), query=query)


# ---------------------------------------------------------------------------------------------
# The generator half


@dataclass(frozen=True)
class Answer:
    """What a retrieval-augmented generation returns: the hits, the prompt the model read
    (after fitting it into the context) and the generated continuation."""

    query: str
    hits: tuple[Hit, ...]
    prompt: str
    text: str


class RetrievalAugmentedGenerator:
    """Retrieve passages for a query and let a token model continue a prompt built from them.

    The prompt is cut to leave room for the answer inside the model's context of
    ``model.max_length`` positions: at most ``max_length - 1 - min(max_new_tokens, max_length
    // 2)`` prompt tokens (one position is the start token). Characters the tokenizer cannot
    express (a character-level vocabulary learned from another corpus) are dropped.

    Args:
        retriever: a :class:`TfidfRetriever` over the user's documents.
        model: a trained token model with ``generate`` and ``max_length`` (``gpt``,
            ``transformer``).
        tokenizer: the run's tokenizer (``Run.tokenizer()``).
        template: how hits and query are put together (see :func:`build_prompt`).
    """

    def __init__(
        self,
        retriever: TfidfRetriever,
        model: Any,
        tokenizer: Any,
        *,
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if not hasattr(model, "generate") or not hasattr(model, "max_length"):
            raise ConfigError(f"{type(model).__name__} cannot continue a prompt (no generate())")
        self.retriever, self.model = retriever, model
        self.tokenizer, self.template = tokenizer, template

    def prompt_tokens(self, query: str, hits: Sequence[Hit], budget: int) -> tuple[str, list[int]]:
        """The longest prompt of the hits that encodes to at most ``budget`` tokens."""
        max_chars = 8 * budget  # no tokenizer here packs more than 8 characters into a token
        for _ in range(32):
            prompt = build_prompt(query, hits, max_chars=max_chars, template=self.template)
            ids = self.tokenizer.encode(prompt, errors="ignore")
            if len(ids) <= budget:
                return prompt, ids
            max_chars = max(1, int(max_chars * budget / len(ids)) - 1)
        return prompt, ids[-budget:]  # a query too long for the context keeps its end

    def answer(
        self,
        query: str,
        *,
        k: int = 3,
        max_new_tokens: int = 200,
        sampling: Any = None,
        generator: torch.Generator | None = None,
    ) -> Answer:
        """Retrieve the top ``k`` passages and generate up to ``max_new_tokens`` tokens."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        hits = self.retriever.search(query, k)
        length = int(self.model.max_length)
        budget = max(1, length - 1 - min(max_new_tokens, length // 2))
        prompt, ids = self.prompt_tokens(query, hits, budget)
        prefix = torch.tensor([ids], dtype=torch.long)
        out = self.model.generate(prefix, max_new_tokens, sampling=sampling, generator=generator)
        from dgm.data.tokenizers import decode_sequence

        text = decode_sequence(self.tokenizer, out[0, len(ids) :].tolist())
        return Answer(query, tuple(hits), self.tokenizer.decode(ids), text)
