"""The chapter 01 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import re
from collections import Counter

import pytest
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch01
from lmkit.tokenizer import BPETokenizer, get_stats, merge

# ----------------------------------------------------------------- exercise 1: utf8_lengths


def utf8_lengths(text):
    return [len(ch.encode("utf-8")) for ch in text]


def by_ranges(lo2=0x80, lo3=0x800, lo4=0x10000, four=True):
    def f(text):
        out = []
        for ch in text:
            o = ord(ch)
            out.append(1 if o < lo2 else 2 if o < lo3 else 3 if (o < lo4 or not four) else 4)
        return out
    return f


def bit_length_guess(text):  # "one byte per 8 bits"
    return [ord(ch).bit_length() // 8 + 1 for ch in text]


W1 = [
    Wrong("utf8_lengths", "chars", lambda text: [1 for _ in text]),
    Wrong("utf8_lengths", "chars", lambda text: [len(ch) for ch in text]),
    Wrong("utf8_lengths", "per_byte", lambda text: [1 for _ in text.encode("utf-8")]),
    Wrong("utf8_lengths", "bounds", by_ranges(lo2=0x81)),  # `o <= 0x80`
    Wrong("utf8_lengths", "bounds", by_ranges(lo3=0x7FF)),  # `o < 0x7FF`
    Wrong("utf8_lengths", "bounds", by_ranges(lo4=0xFFFF)),  # `o < 0xFFFF`
    Wrong("utf8_lengths", "bounds", by_ranges(lo4=0x10001)),  # `o <= 0x10000`
    Wrong("utf8_lengths", "bounds", bit_length_guess),
    Wrong("utf8_lengths", "four_bytes", by_ranges(four=False)),
    Wrong("utf8_lengths", "utf16", lambda text: [len(ch.encode("utf-16-le")) for ch in text]),
    Wrong("utf8_lengths", "type", lambda text: (len(ch.encode()) for ch in text)),
    Wrong("utf8_lengths", "type", lambda text: len(text.encode("utf-8"))),
    Wrong("utf8_lengths", "none", lambda text: print([len(ch.encode()) for ch in text])),
]

# ----------------------------------------------------------------- exercise 2: count_pairs


def count_pairs(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def no_overlap(ids):
    out, i = {}, 0
    while i + 1 < len(ids):
        out[(ids[i], ids[i + 1])] = out.get((ids[i], ids[i + 1]), 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return out


def stops_early(ids):
    out = {}
    for i in range(len(ids) - 2):
        out[(ids[i], ids[i + 1])] = out.get((ids[i], ids[i + 1]), 0) + 1
    return out


def from_first(ids):
    prev, out = ids[0], {}  # IndexError on []
    for x in ids[1:]:
        out[(prev, x)] = out.get((prev, x), 0) + 1
        prev = x
    return out


def consumes(ids):
    out = {}
    while len(ids) > 1:
        a = ids.pop(0)
        out[(a, ids[0])] = out.get((a, ids[0]), 0) + 1
    return out


W2 = [
    Wrong("count_pairs", "disjoint", lambda ids: dict(Counter(zip(ids[::2], ids[1::2])))),
    Wrong("count_pairs", "overlap", no_overlap),
    Wrong("count_pairs", "last", stops_early),
    Wrong("count_pairs", "first", lambda ids: dict(Counter(zip(ids[1:], ids[2:])))),
    Wrong("count_pairs", "order", lambda ids: dict(Counter(zip(ids[1:], ids)))),
    Wrong("count_pairs", "presence", lambda ids: {p: 1 for p in zip(ids, ids[1:])}),
    Wrong("count_pairs", "keys", lambda ids: {str(p): 1 for p in zip(ids, ids[1:])}),
    Wrong("count_pairs", "keys", lambda ids: {f"{a},{b}": c for (a, b), c in
                                              Counter(zip(ids, ids[1:])).items()}),
    Wrong("count_pairs", "empty", from_first),
    Wrong("count_pairs", "type", lambda ids: list(zip(ids, ids[1:]))),
    Wrong("count_pairs", "inplace", consumes),
]

# ----------------------------------------------------------------- exercise 3: merge_pair


def merge_pair(ids, pair, new_id):
    return merge(ids, pair, new_id)


def no_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
    return out


def drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def either_order(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) in (pair, pair[::-1]):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def one_id(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def right_to_left(ids, pair, new_id):
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def no_bound(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def in_place(ids, pair, new_id):
    ids[:] = merge(ids, pair, new_id)
    return ids


W3 = [
    Wrong("merge_pair", "skip", no_skip),
    Wrong("merge_pair", "last", drops_last),
    Wrong("merge_pair", "first_only", first_only),
    Wrong("merge_pair", "either_order", either_order),
    Wrong("merge_pair", "one_id", one_id),
    Wrong("merge_pair", "right_to_left", right_to_left),
    Wrong("merge_pair", "index", no_bound),
    Wrong("merge_pair", "inplace", in_place),
    Wrong("merge_pair", "none", lambda ids, pair, new_id: None),
    Wrong("merge_pair", "type", lambda ids, pair, new_id: tuple(merge(ids, pair, new_id))),
]

# ----------------------------------------------------------------- exercise 4: train_bpe


def train_bpe(text, n):
    return BPETokenizer.train(text, 256 + n, pattern=None).merges


def trainer(code_points=False, recount=True, apply=True, pick="min", stop=True, extra=0,
            first_id=256):
    def f(text, n):
        ids = [ord(c) for c in text] if code_points else list(text.encode("utf-8"))
        merges, stats = {}, get_stats(ids)
        ranked = sorted(stats, key=lambda p: (-stats[p], p))
        for k, new_id in enumerate(range(first_id, first_id + n + extra)):
            if recount:
                stats = get_stats(ids)
            if not stats and stop:
                break
            if not recount:
                if k >= len(ranked):
                    break
                pair = ranked[k]
            elif pick == "first":
                pair = max(stats, key=stats.get)
            elif pick == "least":
                pair = min(stats, key=lambda p: (stats[p], p))
            elif pick == "maxpair":
                pair = max(stats, key=lambda p: (stats[p], p))
            else:
                pair = min(stats, key=lambda p: (-stats[p], p))  # ValueError when empty
            merges[pair] = new_id
            if apply:
                ids = merge(ids, pair, new_id)
        return merges
    return f


W4 = [
    Wrong("train_bpe", "recount", trainer(recount=False)),
    Wrong("train_bpe", "code_points", trainer(code_points=True)),
    Wrong("train_bpe", "ids", trainer(first_id=0)),
    Wrong("train_bpe", "ids", trainer(first_id=257)),
    Wrong("train_bpe", "no_pairs", trainer(stop=False)),
    Wrong("train_bpe", "ties", trainer(pick="first")),
    Wrong("train_bpe", "ties", trainer(pick="maxpair")),
    Wrong("train_bpe", "count", trainer(extra=-1)),
    Wrong("train_bpe", "count", trainer(extra=1)),
    Wrong("train_bpe", "least", trainer(pick="least")),
    Wrong("train_bpe", "apply", trainer(apply=False)),
    Wrong("train_bpe", "inverted", lambda text, n: {i: p for p, i in train_bpe(text, n).items()}),
    Wrong("train_bpe", "type", lambda text, n: list(train_bpe(text, n))),
]

# ----------------------------------------------------------------- exercise 5: bpe_encode


def bpe_encode(text, merges):
    return BPETokenizer(merges, pattern=None).encode(text)


def encoder(order="lowest", once=False, code_points=False, guard_short=True, stop=True,
            presplit=False):
    def f(text, merges):
        if presplit:
            return [i for piece in re.findall(r"\S+|\s+", text) for i in f_whole(piece, merges)]
        return f_whole(text, merges)

    def f_whole(text, merges):
        ids = [ord(c) for c in text] if code_points else list(text.encode("utf-8"))
        if once:
            present = set(zip(ids, ids[1:]))
            for pair, new_id in merges.items():
                if pair in present:
                    ids = merge(ids, pair, new_id)
            return ids
        while len(ids) >= 2 or not guard_short:
            pairs = list(zip(ids, ids[1:]))
            if order == "text":
                pair = next((p for p in pairs if p in merges), None)
            else:
                rank = {"lowest": 1, "highest": -1}[order]
                pair = min(pairs, key=lambda p: rank * merges.get(p, rank * float("inf")))
            if stop and (pair is None or pair not in merges):
                break
            ids = merge(ids, pair, merges[pair])
        return ids
    return f


def pops_merges(text, merges):
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges.pop(pair))
    return ids


W5 = [
    Wrong("bpe_encode", "order", encoder(order="text")),
    Wrong("bpe_encode", "order", encoder(order="highest")),
    Wrong("bpe_encode", "once", encoder(once=True)),
    Wrong("bpe_encode", "bytes", encoder(code_points=True)),
    Wrong("bpe_encode", "short", encoder(guard_short=False)),
    Wrong("bpe_encode", "stop", encoder(stop=False)),
    Wrong("bpe_encode", "presplit", encoder(presplit=True)),
    Wrong("bpe_encode", "type", lambda text, merges: bytes(bpe_encode(text, merges)[:0])
          + text.encode()),
    Wrong("bpe_encode", "inplace", pops_merges),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5
SOLUTIONS = {"utf8_lengths": utf8_lengths, "count_pairs": count_pairs, "merge_pair": merge_pair,
             "train_bpe": train_bpe, "bpe_encode": bpe_encode}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch01, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch01, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch01, wrong)


def test_catalogue_complete():
    assert_complete(ch01, CATALOGUE, SOLUTIONS)


def test_short_text_is_tested():
    """Issue 10: `train_bpe("ab", 5)` must be a case, so a trainer that never stops crashes."""
    assert ("ab", 5) in ch01._TRAIN_TEXTS
    text = "".join(ch01._TEXTS)
    for cp in (0x80, 0x7FF, 0x800, 0xFFFF, 0x10000):
        assert chr(cp) in text


def test_merge_without_skip_is_named_on_the_first_case():
    """Issue 10: forgetting to skip past a merged pair got only 'should give [9, 3, 9]'."""
    with pytest.raises(AssertionError, match=r"merge_pair\(\[1, 2, 3, 1, 2\].*skip past both"):
        ch01.check_merge_pair(no_skip)


def string_replace(ids, pair, new_id):  # joins the ids into a string: "11 2" contains "1 2"
    s = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
    return [int(t) for t in s.split()]


def lowered(text, n):
    return train_bpe(text.lower().strip(), n)


def ties_by_first_id(text, n):
    ids, merges = list(text.encode("utf-8")), {}
    for new_id in range(256, 256 + n):
        stats = get_stats(ids)
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p[0]))
        merges[pair] = new_id
        ids = merge(ids, pair, new_id)
    return merges


def replay_newest_first(text, merges):
    ids = list(text.encode("utf-8"))
    for pair, new_id in sorted(merges.items(), key=lambda kv: -kv[1]):
        ids = merge(ids, pair, new_id)
    return ids


REVIEW = [
    Wrong("merge_pair", "one_id", string_replace),  # "11 2" -> "19"? caught by a wrong value
    Wrong("train_bpe", "text", lowered),
    Wrong("train_bpe", "ties", ties_by_first_id),
    Wrong("bpe_encode", "order", replay_newest_first),
]


CATALOGUE += REVIEW[1:]


@pytest.mark.parametrize("wrong", REVIEW[1:], ids=lambda w: w.id)
def test_review_wrong_answers(wrong):
    assert_rejected(ch01, wrong)


def test_string_replace_is_rejected():
    with pytest.raises(AssertionError, match=r"merge_pair\(\[11, 2\]"):
        ch01.check_merge_pair(string_replace)
