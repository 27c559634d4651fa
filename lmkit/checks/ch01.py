"""Checkers for the chapter 01 exercises (tokenization)."""

from __future__ import annotations

import random
import re
from collections import Counter

from ..tokenizer import BPETokenizer, get_stats, merge
from .common import INPLACE, NO_RETURN, Mistake, _short, call, checker, fail, passed

__all__ = ["check_utf8_lengths", "check_count_pairs", "check_merge_pair", "check_train_bpe",
           "check_bpe_encode", "MISTAKES"]

M = Mistake
MISTAKES: dict[str, dict[str, Mistake]] = {
    "utf8_lengths": {
        "chars": M("counting characters (always 1) instead of bytes",
                   "count the bytes of ch.encode('utf-8'), not the characters"),
        "per_byte": M("iterating over `text.encode()` (one number per byte, not per character)",
                      "give one number per character (iterate over the string, not its bytes)"),
        "bounds": M("an off-by-one range bound (U+0080, U+07FF, U+0800, U+FFFF or U+10000 wrong)",
                    "check the range bounds: 1 byte up to U+007F, 2 up to U+07FF, 3 up to "
                    "U+FFFF, 4 from U+10000 on (code point < 0x80, < 0x800, < 0x10000)"),
        "four_bytes": M("no 4-byte case (emoji and other characters above U+FFFF)",
                        "characters above U+FFFF (emoji, for example) take 4 bytes in UTF-8"),
        "utf16": M("counting UTF-16 (or another encoding's) bytes",
                   "you counted the bytes of another encoding (UTF-16?): use ch.encode('utf-8')"),
        "type": M("returning something other than a list (a generator, a tuple, a total)",
                  "return a list of ints, one per character"),
        "none": NO_RETURN,
    },
    "count_pairs": {
        "disjoint": M("pairing ids in disjoint steps of two (`ids[::2]`, `ids[1::2]`)",
                      "pairs overlap: every id pairs with the one right after it, "
                      "zip(ids, ids[1:]), not disjoint steps of two"),
        "overlap": M("skipping ahead after a repeated pair, so (1, 1) in [1, 1, 1] counts once",
                     "pairs overlap: in [1, 1, 1] the pair (1, 1) occurs twice "
                     "(positions 0-1 and 1-2), so its count is 2"),
        "last": M("stopping one pair early (`range(len(ids) - 2)`)",
                  "you miss the last pair: the pairs are zip(ids, ids[1:]), up to and "
                  "including the last two ids"),
        "first": M("starting at the second pair (`zip(ids[1:], ids[2:])`)",
                   "you miss the first pair: start with (ids[0], ids[1])"),
        "order": M("pairs the wrong way round (`(ids[i + 1], ids[i])`)",
                   "a pair is (ids[i], ids[i + 1]), in the order the ids appear"),
        "presence": M("setting each count to 1 instead of adding 1",
                      "count every occurrence: counts[p] = counts.get(p, 0) + 1"),
        "keys": M("keys that are not tuples (strings, lists)",
                  "keys must be tuples (a, b) so they can be dict keys and be looked up"),
        "empty": M("crashing on an empty list or a single id",
                   "an empty list or a single id has no pairs: return an empty dict"),
        "type": M("returning a list of pairs or a Counter of something else, not a dict",
                  "return a dict {(a, b): count}"),
        "inplace": INPLACE,
    },
    "merge_pair": {
        "skip": M("not skipping past a merged pair (its second id stays in the output)",
                  "after a merge, skip past both merged ids (i += 2): the second id of the pair "
                  "must not appear again, and pairs do not overlap"),
        "last": M("dropping the last id when no pair starts there (`while i < len(ids) - 1`)",
                  "the last id is missing: when no pair starts at the last position, copy that "
                  "id too (loop while i < len(ids))"),
        "first_only": M("replacing only the first occurrence",
                        "replace every occurrence of the pair, not only the first"),
        "either_order": M("also merging the pair in reverse order (b, a)",
                          "merge only (a, b) in this order: (b, a) is another pair"),
        "one_id": M("matching only the first id of the pair",
                    "both ids must match: (ids[i], ids[i + 1]) == pair"),
        "right_to_left": M("scanning from right to left",
                           "scan from left to right: merge_pair([1, 1, 1], (1, 1), 9) is [9, 1]"),
        "index": M("reading `ids[i + 1]` past the end (IndexError)",
                   "check i + 1 < len(ids) before reading ids[i + 1]"),
        "inplace": INPLACE,
        "none": NO_RETURN,
        "type": M("returning a tuple or a string instead of a list", "return a new list of ints"),
    },
    "train_bpe": {
        "recount": M("counting pairs once and taking the top n",
                     "count pairs again on the merged ids after every merge: a merge creates "
                     "new pairs and removes old ones"),
        "code_points": M("starting from code points (`ord(c)`) instead of UTF-8 bytes",
                         "you started from code points (ord(c)) rather than UTF-8 bytes; start "
                         "from list(text.encode('utf-8'))"),
        "ids": M("new ids that do not start at 256",
                 "new ids start at 256 and go up by one per merge"),
        "no_pairs": M("not stopping when no pair is left (crashes on `train_bpe(\"ab\", 5)`)",
                      "stop early when no pair is left (`if not stats: break`): a short text "
                      "runs out of pairs before n_merges"),
        "ties": M("breaking ties by first seen or largest pair",
                  "among equally frequent pairs take the smallest one: "
                  "min(stats, key=lambda p: (-stats[p], p))"),
        "count": M("learning one merge too many or too few",
                   "learn exactly n_merges merges (new ids 256 .. 256 + n_merges - 1), fewer "
                   "only when no pair is left"),
        "least": M("merging the least frequent pair", "merge the MOST frequent pair"),
        "apply": M("not applying the merge to the ids (`ids = merge_pair(...)` missing)",
                   "apply each merge to the ids (ids = merge_pair(ids, pair, new_id)) before "
                   "counting again"),
        "inverted": M("returning {new_id: pair} instead of {pair: new_id}",
                      "the keys are the pairs and the values the new ids: {(a, b): new_id}"),
        "type": M("returning a list of pairs", "return a dict {(a, b): new_id} in the order "
                                               "learned"),
        "text": M("changing the text first (`lower()`, `strip()`)",
                  "train on the text exactly as given: no lower(), no strip(); capitals and "
                  "spaces are bytes like any other"),
    },
    "bpe_encode": {
        "order": M("applying merges in text order, or the latest learned first",
                   "apply the merge with the lowest id among the pairs present, repeatedly "
                   "(the order merges were learned, not the order pairs appear in the text)"),
        "once": M("looking at the pairs only once, so merges made possible by a merge are missed",
                  "after each merge look at the pairs again: a merge creates pairs that later "
                  "merges use"),
        "bytes": M("starting from code points (`ord(c)`) instead of UTF-8 bytes",
                   "start from the UTF-8 bytes, list(text.encode('utf-8'))"),
        "short": M("crashing on a text of 0 or 1 bytes (no pairs: `min()` of nothing)",
                   "a text of 0 or 1 bytes has no pairs: return its bytes as they are"),
        "stop": M("not stopping when no present pair has been learned (KeyError)",
                  "stop when none of the pairs present is in merges (merges.get(p) is None for "
                  "all of them)"),
        "presplit": M("splitting the text on spaces first",
                      "work on the whole byte sequence, with no pre-split (spaces merge too)"),
        "type": M("returning bytes or a string instead of a list of ids",
                  "return a list of int ids"),
        "inplace": INPLACE,
    },
}

