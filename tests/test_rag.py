"""Retrieval for retrieval-augmented generation: passages, document store, TF-IDF, prompts."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dgm.core.errors import ConfigError, DataError
from dgm.rag import (
    DocumentStore,
    Hit,
    Passage,
    TfidfRetriever,
    build_prompt,
    split_passages,
    tokenize,
)


def _store(*texts: str) -> DocumentStore:
    return DocumentStore([Passage(f"doc{i}", 0, 0, t) for i, t in enumerate(texts)])


def _squash(text: str) -> str:
    return "".join(text.split())


def _covered(text: str, passages: list[Passage]) -> str:
    """The passages' characters, each taken once (overlaps skipped), whitespace removed."""
    out, done = [], 0
    for p in passages:
        out.append(text[max(done, p.start) : p.end])
        done = max(done, p.end)
    return _squash("".join(out))


def _random_text(seed: int) -> str:
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(rng.randint(1, 12)):
        words = [
            "".join(rng.choice("abcdefgh") for _ in range(rng.choice([1, 3, 7, 40, 150])))
            for _ in range(rng.randint(1, 40))
        ]
        paragraphs.append(" ".join(words).replace("a ", "a\n", 3))
    seps = ["\n\n", "\n \n\n", "\r\n\r\n", "\n\t\n"]
    return "  \n" + "".join(p + rng.choice(seps) for p in paragraphs)


# ---------------------------------------------------------------------------------- splitting


def test_paragraphs_are_packed_greedily_and_are_verbatim_slices():
    text = "alpha beta\n\ngamma delta\n\n\n  epsilon zeta eta theta\n\niota"
    ps = split_passages(text, source="f.txt", max_chars=30, overlap=5)
    assert [p.text for p in ps] == [
        "alpha beta\n\ngamma delta",
        "epsilon zeta eta theta\n\niota",
    ]
    assert [p.index for p in ps] == [0, 1]
    assert all(p.source == "f.txt" for p in ps)
    assert all(text[p.start : p.end] == p.text for p in ps)


@pytest.mark.parametrize("max_chars,overlap", [(600, 100), (50, 10), (20, 0), (8, 7), (1, 0)])
def test_passages_cover_the_text_and_respect_max_chars(max_chars, overlap):
    for seed in range(4):
        text = _random_text(seed)
        ps = split_passages(text, source="s", max_chars=max_chars, overlap=overlap)
        assert ps
        assert all(0 < len(p.text) <= max_chars for p in ps)
        assert all(p.text == p.text.strip() and text[p.start : p.end] == p.text for p in ps)
        assert all(a.start < b.start for a, b in zip(ps, ps[1:]))
        assert all(b.start >= a.end - overlap for a, b in zip(ps, ps[1:]))
        assert _covered(text, ps) == _squash(text)


def test_long_paragraph_is_cut_at_whitespace_with_overlap():
    words = [f"w{i:02d}" for i in range(40)]  # 3 chars each, 1 space between
    text = " ".join(words)
    ps = split_passages(text, source="s", max_chars=30, overlap=8)
    assert len(ps) > 1
    for p in ps:  # every window holds whole words only
        assert all(tok in words for tok in p.text.split())
    for a, b in zip(ps, ps[1:]):  # consecutive windows share a word
        assert set(a.text.split()) & set(b.text.split())
    assert _covered(text, ps) == _squash(text)


def test_word_longer_than_max_chars_is_cut_hard():
    text = "x" * 25 + " tail"
    ps = split_passages(text, source="s", max_chars=10, overlap=3)
    assert all(len(p.text) <= 10 for p in ps)
    assert _covered(text, ps) == _squash(text)


def test_whitespace_only_text_gives_no_passages_and_bad_sizes_are_config_errors():
    assert split_passages(" \n\n\t\n", source="s") == []
    assert split_passages("", source="s") == []
    with pytest.raises(ConfigError, match="max_chars"):
        split_passages("a", source="s", max_chars=0)
    with pytest.raises(ConfigError, match="overlap"):
        split_passages("a", source="s", max_chars=10, overlap=10)


# -------------------------------------------------------------------------------------- store


