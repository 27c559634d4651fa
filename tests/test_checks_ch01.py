"""The chapter 01 checkers accept lmkit's answers and reject typical mistakes with a useful hint."""

import pytest

from lmkit.checks import ch01
from lmkit.tokenizer import BPETokenizer, get_stats, merge


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch01.check_utf8_lengths, ch01.check_count_pairs, ch01.check_merge_pair,
     ch01.check_train_bpe, ch01.check_bpe_encode],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_utf8_lengths(capsys):
    ch01.check_utf8_lengths(lambda text: [len(c.encode("utf-8")) for c in text])
    assert "✓ utf8_lengths" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="count the bytes"):
        ch01.check_utf8_lengths(lambda text: [1 for _ in text])
    with pytest.raises(AssertionError, match="one number per character"):
        ch01.check_utf8_lengths(lambda text: [1 for _ in text.encode()])


def test_count_pairs(capsys):
    ch01.check_count_pairs(get_stats)
    assert "✓ count_pairs" in capsys.readouterr().out

    def no_overlap(ids):
        out, i = {}, 0
        while i + 1 < len(ids):
            out[(ids[i], ids[i + 1])] = out.get((ids[i], ids[i + 1]), 0) + 1
            i += 2 if ids[i] == ids[i + 1] else 1
        return out

    with pytest.raises(AssertionError, match="pairs overlap"):
        ch01.check_count_pairs(no_overlap)
    with pytest.raises(AssertionError, match="disjoint steps of two"):
        ch01.check_count_pairs(lambda ids: get_stats([]) | {
            p: list(zip(ids[::2], ids[1::2])).count(p) for p in zip(ids[::2], ids[1::2])})
    with pytest.raises(AssertionError, match="misses the last pair"):
        ch01.check_count_pairs(lambda ids: get_stats(ids[:-1]))
    with pytest.raises(AssertionError, match="keys must be tuples"):
        ch01.check_count_pairs(lambda ids: {str(p): 1 for p in zip(ids, ids[1:])})
    with pytest.raises(AssertionError, match="not an adjacent pair"):
        ch01.check_count_pairs(lambda ids: get_stats(ids[::-1]))


def test_merge_pair(capsys):
    ch01.check_merge_pair(merge)
    assert "✓ merge_pair" in capsys.readouterr().out

    def overlapping(ids, pair, new_id):
        out = list(ids)
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == pair:
                out[i] = new_id
        return [x for j, x in enumerate(out) if j == 0 or (ids[j - 1], ids[j]) != pair]

    with pytest.raises(AssertionError, match="skip past both merged ids"):
        ch01.check_merge_pair(overlapping)

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

    with pytest.raises(AssertionError, match="the last id is missing"):
        ch01.check_merge_pair(drops_last)

    def in_place(ids, pair, new_id):
        ids[:] = merge(ids, pair, new_id)
        return ids

    with pytest.raises(AssertionError, match="changed the list it was given"):
        ch01.check_merge_pair(in_place)


def test_train_bpe(capsys):
    ch01.check_train_bpe(lambda text, n: BPETokenizer.train(text, 256 + n, pattern=None).merges)
    assert "✓ train_bpe" in capsys.readouterr().out

    def no_recount(text, n):  # counts once, then merges the top-n pairs of that first count
        ids = list(text.encode("utf-8"))
        stats = get_stats(ids)
        ranked = sorted(stats, key=lambda p: (-stats[p], p))[:n]
        return {p: 256 + i for i, p in enumerate(ranked)}

    with pytest.raises(AssertionError, match="count pairs again"):
        ch01.check_train_bpe(no_recount)

    def code_points(text, n):  # starts from ord(c) instead of the UTF-8 bytes
        ids, merges = [ord(c) for c in text], {}
        for new_id in range(256, 256 + n):
            stats = get_stats(ids)
            if not stats:
                break
            pair = min(stats, key=lambda p: (-stats[p], p))
            merges[pair] = new_id
            ids = merge(ids, pair, new_id)
        return merges

    with pytest.raises(AssertionError, match="code points"):
        ch01.check_train_bpe(code_points)

    def ids_from_zero(text, n):
        merges = BPETokenizer.train(text, 256 + n, pattern=None).merges
        return {p: i - 256 for p, i in merges.items()}

    with pytest.raises(AssertionError, match="new ids start at 256"):
        ch01.check_train_bpe(ids_from_zero)


def test_bpe_encode(capsys):
    ch01.check_bpe_encode(lambda text, merges: BPETokenizer(merges, pattern=None).encode(text))
    assert "✓ bpe_encode" in capsys.readouterr().out

    def text_order(text, merges):  # merges the first pair found in the text, not the earliest learned
        ids = list(text.encode("utf-8"))
        while True:
            pair = next((p for p in zip(ids, ids[1:]) if p in merges), None)
            if pair is None:
                return ids
            ids = merge(ids, pair, merges[pair])

    with pytest.raises(AssertionError, match="lowest id"):
        ch01.check_bpe_encode(text_order)
