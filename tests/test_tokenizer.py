"""lmkit.tokenizer against independent references: tiktoken and Hugging Face's GPT-2 tokenizer."""

import json
import random

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2TokenizerFast

from lmkit import data
from lmkit.tokenizer import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    bytes_to_unicode,
    get_stats,
    merge,
)

SPECIAL = "<|endoftext|>"
VARIED = [
    "",
    "hello world",
    "Hello, World! It's a dog's life; we'll see, you're right, I'd've, they've.",
    "naïve café, crème brûlée, Ångström, façade, jalapeño",
    "日本語のテキスト、中文字符和한국어",
    "emoji 🤗🎉👩‍👩‍👧‍👦 and flags 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindented\twith\ttabs",
    "   leading spaces, trailing spaces   ",
    "many\n\n\n\nnewlines\r\nwindows line\r\nend",
    "numbers 3.14159 1,000,000 2026-11-23 0x1F",
    "mixed\u00a0nbsp\u2003em-space\u200bzero-width",
    f"text with {SPECIAL} special {SPECIAL}{SPECIAL} tokens",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return data.shakespeare()


@pytest.fixture(scope="module")
def tok(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus[:300_000], 600, special_tokens=[SPECIAL])


@pytest.fixture(scope="module")
def tiktoken_enc(tok) -> tiktoken.Encoding:
    ranks = {tok.vocab[i]: i for i in tok.vocab if i not in tok.special_tokens.values()}
    return tiktoken.Encoding(
        "lmkit-test", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
        special_tokens=tok.special_tokens,
    )


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory) -> GPT2TokenizerFast:
    folder = tmp_path_factory.mktemp("gpt2tok")
    tok.save(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    return GPT2TokenizerFast(vocab=vocab, merges=[tuple(line.split(" ")) for line in lines])


def test_get_stats_counts_overlapping_pairs():
    assert get_stats([1, 1, 1]) == {(1, 1): 2}
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([]) == {} and get_stats([4]) == {}


def test_merge_is_left_to_right_without_overlap():
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([3, 4], (4, 5), 9) == [3, 4]


def test_bytes_to_unicode_is_gpt2_byte_map():
    m = bytes_to_unicode()
    assert len(m) == 256 and len(set(m.values())) == 256
    assert m[ord("!")] == "!" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ"


def test_train_layout_bytes_then_merges_then_specials(tok):
    assert tok.vocab_size == 600
    assert all(tok.vocab[i] == bytes([i]) for i in range(256))
    assert list(tok.merges.values()) == list(range(256, 599))
    assert tok.special_tokens == {SPECIAL: 599}


def test_first_merge_is_the_most_frequent_pair(corpus):
    text = corpus[:50_000]
    tok = BPETokenizer.train(text, 257, pattern=None)
    counts = get_stats(text.encode("utf-8"))
    best = max(counts.values())
    assert list(tok.merges) == [min(p for p, c in counts.items() if c == best)]


def test_incremental_training_equals_recounting_every_merge(corpus):
    """The fast trainer must learn exactly the merges of the textbook algorithm."""
    import regex

    text = corpus[:20_000]
    words = [list(w.encode("utf-8")) for w in regex.findall(GPT2_SPLIT_PATTERN, text)]
    merges = {}
    for new_id in range(256, 256 + 60):
        stats = {}
        for w in words:
            get_stats(w, stats)
        pair = min(stats, key=lambda p: (-stats[p], p))
        merges[pair] = new_id
        words = [merge(w, pair, new_id) for w in words]
    assert BPETokenizer.train(text, 256 + 60).merges == merges


@pytest.mark.parametrize("text", VARIED)
def test_encode_equals_tiktoken(tok, tiktoken_enc, text):
    assert tok.encode(text) == tiktoken_enc.encode(text, allowed_special="all")


@pytest.mark.parametrize("text", VARIED)
def test_encode_equals_hf_gpt2_tokenizer_from_saved_files(tok, hf_tok, text):
    assert tok.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"]


def test_whole_corpus_equals_tiktoken_and_hf(tok, tiktoken_enc, hf_tok, corpus):
    ids = tok.encode(corpus)
    assert ids == tiktoken_enc.encode(corpus, allowed_special="all")
    part = corpus[-200_000:]
    assert tok.encode(part) == hf_tok(part, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == corpus


@given(st.text(max_size=200))
def test_encode_equals_tiktoken_on_any_text(tok, tiktoken_enc, text):
    assert tok.encode_ordinary(text) == tiktoken_enc.encode_ordinary(text)


@given(st.text(max_size=300))
def test_decode_encode_round_trip_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


@given(st.text(max_size=100))
def test_byte_tokenizer_round_trip(text):
    bt = ByteTokenizer()
    assert bt.decode(bt.encode(text)) == text


def test_char_tokenizer_round_trip_and_unknown_character():
    ct = CharTokenizer("hello world")
    assert ct.decode(ct.encode("hello")) == "hello"
    assert ct.vocab_size == len(set("hello world"))
    with pytest.raises(ValueError, match="'z' was not in the text"):
        ct.encode("zebra")


def test_save_load_round_trip(tok, tmp_path, corpus):
    tok.save(tmp_path)
    loaded = BPETokenizer.load(tmp_path)
    assert loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens
    text = corpus[:20_000] + SPECIAL + VARIED[4]
    assert loaded.encode(text) == tok.encode(text)


def test_load_real_gpt2_layout(tmp_path):
    """GPT-2's files number bytes in bytes_to_unicode order, not 0-255: load must follow the ids."""
    chars = list(bytes_to_unicode().values())
    order = sorted(range(256), key=lambda b: chars[b])  # a permutation, like GPT-2's vocab.json
    vocab = {chars[b]: i for i, b in enumerate(order)}
    m = bytes_to_unicode()
    vocab[m[ord("h")] + m[ord("i")]] = 256
    vocab[m[ord(" ")] + m[ord("h")] + m[ord("i")]] = 257
    vocab[SPECIAL] = 258
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh i\nĠ hi\n", encoding="utf-8")
    t = BPETokenizer.load(tmp_path)
    assert t.special_tokens == {SPECIAL: 258}
    ids = t.encode("hi hi!" + SPECIAL)
    assert ids == [256, 257, vocab["!"], 258]
    assert t.decode(ids) == "hi hi!" + SPECIAL
    hf = GPT2TokenizerFast(vocab=vocab, merges=[("h", "i"), ("Ġ", "hi")])
    assert hf("hi hi!", add_special_tokens=False)["input_ids"] == ids[:3]


def test_encode_random_bytes_text_matches_tiktoken(tiktoken_enc, tok):
    rng = random.Random(0)
    text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x3000)]))
                   for _ in range(5000))
    assert tok.encode(text) == tiktoken_enc.encode(text, allowed_special="all")