# --------------------------------------------------------------------------- exercise 1

_TEXTS = ["", "a", "hello", "héllo", "naïve café", "\u007f\u0080", "\u07ff\u0800",
          "\uffff\U00010000\U0001f600", "你好", "🤗 ok", "e\u0301", "ab\ncd\t", "\u00ff\u0100"]
_BOUNDS = {0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000}


def _utf16(ch: str) -> int:
    return len(ch.encode("utf-16-le"))


@checker
def check_utf8_lengths(fn) -> None:
    """Exercise 1: fn(text) -> the number of UTF-8 bytes of each character."""
    H = MISTAKES["utf8_lengths"]
    for text in _TEXTS:
        got = call(fn, text, name="utf8_lengths")
        want = [len(ch.encode("utf-8")) for ch in text]
        if got is None:
            fail(f"utf8_lengths({text!r}): {H['none'].hint}")
        if not isinstance(got, list):
            fail(f"utf8_lengths({text!r}) returned a {type(got).__name__}: {H['type'].hint}")
        if len(got) != len(text):
            if len(got) == len(text.encode("utf-8")):
                fail(f"utf8_lengths({text!r}) returned {len(got)} numbers for {len(text)} "
                     f"characters: {H['per_byte'].hint}")
            fail(f"utf8_lengths({text!r}) returned {len(got)} numbers for {len(text)} "
                 f"characters: {H['type'].hint}")
        if got == want:
            continue
        ch, g, w = next((c, g, w) for c, g, w in zip(text, got, want) if g != w)
        if got == [min(n, 3) for n in want]:
            key = "four_bytes"
        elif ord(ch) in _BOUNDS:
            key = "bounds"
        elif got == [1] * len(text):
            key = "chars"
        elif got == [_utf16(c) for c in text]:
            key = "utf16"
        else:
            key = "bounds"
        fail(f"{ch!r} (U+{ord(ch):04X}) takes {w} byte(s) in UTF-8 but you said {g}: "
             f"{H[key].hint}")
    passed("utf8_lengths", len(_TEXTS))


