"""Checkers for the chapter 01 exercises (tokenization)."""

from __future__ import annotations

import random
from collections import Counter

from ..tokenizer import BPETokenizer, get_stats, merge
from .common import _short, call, fail, passed

__all__ = ["check_utf8_lengths", "check_count_pairs", "check_merge_pair", "check_train_bpe",
           "check_bpe_encode"]

_TEXTS = ["", "a", "hello", "héllo", "naïve café", "你好", "🤗 ok", "e\u0301", "ab\ncd\t"]


def check_utf8_lengths(fn) -> None:
    """Exercise 1: fn(text) -> the number of UTF-8 bytes of each character."""
    for text in _TEXTS:
        got = call(fn, text, name="utf8_lengths")
        want = [len(ch.encode("utf-8")) for ch in text]
        if not isinstance(got, list):
            fail(f"utf8_lengths({text!r}) should return a list of ints, got {type(got).__name__}")
        if len(got) != len(text):
            fail(
                f"utf8_lengths({text!r}) returned {len(got)} numbers for {len(text)} characters: "
                "give one number per character (iterate over the string, not its bytes)"
            )
        for ch, g, w in zip(text, got, want):
            if g != w:
                fail(
                    f"{ch!r} (U+{ord(ch):04X}) takes {w} byte(s) in UTF-8 but you said {g}: "
                    "count the bytes of ch.encode('utf-8'), not the characters"
                )
    passed("utf8_lengths", len(_TEXTS))


def _pair_cases() -> list[list[int]]:
    rng = random.Random(0)
    return [[], [5], [1, 2, 3, 1, 2], [1, 1, 1], [7, 7, 7, 7], [rng.randrange(4) for _ in range(200)]]


def check_count_pairs(fn) -> None:
    """Exercise 2: fn(ids) -> {(a, b): count} over adjacent pairs."""
    cases = _pair_cases()
    for ids in cases:
        got = call(fn, list(ids), name="count_pairs")
        want = get_stats(ids)
        if not isinstance(got, dict):
            fail(f"count_pairs should return a dict, got {type(got).__name__}")
        bad_keys = [k for k in got if not isinstance(k, tuple)]
        if bad_keys:
            fail(f"keys must be tuples (a, b) so they can be dict keys; got {bad_keys[0]!r}")
        got = {k: v for k, v in got.items() if v}
        if got != want:
            if got == dict(Counter(zip(ids[::2], ids[1::2]))):
                fail(f"count_pairs({_short(ids)}) paired the ids in disjoint steps of two "
                     "(ids[0:2], ids[2:4], ...); pairs overlap: every id pairs with the one "
                     "right after it, zip(ids, ids[1:])")
            if ids == [1, 1, 1] and got.get((1, 1)) == 1:
                fail("pairs overlap: in [1, 1, 1] the pair (1, 1) occurs twice "
                     "(positions 0-1 and 1-2), so its count is 2")
            if len(ids) > 2 and got == get_stats(ids[:-1]):
                fail(f"count_pairs({_short(ids)}) misses the last pair {tuple(ids[-2:])}: "
                     "the pairs are zip(ids, ids[1:]), up to and including the last two ids")
            extra = set(got) - set(want)
            if extra:
                fail(f"count_pairs({_short(ids)}) counted {sorted(extra)[0]}, which is not an "
                     "adjacent pair of the input: pair each id with the one right after it")
            wrong = next(k for k in want if got.get(k) != want[k])
            fail(f"count_pairs({_short(ids)}): pair {wrong} occurs {want[wrong]} time(s), "
                 f"you counted {got.get(wrong, 0)}")
    passed("count_pairs", len(cases))


def check_merge_pair(fn) -> None:
    """Exercise 3: fn(ids, pair, new_id) -> ids with each occurrence of pair replaced."""
    rng = random.Random(1)
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([3, 4, 5], (3, 4), 9), ([1, 1, 1], (1, 1), 9),
             ([1, 1, 1, 1], (1, 1), 9),
             ([3, 4], (4, 5), 9), ([], (1, 2), 9), ([5, 6, 5], (5, 6), 300),
             ([rng.randrange(3) for _ in range(100)], (1, 2), 256)]
    for ids, pair, new_id in cases:
        arg = list(ids)
        got = call(fn, arg, pair, new_id, name="merge_pair")
        if arg != ids:
            fail("merge_pair changed the list it was given; build and return a new list instead")
        want = merge(ids, pair, new_id)
        if got != want:
            if ids != [1, 1, 1] and isinstance(got, list) and got == want[:-1]:
                fail(f"merge_pair({_short(ids)}, {pair}, {new_id}) gives {_short(got)}: the last "
                     f"id is missing ({want[-1]}); when no pair starts at the last position, "
                     "copy that id too (loop while i < len(ids))")
            if ids == [1, 1, 1]:
                fail(f"merge_pair([1, 1, 1], (1, 1), 9) should give [9, 1], got {got}: scan left "
                     "to right and, after a merge, skip past both merged ids (no overlaps)")
            fail(f"merge_pair({_short(ids)}, {pair}, {new_id}) should give {_short(want)}, "
                 f"got {_short(got)}")
    passed("merge_pair", len(cases))