def test_vocab_size_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 256.*= 258"):
        BPETokenizer.train("abc", 257, special_tokens=["<a>", "<b>"])


def test_decode_out_of_range_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="token id 600 is out of range.*0..599"):
        tok.decode([1, 600])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        ByteTokenizer().decode([-1])


@pytest.mark.parametrize(
    ("vocab", "merges", "message"),
    [
        ("{not json", "#version: 0.2\n", "not valid JSON"),
        ('{"a": "x"}', "#version: 0.2\n", "non-negative integer ids"),
        ('{"a": 1}', "#version: 0.2\n", "no token for the single byte"),
        (None, "#version: 0.2\na b c\n", "line 2: expected two tokens"),
        (None, "#version: 0.2\nq zz\n", "line 2: token 'zz' is not in vocab.json"),
    ],
)
def test_malformed_files_are_clear_errors(tmp_path, vocab, merges, message):
    if vocab is None:
        vocab = json.dumps({c: b for b, c in bytes_to_unicode().items()})
    (tmp_path / "vocab.json").write_text(vocab, encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(tmp_path)


def test_load_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        BPETokenizer.load(tmp_path / "nope")


def test_load_refuses_a_single_string_as_special_tokens(special_tok, tmp_path):
    special_tok.save(tmp_path)
    with pytest.raises(TypeError, match=r"list of strings, got the str '<\|endoftext\|>'.*"
                                        r"special_tokens=\['<\|endoftext\|>'\]"):
        BPETokenizer.load(tmp_path, special_tokens=SPECIAL)
    loaded = BPETokenizer.load(tmp_path, special_tokens=SPECIALS)  # a list is what it takes
    assert loaded.special_tokens == special_tok.special_tokens


# ----------------------------------------------------------------------------- special tokens in training

SPECIALS = [SPECIAL, "<|end|>", "<|end|>!"]  # the third starts with the second


def documents_with_specials(corpus: str, n: int = 60) -> str:
    """Short documents (no '<', '|', '>' of their own) joined by special tokens."""
    plain = corpus[:40_000].replace("<", "").replace("|", "").replace(">", "")
    docs = [plain[i * 600 : (i + 1) * 600] for i in range(n)]
    joins = [SPECIALS[i % len(SPECIALS)] for i in range(n)]
    return "".join(d + j for d, j in zip(docs, joins))


@pytest.fixture(scope="module")
def special_tok(corpus) -> BPETokenizer:
    return BPETokenizer.train(documents_with_specials(corpus), 420, special_tokens=SPECIALS)


def test_training_never_merges_into_or_across_special_tokens(special_tok):
    """The documents contain no '<', '|' or '>' of their own: an ordinary token with one of
    these bytes was learned inside a special token or across a document boundary (b'.<')."""
    specials = set(special_tok.special_tokens.values())
    ordinary = [special_tok.vocab[i] for i in special_tok.merges.values() if i not in specials]
    assert len(ordinary) == 420 - 256 - len(SPECIALS)
    crossing = [t for t in ordinary if set(t) & set(b"<|>")]
    assert crossing == []


def test_every_learned_merge_is_used_when_encoding_the_training_text(special_tok, corpus):
    text = documents_with_specials(corpus)
    ids = special_tok.encode(text)
    unused = set(special_tok.merges.values()) - set(ids)
    # a merge whose token is always merged further is still used: walk the merge tree down
    parts = {new: pair for pair, new in special_tok.merges.items()}
    used, todo = set(), list(set(ids))
    while todo:
        i = todo.pop()
        if i in parts and i not in used:
            used.add(i)
            todo.extend(parts[i])
    assert unused - used == set()
    assert ids.count(special_tok.special_tokens[SPECIAL]) == 20


# ----------------------------------------------------------------------------- streaming


@given(
    st.lists(st.sampled_from(["the", " cat", "'s", "'ll", "  ", "\n", "\n\n", " ", "42", "!",
                              "é", "🤗", "<|", "end", "|>", "!", *SPECIALS]), max_size=40),
    st.lists(st.integers(0, 400), max_size=8),
)
def test_encode_iterable_equals_encode_for_any_chunking(special_tok, words, cuts):
    """Chunk boundaries anywhere (inside a word, inside a special token) change no id."""
    text = "".join(words)
    cuts = sorted(min(c, len(text)) for c in cuts)
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(special_tok.encode_iterable(chunks)) == special_tok.encode(text)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPECIALS)), max_size=12),
       st.lists(st.integers(0, 200), max_size=10))
