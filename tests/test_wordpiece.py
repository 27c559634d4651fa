"""WordPiece (chapter 10) against Hugging Face's `BertTokenizer` built from the same vocab.txt."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizer

from lmkit.data import play, plays
from lmkit.pretrained import minilm_path
from lmkit.tokenizer import WordPieceTokenizer
from lmkit.wordpiece import basic_tokenize, is_punctuation, wordpiece

FOLDER = minilm_path()


@pytest.fixture(scope="module")
def ours():
    return WordPieceTokenizer.load(FOLDER)


@pytest.fixture(scope="module")
def theirs():
    return BertTokenizer(str(FOLDER / "vocab.txt"))  # only the vocabulary: the defaults are BERT's


@pytest.fixture(scope="module")
def theirs_folder():
    return BertTokenizer.from_pretrained(str(FOLDER))  # with tokenizer_config.json


VARIED = [
    "",
    " ",
    "Hello, World!",
    "Héllo wörld, naïve café, Ångström, Ünïcödé, ÀÉÎÕÜ",
    "don't stop, I'm here. We're off -- they've gone; 'tis so?",
    "$100 + <tag> ^_^ ~`| a@b.c #hash & 50% {x} [y] (z)",
    "日本語のテキスト 你好世界 한국어 ｶﾀｶﾅ 㐀𠀀",
    "emoji 🙂👍🏽 and ❤️ and 🇫🇷 flags",
    "antidisestablishmentarianism " + "supercalifragilistic" * 4,
    "a" * 100,
    "a" * 101,
    "tab\there\nnew\r\nline\u2028sep\u00a0nbsp\u3000ideographic space",
    "control\x00\x07\x1f\x7f\ufffd\u200b\u200dchars",
    "İstanbul ǅungla straße ﬁnal ΣΊΣΥΦΟΣ",
    "a[MASK]b [mask] [CLS] x [SEP][PAD][UNK]",
    "numbers 3.14159 1,000,000 2nd 42nd",
    "   leading and trailing spaces   ",
    "\u0301 combining mark alone, e\u0301 decomposed",
]


@pytest.mark.parametrize("text", VARIED)
def test_ids_equal_hf_on_varied_text(ours, theirs, theirs_folder, text):
    want = theirs(text)["input_ids"]
    assert ours.encode(text) == want
    assert theirs_folder(text)["input_ids"] == want
    assert ours.encode(text, add_special_tokens=False) == theirs(
        text, add_special_tokens=False)["input_ids"]
    assert ours.tokenize(text) == theirs.tokenize(text)


@pytest.mark.parametrize("text", VARIED)
def test_decode_equals_hf(ours, theirs_folder, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == theirs_folder.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == theirs_folder.decode(
        ids, skip_special_tokens=True)


def test_ids_equal_hf_on_shakespeare(ours, theirs):
    for name in plays()[:3]:
        text = play(name)
        assert ours.encode(text) == theirs(text)["input_ids"], name
        lines = text.split("\n")[:300]
        assert [ours.encode(line) for line in lines] == theirs(lines)["input_ids"], name


# characters from every corner: letters with accents, CJK, punctuation, symbols, controls,
# spaces of all kinds, combining marks, emoji, and the special tokens themselves. Left out:
# code points unassigned in Python's Unicode database (category Cn), which the Rust tokenizer's
# newer Unicode tables may know as letters (e.g. U+18CD6, Khitan): a version gap, not a rule.
TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cn"]),
        st.sampled_from(list("aeiouAEIOU éÉñ' .,!?-$") + ["[MASK]", "[CLS]", "##", "ing", "\u0301"]),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500)
@given(text=TEXT)
def test_property_ids_equal_hf(ours, theirs, text):
    assert ours.encode(text) == theirs(text)["input_ids"]


@given(ids=st.lists(st.integers(0, 30521), max_size=30))
def test_property_decode_equals_hf(ours, theirs_folder, ids):
    assert ours.decode(ids) == theirs_folder.decode(ids)


def test_greedy_longest_match_first_on_a_toy_vocabulary(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "una", "##aff", "##able",
             "##ffable", "##a", "##b", "##l", "##e", "a", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    toy = WordPieceTokenizer.load(tmp_path)
    hf = BertTokenizer(str(tmp_path / "vocab.txt"))
    # "una" is the longest prefix, then "##ffable" (not "##aff" + ...): greedy, not optimal
    assert wordpiece("unaffable", toy.vocab) == ["una", "##ffable"]
    assert wordpiece("unx", toy.vocab) == ["[UNK]"]  # no piece for "x": the whole word
    assert wordpiece("a" * 5, toy.vocab, max_chars=4) == ["[UNK]"]
    for text in ["Unaffable!", "unable", "una unx", "aaa"]:
        assert toy.encode(text) == hf(text)["input_ids"], text
    assert toy.tokenize("unaffable!") == ["una", "##ffable", "!"]


def test_basic_tokenize_steps():
    assert basic_tokenize("Héllo,WORLD!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo", lower=False) == ["Héllo"]
    assert basic_tokenize("Héllo", lower=False, strip_accents=True) == ["Hello"]
    assert basic_tokenize("你好") == ["你", "好"]
    assert basic_tokenize("你好", split_cjk=False) == ["你好"]
    assert is_punctuation("$") and is_punctuation("¿") and not is_punctuation("a")


def test_load_and_decode_errors(tmp_path, ours):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordPieceTokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="token id 30522 is out of range"):
        ours.decode([101, 30522])
    with pytest.raises(TypeError, match="expected text as a str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match=r"special tokens \['\[MASK\]'\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id, ours.unk_id) == (
        101, 102, 0, 103, 100)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_max_chars_per_word_must_be_a_positive_integer(ours, bad):
    """0 or less made every word [UNK] without a word of warning."""
    with pytest.raises(ValueError, match=r"max_chars_per_word must be a positive integer"):
        WordPieceTokenizer(ours.tokens, max_chars_per_word=bad)


def test_the_word_cache_stays_bounded(ours):
    """Every distinct word of a corpus used to stay in the cache for the tokenizer's life."""
    tok = WordPieceTokenizer(ours.tokens)
    tok.encode(" ".join(f"w{i}" for i in range(tok.CACHE_WORDS + 500)))
    assert len(tok._pieces) <= tok.CACHE_WORDS
    assert tok.encode("w1 w2") == ours.encode("w1 w2")


def test_load_names_a_file_given_for_the_folder_and_a_broken_config(tmp_path, ours):
    (tmp_path / "vocab.txt").write_text("\n".join(ours.tokens) + "\n", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=r"is a file.*the folder that holds vocab.txt"):
        WordPieceTokenizer.load(tmp_path / "vocab.txt")  # was ".../vocab.txt/vocab.txt not found"
    (tmp_path / "tokenizer_config.json").write_text("{do_lower_case: true", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config.json is not valid JSON"):
        WordPieceTokenizer.load(tmp_path)
