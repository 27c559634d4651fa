"""WordPiece: BERT's tokenizer (chapter 10), a second algorithm beside chapter 01's BPE.

Two stages, with Hugging Face `BertTokenizer`'s meaning:

1. basic tokenisation (`basic_tokenize`): drop control characters, turn every kind of space
   into " ", put spaces around CJK ideographs, strip accents (NFD, then drop the combining
   marks) and lower-case, split on whitespace, then cut every punctuation character out as a
   word of its own.
2. WordPiece (`wordpiece`): each word is cut greedily, longest match first, into pieces of the
   vocabulary; a piece that does not start the word is spelled with a `##` prefix. A word with
   no full cut (or longer than `max_chars_per_word`) becomes the single token `[UNK]`.

BPE builds a word bottom-up by replaying merges learned in order; WordPiece only needs the
vocabulary and reads the word top-down, longest prefix first.

Special tokens written in the text, such as "[MASK]", stay one token (as in Hugging Face).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from lmkit.io import read_json, read_text

__all__ = ["WordPieceTokenizer", "basic_tokenize", "wordpiece", "is_punctuation"]

SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}

# CJK Unified Ideographs and their extensions: each ideograph is a word of its own
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def is_punctuation(ch: str) -> bool:
    """ASCII symbols ($, +, <, ^, ...) count as punctuation too, as in BERT."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _normalize(text: str, lower: bool, strip_accents: bool, split_cjk: bool) -> str:
    out = []
    for ch in text:
        if ch == "\0" or ch == "\ufffd" or _is_control(ch):
            continue  # control characters are dropped
        if _is_whitespace(ch):
            out.append(" ")
        elif split_cjk and _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = "".join(out)
    if strip_accents:  # é = e + combining acute (NFD); drop the combining marks (category Mn)
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    # one character at a time, as Hugging Face does: no final-sigma rule (Σ -> σ, never ς)
    return "".join(c.lower() for c in text) if lower else text


def basic_tokenize(
    text: str, lower: bool = True, strip_accents: bool | None = None, split_cjk: bool = True
) -> list[str]:
    """Text -> words: clean, lower-case, strip accents, split on spaces and punctuation.

    `strip_accents=None` strips them exactly when lower-casing (BERT uncased).
    """
    strip = lower if strip_accents is None else strip_accents
    words = []
    for chunk in _normalize(text, lower, strip, split_cjk).split():
        word = ""
        for ch in chunk:
            if is_punctuation(ch):  # every punctuation character is a word of its own
                if word:
                    words.append(word)
                words.append(ch)
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    return words


def wordpiece(
    word: str, vocab: dict[str, int] | set[str], unk: str = "[UNK]", max_chars: int = 100
) -> list[str]:
    """Greedy longest-match-first: the longest vocabulary prefix, then the longest `##` piece
    of what is left, and so on. No cut at some point, or a too long word: [unk]."""
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:  # try the longest candidate first, shrink by one character
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # not even one character matched: the whole word is unknown
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def _read_json(path: Path) -> dict:
    """An optional JSON settings file of a tokenizer folder: {} when absent."""
    if not path.is_file():
        return {}
    d = read_json(path, "restore the file or remove it")
    if not isinstance(d, dict):
        raise ValueError(f"{path} should hold a JSON object, not a {type(d).__name__}")
    return d