# --------------------------------------------------------------------------- exercise 2


def _pair_cases() -> list[list[int]]:
    rng = random.Random(0)
    return [[], [5], [3, 1, 4, 1, 5, 9, 2, 6], [1, 2, 3, 1, 2], [1, 1, 1], [7, 7, 7, 7],
            [rng.randrange(4) for _ in range(200)]]


def _no_overlap(ids: list[int]) -> dict:
    """Counting (x, x) once per run of equal ids: skipping ahead after a repeated pair."""
    out: dict = {}
    i = 0
    while i + 1 < len(ids):
        p = (ids[i], ids[i + 1])
        out[p] = out.get(p, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return out


@checker
def check_count_pairs(fn) -> None:
    """Exercise 2: fn(ids) -> {(a, b): count} over adjacent pairs."""
    H = MISTAKES["count_pairs"]
    cases = _pair_cases()
    for ids in cases:
        try:
            got = call(fn, list(ids), name="count_pairs")
        except AssertionError as e:
            if len(ids) < 2 and e.__cause__ is not None:
                fail(f"{e}\n{H['empty'].hint}")
            raise
        want = get_stats(ids)
        if not isinstance(got, dict):
            fail(f"count_pairs({_short(ids)}) returned {type(got).__name__}: {H['type'].hint}")
        bad_keys = [k for k in got if not isinstance(k, tuple)]
        if bad_keys:
            fail(f"count_pairs({_short(ids)}) has the key {bad_keys[0]!r}: {H['keys'].hint}")
        got = {k: v for k, v in got.items() if v}
        if got == want:
            continue
        candidates = [
            ("overlap", _no_overlap(ids)),
            ("disjoint", dict(Counter(zip(ids[::2], ids[1::2])))),
            ("order", get_stats(ids[::-1])),
            ("presence", {p: 1 for p in want}),
            ("last", get_stats(ids[:-1])),
            ("first", get_stats(ids[1:])),
        ]
        for key, wrong in candidates:
            if got == wrong:
                fail(f"count_pairs({_short(ids)}) gives {_short(got)}: {H[key].hint}")
        extra = set(got) - set(want)
        if extra:
            fail(f"count_pairs({_short(ids)}) counted {sorted(extra)[0]}, which is not an "
                 "adjacent pair of the input: pair each id with the one right after it")
        wrong = next(k for k in want if got.get(k) != want[k])
        fail(f"count_pairs({_short(ids)}): pair {wrong} occurs {want[wrong]} time(s), "
             f"you counted {got.get(wrong, 0)}")
    passed("count_pairs", len(cases))


# --------------------------------------------------------------------------- exercise 3


def _merge_variant(ids, pair, new_id, *, skip=True, last=True, first_only=False,
                   either=False, one_id=False, reverse=False):
    if reverse:
        return _merge_variant(ids[::-1], pair[::-1], new_id)[::-1]
    out, i, done = [], 0, False
    n = len(ids) if last else len(ids) - 1
    while i < n:
        here = tuple(ids[i:i + 2])
        hit = (len(here) == 2 and not done
               and (here == pair or (either and here == pair[::-1])
                    or (one_id and here[0] == pair[0])))
        if hit:
            out.append(new_id)
            i += 2 if skip else 1
            done = first_only
        else:
            out.append(ids[i])
            i += 1
    return out


_MERGE_VARIANTS = [("skip", dict(skip=False)), ("last", dict(last=False)),
                   ("first_only", dict(first_only=True)), ("either_order", dict(either=True)),
                   ("one_id", dict(one_id=True)), ("right_to_left", dict(reverse=True))]


@checker
def check_merge_pair(fn) -> None:
    """Exercise 3: fn(ids, pair, new_id) -> ids with each occurrence of pair replaced."""
    H = MISTAKES["merge_pair"]
    rng = random.Random(1)
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([3, 4, 5], (3, 4), 9), ([1, 1, 1], (1, 1), 9),
             ([1, 1, 1, 1], (1, 1), 9), ([2, 1, 3, 1, 2], (1, 2), 9), ([4, 5, 4, 7], (4, 6), 8),
             ([3, 4], (4, 5), 9), ([], (1, 2), 9), ([5, 6, 5], (5, 6), 300),
             ([11, 2], (1, 2), 9), ([3, 12, 5], (2, 5), 300), ([1, 23, 12, 3], (12, 3), 7),
             ([rng.randrange(3) for _ in range(100)], (1, 2), 256)]
    for ids, pair, new_id in cases:
        shown = f"merge_pair({_short(ids)}, {pair}, {new_id})"
        try:
            got = call(fn, list(ids), pair, new_id, name="merge_pair")
        except AssertionError as e:
            if isinstance(e.__cause__, IndexError):
                fail(f"{e}\n{H['index'].hint}")
            raise
        if got is None:
            fail(f"{shown}: {H['none'].hint}")
        if not isinstance(got, list):
            fail(f"{shown} returned a {type(got).__name__}: {H['type'].hint}")
        want = merge(ids, pair, new_id)
        if got == want:
            continue
        for key, flags in _MERGE_VARIANTS:
            if got == _merge_variant(ids, pair, new_id, **flags):
                fail(f"{shown} should give {_short(want)}, got {_short(got)}: {H[key].hint}")
        fail(f"{shown} should give {_short(want)}, got {_short(got)}")
    passed("merge_pair", len(cases))


