"""lmkit.tokenizer against independent references: tiktoken and Hugging Face's GPT-2 tokenizer."""

import json
import random

import pytest
import tiktoken
from hypothesis import given
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