# what Hugging Face's WordPiece decoder does to each token (with its leading space)
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class WordPieceTokenizer:
    """BERT's tokenizer: `basic_tokenize`, then `wordpiece` per word (chapter 10).

    `encode(text)` gives [CLS] ids [SEP] (without them with `add_special_tokens=False`);
    `decode(ids)` joins the tokens back, gluing `##` pieces to the piece before them.
    """

    CACHE_WORDS = 50_000  # words whose pieces are remembered; the cache starts over beyond

    def __init__(
        self,
        vocab: Iterable[str],
        lower: bool = True,
        strip_accents: bool | None = None,
        split_cjk: bool = True,
        max_chars_per_word: int = 100,
        special_tokens: dict[str, str] | None = None,
        max_length: int | None = None,
    ):
        tokens = list(vocab)
        self.vocab = {tok: i for i, tok in enumerate(tokens)}  # token -> id
        if len(self.vocab) != len(tokens):
            dup = next(t for t in tokens if tokens.count(t) > 1)
            raise ValueError(f"the vocabulary lists {dup!r} twice")
        self.tokens = tokens  # id -> token
        self.lower, self.strip_accents, self.split_cjk = lower, strip_accents, split_cjk
        if (isinstance(max_chars_per_word, bool) or not isinstance(max_chars_per_word, int)
                or max_chars_per_word < 1):
            raise ValueError(f"max_chars_per_word must be a positive integer (BERT: 100), got "
                             f"{max_chars_per_word!r}")
        self.max_chars_per_word = max_chars_per_word
        self.max_length = max_length  # the longest input the model was trained on, if known
        self.special_tokens = {**SPECIAL_TOKENS, **(special_tokens or {})}
        missing = [t for t in self.special_tokens.values() if t not in self.vocab]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        specials = sorted(self.special_tokens.values(), key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self._pieces: dict[str, list[str]] = {}  # word -> its pieces, computed once per word

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def _id(self, key: str) -> int:
        return self.vocab[self.special_tokens[key]]

    @property
    def unk_id(self) -> int:
        return self._id("unk_token")

    @property
    def cls_id(self) -> int:
        return self._id("cls_token")

    @property
    def sep_id(self) -> int:
        return self._id("sep_token")

    @property
    def pad_id(self) -> int:
        return self._id("pad_token")

    @property
    def mask_id(self) -> int:
        return self._id("mask_token")

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lower={self.lower}, "
                f"strip_accents={self.strip_accents})")

    def basic_tokenize(self, text: str) -> list[str]:
        """Stage 1: text -> words (special tokens such as [MASK] kept whole)."""
        if not isinstance(text, str):
            raise TypeError(f"expected text as a str, got {type(text).__name__}")
        words = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:  # the odd parts are the special tokens matched by the split
                words.append(part)
            elif part:
                words += basic_tokenize(part, self.lower, self.strip_accents, self.split_cjk)
        return words

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece tokens (strings), without [CLS] and [SEP]."""
        specials = set(self.special_tokens.values())
        tokens = []
        for w in self.basic_tokenize(text):
            if w in specials:
                tokens.append(w)
                continue
            if w not in self._pieces:
                if len(self._pieces) >= self.CACHE_WORDS:
                    self._pieces.clear()  # bounded memory on an endless stream of new words
                self._pieces[w] = wordpiece(w, self.vocab, self.special_tokens["unk_token"],
                                            self.max_chars_per_word)
            tokens += self._pieces[w]
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> ids; with `add_special_tokens`, [CLS] ... [SEP] as BERT expects."""
        ids = [self.vocab[t] for t in self.tokenize(text)]
        return [self.cls_id, *ids, self.sep_id] if add_special_tokens else ids

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for a vocabulary of "
                             f"{self.vocab_size} tokens")
        return [self.tokens[i] for i in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text: tokens joined by spaces, `##` pieces glued to the one before, spaces
        before . , ! ? removed. Lower-casing and stripped accents cannot be undone."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            specials = set(self.special_tokens.values())
            tokens = [t for t in tokens if t not in specials]
        out = []
        for i, tok in enumerate(tokens):
            if i > 0:
                tok = tok[2:] if tok.startswith("##") else " " + tok
            for a, b in _CLEANUP:
                tok = tok.replace(a, b)
            out.append(tok)
        return "".join(out)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> WordPieceTokenizer:
        """From a Hugging Face BERT folder: vocab.txt (one token per line, line i = id i) and,
        if present, tokenizer_config.json (do_lower_case, strip_accents, special tokens) and
        sentence-transformers' sentence_bert_config.json (max_seq_length)."""
        folder = Path(folder)
        if folder.is_file():
            raise NotADirectoryError(f"{folder} is a file: give the folder that holds vocab.txt "
                                     f"(here perhaps {folder.parent})")
        vocab_file = folder / "vocab.txt"
        if not vocab_file.is_file():
            raise FileNotFoundError(f"{vocab_file} not found: a WordPiece tokenizer folder holds "
                                    "vocab.txt (and optionally tokenizer_config.json)")
        lines = read_text(vocab_file).split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline
        tokens = [line.rstrip("\r") for line in lines]
        config = _read_json(folder / "tokenizer_config.json")
        specials = {k: v if isinstance(v, str) else v["content"]
                    for k, v in config.items() if k in SPECIAL_TOKENS and v is not None}
        max_length = config.get("model_max_length")
        st = _read_json(folder / "sentence_bert_config.json")
        max_length = st.get("max_seq_length", max_length)
        return cls(
            tokens, lower=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents"),
            split_cjk=config.get("tokenize_chinese_chars", True), special_tokens=specials,
            max_length=max_length if isinstance(max_length, int) and max_length < 10**6 else None,
        )