# --------------------------------------------------------------------------- exercise 4

_TRAIN_TEXTS = [("aaabdaaabac", 3), ("hello hello hello world", 6),
                ("the cat sat on the mat. the cat ate.", 10), ("ééé ü ü", 4), ("abcd", 0),
                ("ab", 5), ("", 2), ("zzyyxxzy", 3), ("  The THE the", 5), ("acab", 1)]


def _train_variant(text: str, n: int, *, code_points=False, recount=True, apply=True,
                   ties="min", stop=True, extra=0, least=False) -> dict:
    ids = [ord(c) for c in text] if code_points else list(text.encode("utf-8"))
    merges: dict = {}
    first = get_stats(ids)
    ranked = sorted(first, key=lambda p: (-first[p], p))
    for k, new_id in enumerate(range(256, 256 + n + extra)):
        stats = get_stats(ids) if recount else first
        if not stats or (not recount and k >= len(ranked)):
            if stop:
                break
            raise ValueError("no pairs")
        if not recount:
            pair = ranked[k]
        elif least:
            pair = min(stats, key=lambda p: (stats[p], p))
        elif ties == "first":
            pair = max(stats, key=stats.get)
        elif ties == "first_id":
            pair = min(stats, key=lambda p: (-stats[p], p[0]))
        elif ties == "max":
            pair = max(stats, key=lambda p: (stats[p], p))
        else:
            pair = min(stats, key=lambda p: (-stats[p], p))
        merges[pair] = new_id
        if apply:
            ids = merge(ids, pair, new_id)
    return merges