def test_encode_iterable_equals_encode_on_any_unicode(special_tok, parts, cuts):
    text = "".join(parts)
    cuts = sorted(min(c, len(text)) for c in cuts)
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(special_tok.encode_iterable(chunks)) == special_tok.encode(text)


def test_encode_iterable_on_a_file_character_by_character(special_tok, corpus, tmp_path):
    text = documents_with_specials(corpus, n=6)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    with open(tmp_path / "t.txt", encoding="utf-8") as f:
        assert list(special_tok.encode_iterable(f)) == special_tok.encode(text)
    assert list(special_tok.encode_iterable(iter(text))) == special_tok.encode(text)


def test_encode_iterable_is_lazy_and_holds_little_text(tok):
    """A million lines: the first ids come before the input ends, the buffer stays small."""
    held = []

    def lines():
        for i in range(1_000_000):
            yield f"line {i}: to be, or not to be\n"
            held.append(i)

    stream = tok.encode_iterable(lines())
    first = [next(stream) for _ in range(50)]
    assert len(held) < 20  # only a few lines were read to produce 50 ids
    assert first == tok.encode("".join(f"line {i}: to be, or not to be\n" for i in range(20)))[:50]
    frame = stream.gi_frame.f_locals
    assert len(frame["buffer"]) + sum(map(len, frame["pending"])) < 200


