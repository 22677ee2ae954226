"""Character and byte-level BPE tokenizers: round trips, training, files, errors."""

import json

import pytest

from dgm.core.errors import ConfigError, DataError
from dgm.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    save_tokenizer,
    split_chunks,
    tokenizer_from_dict,
)

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n\n"
    "The slings and arrows of outrageous fortune, 1599 times.\n"
) * 20
UNICODE = "Grüße aus Köln! naïve café, 東京 ☃ e\u0301 — done_now\t\t42\n"


def test_char_round_trip_and_vocabulary():
    tok = CharTokenizer.from_text(TEXT)
    assert isinstance(tok, Tokenizer)
    assert tok.chars == "".join(sorted(set(TEXT))) and tok.vocab_size == len(set(TEXT))
    assert tok.end_token is None
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT) and tok.decode(ids) == TEXT
    assert sum(tok.token_lengths(ids)) == len(TEXT)


def test_char_end_token_is_the_last_id_and_decodes_to_nothing():
    tok = CharTokenizer.from_text("cab", end=True)
    assert tok.chars == "abc" and tok.vocab_size == 4 and tok.end_token == 3
    assert tok.encode("cab") == [2, 0, 1]
    assert tok.decode([2, 3, 0, 3, 3]) == "ca"
    assert tok.token_lengths([2, 3, 0]) == [1, 0, 1]


def test_char_unknown_characters_are_listed():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError) as info:
        tok.encode("abxyzx\u00e9")
    text = str(info.value)
    assert "4 character(s)" in text and "5 occurrence(s)" in text
    assert "'x'" in text and "'é'" in text and "vocabulary of 3" in text


def test_char_rejects_bad_alphabets_and_ids():
    with pytest.raises(ConfigError):
        CharTokenizer("")
    with pytest.raises(ConfigError, match="repeat"):
        CharTokenizer("aba")
    with pytest.raises(DataError, match="0..2"):
        CharTokenizer("abc").decode([0, 3])


def test_chunks_rebuild_the_text():
    for text in (TEXT, UNICODE, "  a\n\n  b__c,,d  \r\n"):
        assert "".join(split_chunks(text)) == text
    assert split_chunks("hi  there, 123!") == ["hi", " ", " there", ",", " 123", "!"]


def test_bpe_with_256_ids_is_raw_bytes():
    tok = BPETokenizer.train(TEXT, 256)
    assert tok.merges == [] and tok.vocab_size == 256
    assert tok.encode(UNICODE) == list(UNICODE.encode("utf-8"))


def test_bpe_round_trip_and_merges_shorten_repetitive_text():
    tok = BPETokenizer.train(TEXT, 300)
    assert isinstance(tok, Tokenizer) and tok.vocab_size == 300
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < 0.6 * len(TEXT.encode("utf-8"))
    assert max(ids) >= 256
    # Anything encodes (byte fallback), non-ASCII included, and decodes back.
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    trained_on_unicode = BPETokenizer.train(UNICODE * 5, 280)
    assert trained_on_unicode.decode(trained_on_unicode.encode(UNICODE + TEXT)) == UNICODE + TEXT


def test_bpe_is_deterministic_and_breaks_ties_by_the_smallest_pair():
    a, b = BPETokenizer.train(TEXT, 290), BPETokenizer.train(TEXT, 290)
    assert a.merges == b.merges
    # (" ", "a"), ("a", "b") and ("c", "d") all occur twice: the smallest pair is merged first.
    tok = BPETokenizer.train("cd ab cd ab", 257)
    assert tok.merges == [(ord(" "), ord("a"))]
    assert BPETokenizer.train("cd ab cd ab", 258).merges[1] == (ord("c"), ord("d"))
    # A tiny text runs out of pairs: training stops with a smaller vocabulary.
    assert BPETokenizer.train("abab", 1000).vocab_size == 256 + 2


def test_bpe_end_token_and_character_counts():
    tok = BPETokenizer.train(UNICODE * 3, 270, end=True)
    assert tok.vocab_size == 270 and tok.end_token == 269
    ids = tok.encode(UNICODE)
    assert tok.decode(ids + [tok.end_token]) == UNICODE
    lengths = tok.token_lengths(ids + [tok.end_token])
    assert lengths[-1] == 0 and sum(lengths) == len(UNICODE)  # characters, not bytes
    assert tok.token_bytes(tok.end_token) == b""
    # A sequence cut inside a multi-byte character decodes with a replacement character.
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"
    with pytest.raises(ConfigError, match="at least 257"):
        BPETokenizer.train(TEXT, 256, end=True)


def test_dict_and_file_round_trips(tmp_path):
    for tok in (
        CharTokenizer.from_text(UNICODE, end=True),
        BPETokenizer.train(TEXT, 280),
        BPETokenizer.train(UNICODE, 260, end=True),
    ):
        d = tok.to_dict()
        assert json.loads(json.dumps(d)) == d and d["type"] in ("char", "bpe")
        again = tokenizer_from_dict(d)
        assert type(again) is type(tok) and again.to_dict() == d
        assert again.vocab_size == tok.vocab_size and again.end_token == tok.end_token
        path = save_tokenizer(tok, tmp_path / f"{d['type']}.json")
        loaded = load_tokenizer(path)
        assert loaded.encode(UNICODE) == tok.encode(UNICODE)


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "kind.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(DataError, match="unknown tokenizer type"):
        load_tokenizer(tmp_path / "kind.json")
    with pytest.raises(DataError, match="corrupt bpe"):
        tokenizer_from_dict({"type": "bpe"})
    with pytest.raises(DataError, match="not yet defined"):
        tokenizer_from_dict({"type": "bpe", "merges": [[0, 300]]})


def test_char_encode_can_drop_unknown_characters() -> None:
    from dgm.data.tokenizers import CharTokenizer

    tok = CharTokenizer("abc ")
    assert tok.decode(tok.encode("a b\u00e9c!", errors="ignore")) == "a bc"


def test_decode_sequence_stops_at_the_first_end_token() -> None:
    from dgm.data.tokenizers import CharTokenizer, decode_sequence

    tok = CharTokenizer("ab", end=True)
    assert decode_sequence(tok, [0, 1, 2, 0, 2]) == "ab"
    assert decode_sequence(tok, [1, 0]) == "ba"