_TRAIN_VARIANTS = [("code_points", dict(code_points=True)), ("recount", dict(recount=False)),
                   ("apply", dict(apply=False)), ("ties", dict(ties="first")),
                   ("ties", dict(ties="max")), ("ties", dict(ties="first_id")),
                   ("least", dict(least=True)),
                   ("count", dict(extra=1)), ("count", dict(extra=-1))]


@checker
def check_train_bpe(fn) -> None:
    """Exercise 4: fn(text, n_merges) -> {(a, b): new_id} learned on the raw UTF-8 bytes."""
    H = MISTAKES["train_bpe"]
    for text, n in _TRAIN_TEXTS:
        shown = f"train_bpe({text!r}, {n})"
        try:
            got = call(fn, text, n, name="train_bpe")
        except AssertionError as e:
            if e.__cause__ is not None and len(text.encode()) - 1 < n:
                fail(f"{e}\n{H['no_pairs'].hint}")
            raise
        want = BPETokenizer.train(text, 256 + n, pattern=None).merges
        if not isinstance(got, dict):
            fail(f"{shown} returned a {type(got).__name__}: {H['type'].hint}")
        if got and all(isinstance(k, int) for k in got):
            fail(f"{shown} has keys {_short(list(got))}: {H['inverted'].hint}")
        if list(got.items()) == list(want.items()):
            continue
        for key, flags in _TRAIN_VARIANTS:
            if list(got.items()) == list(_train_variant(text, n, **flags).items()):
                fail(f"{shown} gives {_short(got)}, expected {_short(want)}: {H[key].hint}")
        if sorted(got.values()) != list(range(256, 256 + len(got))):
            fail(f"{shown} returned the ids {_short(list(got.values()))}: {H['ids'].hint}")
        for changed in {text.lower(), text.strip(), text.lower().strip()} - {text}:
            if list(got.items()) == list(BPETokenizer.train(changed, 256 + n,
                                                            pattern=None).merges.items()):
                fail(f"{shown} gives {_short(got)}, expected {_short(want)}: {H['text'].hint}")
        if len(got) != len(want):
            fail(f"{shown} learned {len(got)} merges, expected {len(want)}: {H['count'].hint}")
        k, (gp, wp) = next((k, (g, w)) for k, (g, w) in enumerate(zip(got, want)) if g != w)
        fail(f"{shown}: merge #{k} should be {wp} -> {want[wp]}, got {gp}. Pick the most frequent "
             "pair, ties going to the smallest pair (min(stats, key=lambda p: (-stats[p], p))), "
             "and count pairs again on the merged ids after every merge. If train_bpe uses your "
             "count_pairs and merge_pair, make sure their checks pass first")
    passed("train_bpe", len(_TRAIN_TEXTS))