@pytest.mark.parametrize("long_piece", ["a" * 6000, " " * 6000, "é" * 6000])
def test_encode_iterable_scans_a_long_piece_in_linear_time(tok, monkeypatch, long_piece):
    """A piece that keeps growing (one long word, a run of spaces) fed one character at a time:
    the text is not rescanned from its start for every chunk (that was quadratic)."""
    text = "to be, " + long_piece + " or not to be\n" * 50
    scanned = []
    real = type(tok)._encode_finished

    def counting(self, buffer, hold):
        scanned.append(len(buffer))
        return real(self, buffer, hold)

    monkeypatch.setattr(type(tok), "_encode_finished", counting)
    assert list(tok.encode_iterable(iter(text))) == tok.encode(text)
    assert sum(scanned) <= 3 * len(text)  # linear: each character scanned a few times at most


def test_encode_iterable_rejects_bytes(tok):
    with pytest.raises(TypeError, match="chunks of text.*bytes.*text mode"):
        list(tok.encode_iterable([b"abc"]))


# ----------------------------------------------------------------------------- loading is strict


def test_truncated_merges_is_an_error_naming_both_files_and_the_token(tok, tmp_path):
    tok.save(tmp_path)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "merges.txt").write_text("\n".join(lines[:-10]) + "\n", encoding="utf-8")
    first_lost = "".join(bytes_to_unicode()[b] for b in tok.vocab[599 - 10])
    with pytest.raises(ValueError) as e:
        BPETokenizer.load(tmp_path)
    msg = str(e.value)
    assert "vocab.json" in msg and "merges.txt" in msg and "truncated" in msg
    assert f"{first_lost!r} (id {599 - 10})" in msg


def test_special_tokens_only_from_a_list_or_gpt2_convention(corpus, tmp_path):
    trained = BPETokenizer.train(documents_with_specials(corpus, n=10), 300,
                                 special_tokens=SPECIALS)
    trained.save(tmp_path)
    assert BPETokenizer.load(tmp_path).special_tokens == trained.special_tokens  # saved list
    (tmp_path / "special_tokens.json").unlink()
    with pytest.raises(ValueError, match=r"'<\|end\|>' \(id 298\).*special_tokens=\["):
        BPETokenizer.load(tmp_path)  # only <|endoftext|> is assumed
    given_list = BPETokenizer.load(tmp_path, special_tokens=SPECIALS)
    assert given_list.special_tokens == trained.special_tokens
    with pytest.raises(ValueError, match=r"special token '<\|nope\|>' is not in .*vocab.json"):
        BPETokenizer.load(tmp_path, special_tokens=["<|nope|>"])


def test_merge_listed_before_its_parts_is_an_error(tmp_path):
    m = bytes_to_unicode()
    vocab = {c: b for b, c in m.items()}
    vocab.update({"hi": 256, "hi!": 257})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nhi !\nh i\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt line 2 merges 'hi', which is not a byte"):
        BPETokenizer.load(tmp_path)


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt"])
def test_non_utf8_file_is_a_value_error_naming_it(tok, tmp_path, name):
    tok.save(tmp_path)
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes() + b"\xff\xfe")
    with pytest.raises(ValueError, match=rf"{name} is not valid UTF-8"):
        BPETokenizer.load(tmp_path)


def test_saved_files_are_readable_by_everyone(tok, tmp_path):
    tok.save(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