def test_from_paths_reads_nested_folders_sorted_and_filters_suffixes(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a.txt").write_text("apple text", encoding="utf-8")
    (tmp_path / "b" / "c.md").write_text("cherry markdown\n\nsecond paragraph", encoding="utf-8")
    (tmp_path / "b" / "deep" / "d.RST").write_text("durian rst", encoding="utf-8")
    (tmp_path / "b" / "skip.py").write_text("print('no')", encoding="utf-8")
    (tmp_path / ".hidden" / "h.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 bytes")
    extra = tmp_path / "notes.log"
    extra.write_text("explicit log file", encoding="utf-8")

    paths = [tmp_path, str(extra), tmp_path / "a.txt"]  # a.txt twice: read once
    store = DocumentStore.from_paths(paths, max_chars=20, overlap=5)
    names = [p.source.removeprefix(str(tmp_path)) for p in store]
    assert names == ["/a.txt", "/b/c.md", "/b/c.md", "/b/deep/d.RST", "/bad.txt", "/notes.log"]
    assert store[0].text == "apple text"
    assert store[1].text == "cherry markdown"
    assert store[2].text == "second paragraph" and store[2].index == 1
    assert store[4].text == "caf\ufffd bytes"  # undecodable bytes are replaced
    assert len(store.sources) == 5 and len(store) == 6

    only_md = DocumentStore.from_paths([tmp_path], suffixes=["md"])
    assert [p.source for p in only_md] == [str(tmp_path / "b" / "c.md")]


def test_offsets_count_characters_of_the_file_as_written(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes("one\r\n\r\ntwo é\r\n\r\nthree".encode())
    store = DocumentStore.from_paths(f, max_chars=5, overlap=0)
    text = f.read_bytes().decode()
    assert [p.text for p in store] == ["one", "two é", "three"]
    assert all(text[p.start : p.end] == p.text for p in store)


def test_no_documents_is_a_clear_data_error(tmp_path):
    (tmp_path / "x.py").write_text("code", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no passages found in.*" + tmp_path.name):
        DocumentStore.from_paths([tmp_path])
    with pytest.raises(DataError, match="no such file or folder"):
        DocumentStore.from_paths([tmp_path / "missing"])
    with pytest.raises(DataError, match="at least one passage"):
        DocumentStore([])


# ---------------------------------------------------------------------------------- retriever

CORPUS = (
    "The cat sat on the mat.",
    "Dogs chase cats in the garden.",
    "Normalizing flows are invertible neural networks.",
    "Diffusion models add noise and learn to remove it.",
)


def test_document_identical_to_query_is_retrieved_first():
    r = TfidfRetriever(_store(*CORPUS))
    for i, doc in enumerate(CORPUS):
        hits = r.search(doc, k=4)
        assert hits[0].passage.text == doc
        assert hits[0].score == pytest.approx(1.0, abs=1e-12)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        assert all(h.score < 1 - 1e-6 for h in hits[1:])


def test_idf_downweights_a_word_in_every_document():
    r = TfidfRetriever(_store("the cat", "the dog", "the fish"), sublinear_tf=False)
    voc = r.vocabulary
    assert r.idf[voc["the"]].item() == pytest.approx(1.0)  # ln(4/4) + 1
    assert r.idf[voc["cat"]].item() == pytest.approx(math.log(4 / 2) + 1)
    dense = r.matrix.to_dense()
    assert dense[0, voc["the"]] < dense[0, voc["cat"]]
    assert torch.allclose(torch.linalg.vector_norm(dense, dim=1), torch.ones(3, dtype=dense.dtype))

    hits = r.search("the", k=5)  # the common word alone cannot tell the passages apart
    assert [h.passage.source for h in hits] == ["doc0", "doc1", "doc2"]  # ties: store order
    assert hits[0].score == hits[1].score == hits[2].score > 0
    assert r.search("the dog")[0].passage.text == "the dog"


def test_sublinear_tf_dampens_repeated_words():
    docs = ("apple apple apple apple banana", "cherry")
    for sublinear, tf in [(True, 1 + math.log(4)), (False, 4.0)]:
        r = TfidfRetriever(_store(*docs), sublinear_tf=sublinear)
        row = r.matrix.to_dense()[0]
        voc = r.vocabulary
        # apple and banana have the same df, hence the same idf: the ratio is the tf ratio
        assert (row[voc["apple"]] / row[voc["banana"]]).item() == pytest.approx(tf)
    raw = TfidfRetriever(_store(*docs), sublinear_tf=False).search("banana")[0].score
    damped = TfidfRetriever(_store(*docs), sublinear_tf=True).search("banana")[0].score
    assert damped > raw  # the repeated word dominates the passage less


def test_empty_or_unknown_query_gives_no_hits_and_k_limits():
    r = TfidfRetriever(_store(*CORPUS))
    assert r.search("") == []
    assert r.search("?!  ...") == []
    assert r.search("zebra quantum") == []
    assert len(r.search("the", k=1)) == 1
    assert all(h.score > 0 for h in r.search("the cat noise", k=10))
    with pytest.raises(ConfigError, match="k must be"):
        r.search("cat", k=0)
    with pytest.raises(ConfigError, match="ngram"):
        TfidfRetriever(_store("a"), ngram=0)


def test_ngrams_and_tokenizer():
    assert tokenize("New-York, new YORK!", ngram=2) == [
        "new", "york", "new", "york", "new york", "york new", "new york",
    ]  # fmt: skip
    r = TfidfRetriever(_store("new york city", "york new city"), ngram=2)
    hits = r.search("new york")
    assert hits[0].passage.source == "doc0" and hits[0].score > hits[1].score
    flat = TfidfRetriever(_store("new york city", "york new city"))
    a, b = flat.search("new york")
    assert a.score == pytest.approx(b.score)


# ------------------------------------------------------------------------------------- prompt


def _hits(*texts: str) -> list[Hit]:
    return [Hit(Passage("s", i, 0, t), 1.0 / (i + 1), i + 1) for i, t in enumerate(texts)]


def test_prompt_holds_passages_in_rank_order_when_they_fit():
    hits = _hits("first passage", "second passage")
    prompt = build_prompt("why?", list(reversed(hits)), max_chars=1000)
    assert prompt == "first passage\n\nsecond passage\n\nQuestion: why?\nAnswer:"


def test_prompt_is_cut_from_the_lowest_ranked_passage():
    hits = _hits(("top " * 10).strip(), ("middle words here " * 5).strip(), "bottom " * 20)
    query = "what is on top?"
    full = build_prompt(query, hits, max_chars=10_000)
    for max_chars in range(len("\n\nQuestion: \nAnswer:") + len(query), len(full) + 5):
        prompt = build_prompt(query, hits, max_chars=max_chars)
        assert len(prompt) <= max_chars
        assert prompt.endswith(f"Question: {query}\nAnswer:")  # the query is kept whole
        context = prompt[: -len(f"\n\nQuestion: {query}\nAnswer:")]
        assert full.startswith(context)  # only the end of the context is cut
        if len(context) >= len(hits[0].passage.text):
            assert context.startswith(hits[0].passage.text)
        if max_chars >= len(full):
            assert prompt == full


def test_overlong_query_keeps_its_end_and_bad_templates_fail():
    query = "x" * 50 + "END"
    prompt = build_prompt(query, _hits("context"), max_chars=30, template="{context}{query}")
    assert prompt == query[-30:]
    prompt = build_prompt(query, _hits("context"), max_chars=40)
    assert len(prompt) == 40 and prompt.endswith("END\nAnswer:")
    with pytest.raises(ConfigError, match="shorter than the template"):
        build_prompt("q", [], max_chars=5)
    with pytest.raises(ConfigError, match="context"):
        build_prompt("q", [], max_chars=100, template="{query} only")
    with pytest.raises(ConfigError, match="template"):
        build_prompt("q", [], max_chars=100, template="{context} {query} {other}")


def test_retrieve_then_prompt_end_to_end(tmp_path):
    (tmp_path / "flows.md").write_text(CORPUS[2] + "\n\n" + CORPUS[3], encoding="utf-8")
    (tmp_path / "pets.txt").write_text(CORPUS[0] + "\n\n" + CORPUS[1], encoding="utf-8")
    store = DocumentStore.from_paths([tmp_path], max_chars=52, overlap=10)
    assert len(store) == 4
    hits = TfidfRetriever(store).search("what are normalizing flows?", k=2)
    prompt = build_prompt("what are normalizing flows?", hits, max_chars=200)
    assert prompt.startswith(CORPUS[2]) and len(prompt) <= 200


def test_generator_fits_the_prompt_into_the_context_and_continues_it(tmp_path) -> None:
    import torch

    from dgm.core.registry import build_model
    from dgm.core.sampling import Sampling
    from dgm.core.spec import DataKind, DataSpec
    from dgm.data.tokenizers import CharTokenizer
    from dgm.rag import RetrievalAugmentedGenerator

    (tmp_path / "a.txt").write_text("The owl hunts at night.\n\nCats sleep all day long.")
    (tmp_path / "b.txt").write_text("Bread needs flour, water and salt.")
    retriever = TfidfRetriever(DocumentStore.from_paths([tmp_path], max_chars=40, overlap=5))
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyzTCBQA .,:?\n")
    torch.manual_seed(0)
    model = build_model("gpt", DataSpec((80,), DataKind.TOKENS, num_levels=tok.vocab_size),
                        {"hidden": 16, "num_layers": 1, "num_heads": 2}).eval()
    rag = RetrievalAugmentedGenerator(retriever, model, tok)
    ans = rag.answer("when does the owl hunt?", k=2, max_new_tokens=8,
                     sampling=Sampling(temperature=0.0))
    assert ans.hits[0].passage.text.startswith("The owl")
    budget = 80 - 1 - 8
    assert len(tok.encode(ans.prompt)) <= budget
    assert ans.prompt.startswith("The owl hunts at night.")
    assert ans.prompt.endswith("Question: when does the owl hunt?\nAnswer:")
    assert len(ans.text) == 8