# --------------------------------------------------------------------------- exercise 5


def _encode_variant(text: str, merges: dict, *, order="lowest", once=False, code_points=False,
                    presplit=False) -> list[int]:
    if presplit:
        out = []
        for piece in re.findall(r"\S+|\s+", text):
            out += _encode_variant(piece, merges, order=order)
        return out
    ids = [ord(c) for c in text] if code_points else list(text.encode("utf-8"))
    if once:
        present = set(zip(ids, ids[1:]))
        for pair, new_id in sorted(merges.items(), key=lambda kv: kv[1]):
            if pair in present:
                ids = merge(ids, pair, new_id)
        return ids
    while len(ids) >= 2:
        pairs = [p for p in zip(ids, ids[1:]) if p in merges]
        if not pairs:
            break
        if order == "replay_newest":
            for pair, new_id in sorted(merges.items(), key=lambda kv: -kv[1]):
                ids = merge(ids, pair, new_id)
            return ids
        pair = (pairs[0] if order == "text" else max(pairs, key=merges.get)
                if order == "highest" else min(pairs, key=merges.get))
        ids = merge(ids, pair, merges[pair])
    return ids


_ENCODE_VARIANTS = [("order", dict(order="text")), ("order", dict(order="highest")),
                    ("once", dict(once=True)), ("order", dict(order="replay_newest")), ("bytes", dict(code_points=True)),
                    ("presplit", dict(presplit=True))]


@checker
def check_bpe_encode(fn) -> None:
    """Exercise 5: fn(text, merges) -> ids, applying learned merges in the order they were learned."""
    H = MISTAKES["bpe_encode"]
    train = "the theme of the theatre: then there, the theft. " * 3
    learned = BPETokenizer.train(train, 256 + 12, pattern=None).merges
    a, b, c = b"abc"
    # order matters here: (b, c) was learned first, so "abc" -> [a, 256], not [257, c]
    handmade = {(b, c): 256, (a, b): 257}
    chain = {(a, a): 256, (256, 256): 257, (257, 257): 258}  # each merge makes the next pair
    cases = [(t, learned) for t in ["the", "then the theatre", "there", "xyz", "thethe",
                                    "théâtre", "the the"]]
    cases += [(t, handmade) for t in ["abc", "ab", "xabcab", "abcabc"]]
    cases += [("aaaaaaaa", chain), ("", learned), ("t", learned)]
    pending = None
    for text, merges in cases:
        shown = f"bpe_encode({text!r}, {merges if merges is not learned else '<merges>'})"
        try:
            got = call(fn, text, dict(merges), name="bpe_encode")
        except AssertionError as e:
            if e.__cause__ is not None and (len(text.encode()) < 2
                                            or "empty" in str(e.__cause__)):
                fail(f"{e}\n{H['short'].hint}")
            if isinstance(e.__cause__, KeyError):
                fail(f"{e}\n{H['stop'].hint}")
            raise
        tok = BPETokenizer(merges, pattern=None)
        want = tok.encode(text)
        if got == want:
            continue
        if not isinstance(got, list):
            fail(f"{shown} returned a {type(got).__name__}: {H['type'].hint}")
        keys = list(dict.fromkeys(key for key, flags in _ENCODE_VARIANTS
                                  if got == _encode_variant(text, merges, **flags)))
        if len(keys) > 1:  # several mistakes give this output: a later case tells them apart
            pending = pending or f"{shown} gives {_short(got)}, expected {_short(want)}: " \
                f"{H[keys[0]].hint}"
            continue
        if keys:
            fail(f"{shown} gives {_short(got)}, expected {_short(want)}: {H[keys[0]].hint}")
        fail(f"{shown} should give {want}, got {_short(got)}. If bpe_encode uses your "
             "merge_pair, make sure its check passes first")
    if pending:
        fail(pending)
    passed("bpe_encode", len(cases))