_TRAIN_TEXTS = [("aaabdaaabac", 3), ("hello hello hello world", 6),
                ("the cat sat on the mat. the cat ate.", 10), ("ééé ü ü", 4), ("abcd", 0)]


def _train_on_code_points(text: str, n: int) -> dict:
    """The typical mistake: BPE over ord(c) instead of the UTF-8 bytes."""
    ids, merges = [ord(c) for c in text], {}
    for new_id in range(256, 256 + n):
        stats = get_stats(ids)
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merges[pair] = new_id
        ids = merge(ids, pair, new_id)
    return merges


def check_train_bpe(fn) -> None:
    """Exercise 4: fn(text, n_merges) -> {(a, b): new_id} learned on the raw UTF-8 bytes."""
    for text, n in _TRAIN_TEXTS:
        got = call(fn, text, n, name="train_bpe")
        want = BPETokenizer.train(text, 256 + n, pattern=None).merges
        if not isinstance(got, dict):
            fail(f"train_bpe should return a dict {{(a, b): new_id}}, got {type(got).__name__}")
        if len(got) != len(want):
            fail(f"train_bpe({text!r}, {n}) learned {len(got)} merges, expected {len(want)}")
        for k, ((gp, gi), (wp, wi)) in enumerate(zip(got.items(), want.items())):
            if gi != wi:
                fail(f"merge #{k} got id {gi}: new ids start at 256 and go up by one per merge")
            if gp != wp:
                if got == _train_on_code_points(text, n):
                    fail(f"train_bpe({text!r}, {n}): merge #{k} is {gp}: you started from code "
                         "points (ord(c)) rather than UTF-8 bytes; start from "
                         "list(text.encode('utf-8'))")
                fail(
                    f"train_bpe({text!r}, {n}): merge #{k} should be {wp} -> {wi}, got {gp}. "
                    "Pick the most frequent pair, ties going to the smallest pair "
                    "(min(stats, key=lambda p: (-stats[p], p))), and count pairs again on the "
                    "merged ids after every merge. If train_bpe uses your count_pairs and "
                    "merge_pair, make sure their checks pass first"
                )
    passed("train_bpe", len(_TRAIN_TEXTS))


def check_bpe_encode(fn) -> None:
    """Exercise 5: fn(text, merges) -> ids, applying learned merges in the order they were learned."""
    train = "the theme of the theatre: then there, the theft. " * 3
    learned = BPETokenizer.train(train, 256 + 12, pattern=None).merges
    a, b, c = b"abc"
    # order matters here: (b, c) was learned first, so "abc" -> [a, 256], not [257, c]
    handmade = {(b, c): 256, (a, b): 257}
    cases = [(t, learned) for t in ["the", "then the theatre", "there", "xyz", "", "thethe",
                                    "théâtre"]]
    cases += [(t, handmade) for t in ["abc", "ab", "xabcab", "abcabc"]]
    for text, merges in cases:
        got = call(fn, text, dict(merges), name="bpe_encode")
        tok = BPETokenizer(merges, pattern=None)
        want = tok.encode(text)
        if got != want:
            if isinstance(got, list) and tok.decode(got) == text:
                fail(
                    f"bpe_encode({text!r}, {merges if merges is handmade else '<merges>'}) gives "
                    f"{got}, which decodes correctly but is not what BPE gives ({want}): apply "
                    "the merge with the lowest id among the pairs present, repeatedly (the order "
                    "merges were learned, not the order pairs appear in the text), on the whole "
                    "byte sequence with no pre-split"
                )
            fail(f"bpe_encode({text!r}) should give {want}, got {_short(got)}. If bpe_encode uses "
                 "your merge_pair, make sure its check passes first")
    passed("bpe_encode", len(cases))
