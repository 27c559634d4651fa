"""The chapter 10 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import pytest
import torch
import torch.nn.functional as F
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch10

# ----------------------------------------------------------------- exercise 1: bidirectional_mask


def bidirectional_mask(m):
    B, T = m.shape
    return m.bool()[:, None, :].expand(B, T, T)


def tril(m):
    return torch.ones(m.shape[1], m.shape[1], dtype=torch.bool).tril()


def lengths_mask(m):  # assumes the padding is at the end
    B, T = m.shape
    return (torch.arange(T)[None, None, :] < m.sum(1)[:, None, None]).expand(B, T, T)


def mask_in_place(m):
    m[:] = 1
    return bidirectional_mask(m)


W1 = [
    Wrong("bidirectional_mask", "all_true", lambda m: torch.ones(
        m.shape[0], m.shape[1], m.shape[1], dtype=torch.bool)),
    Wrong("bidirectional_mask", "causal_padded", lambda m: bidirectional_mask(m) & tril(m)),
    Wrong("bidirectional_mask", "causal", lambda m: tril(m).expand(m.shape[0], -1, -1)),
    Wrong("bidirectional_mask", "transposed", lambda m: bidirectional_mask(m) & tril(m).T),
    Wrong("bidirectional_mask", "rows", lambda m: m.bool()[:, :, None].expand(
        -1, m.shape[1], m.shape[1])),
    Wrong("bidirectional_mask", "rows_and_keys", lambda m: m.bool()[:, :, None]
          & m.bool()[:, None, :]),
    Wrong("bidirectional_mask", "inverted", lambda m: ~bidirectional_mask(m)),
    Wrong("bidirectional_mask", "diagonal", lambda m: torch.eye(m.shape[1], dtype=torch.bool)
          .expand(m.shape[0], -1, -1)),
    Wrong("bidirectional_mask", "right_only", lengths_mask),
    Wrong("bidirectional_mask", "dtype", lambda m: bidirectional_mask(m).long()),
    Wrong("bidirectional_mask", "dtype", lambda m: bidirectional_mask(m).float()),
    Wrong("bidirectional_mask", "shape", lambda m: m.bool()),
    Wrong("bidirectional_mask", "shape", lambda m: m.bool()[:, None, :]),
    Wrong("bidirectional_mask", "inplace", mask_in_place),
]

# ----------------------------------------------------------------- exercise 2: mlm_masking


def mlm_masking(ids, u_select, u_kind, random_ids, mask_id, p):
    chosen = u_select < p
    inputs = ids.clone()
    inputs[chosen & (u_kind < 0.8)] = mask_id
    swap = chosen & (u_kind >= 0.8) & (u_kind < 0.9)
    inputs[swap] = random_ids[swap]
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs, labels


def variant(inputs_fn=None, labels_fn=None):
    def fn(ids, u1, u2, rnd, mask_id, p):
        inputs, labels = mlm_masking(ids, u1, u2, rnd, mask_id, p)
        chosen = u1 < p
        if inputs_fn is not None:
            inputs = inputs_fn(ids, u1, u2, rnd, mask_id, p, chosen)
        if labels_fn is not None:
            labels = labels_fn(ids, inputs, chosen)
        return inputs, labels
    return fn


def all_mask(ids, u1, u2, rnd, mask_id, p, chosen):
    return ids.masked_fill(chosen, mask_id)


def swapped(ids, u1, u2, rnd, mask_id, p, chosen):
    x = ids.clone()
    x[chosen & (u2 < 0.8)] = mask_id
    x[chosen & (u2 >= 0.9)] = rnd[chosen & (u2 >= 0.9)]
    return x


def unchosen_too(ids, u1, u2, rnd, mask_id, p, chosen):
    x = ids.clone()
    x[u2 < 0.8] = mask_id
    x[(u2 >= 0.8) & (u2 < 0.9)] = rnd[(u2 >= 0.8) & (u2 < 0.9)]
    return x


def random_everywhere(ids, u1, u2, rnd, mask_id, p, chosen):
    x = ids.clone()
    x[chosen & (u2 < 0.8)] = mask_id
    x[(u2 >= 0.8) & (u2 < 0.9)] = rnd[(u2 >= 0.8) & (u2 < 0.9)]
    return x


def over_p(ids, u1, u2, rnd, mask_id, p):
    return mlm_masking(ids, 1 - u1, u2, rnd, mask_id, 1 - p)


def masking_in_place(ids, u1, u2, rnd, mask_id, p):
    out = mlm_masking(ids, u1, u2, rnd, mask_id, p)
    ids[u1 < p] = mask_id
    return out


def masking_le(select=False, kind=False):
    def fn(ids, u1, u2, rnd, mask_id, p):
        chosen = u1 <= p if select else u1 < p
        first = u2 <= 0.8 if kind else u2 < 0.8
        second = ((u2 > 0.8) & (u2 <= 0.9)) if kind else ((u2 >= 0.8) & (u2 < 0.9))
        x = ids.clone()
        x[chosen & first] = mask_id
        x[chosen & second] = rnd[chosen & second]
        return x, torch.where(chosen, ids, torch.full_like(ids, -100))
    return fn


def other_partition(ids, u1, u2, rnd, mask_id, p):  # 80/10/10, but not the ranges asked for
    chosen = u1 < p
    x = ids.clone()
    x[chosen & (u2 >= 0.2)] = mask_id
    x[chosen & (u2 < 0.1)] = rnd[chosen & (u2 < 0.1)]
    return x, torch.where(chosen, ids, torch.full_like(ids, -100))


def masked_with_zeros(ids, u1, u2, rnd, mask_id, p):
    inputs, labels = mlm_masking(ids, u1, u2, rnd, mask_id, p)
    return inputs.masked_fill(inputs == mask_id, 0), labels


W2 = [
    Wrong("mlm_masking", "labels_all", variant(labels_fn=lambda ids, x, c: ids)),
    Wrong("mlm_masking", "labels_zero", variant(labels_fn=lambda ids, x, c: torch.where(
        c, ids, torch.zeros_like(ids)))),
    Wrong("mlm_masking", "labels_corrupted", variant(labels_fn=lambda ids, x, c: torch.where(
        c, x, torch.full_like(ids, -100)))),
    Wrong("mlm_masking", "labels_inverted", variant(labels_fn=lambda ids, x, c: torch.where(
        c, torch.full_like(ids, -100), ids))),
    Wrong("mlm_masking", "all_mask", variant(inputs_fn=all_mask)),
    Wrong("mlm_masking", "swapped", variant(inputs_fn=swapped)),
    Wrong("mlm_masking", "unchosen", variant(inputs_fn=unchosen_too)),
    Wrong("mlm_masking", "random_unchosen", variant(inputs_fn=random_everywhere)),
    Wrong("mlm_masking", "over_p", over_p),
    Wrong("mlm_masking", "le_select", masking_le(select=True)),
    Wrong("mlm_masking", "le_kind", masking_le(kind=True)),
    Wrong("mlm_masking", "not_pair", lambda *a: mlm_masking(*a)[0]),
    Wrong("mlm_masking", "dtype", lambda *a: (mlm_masking(*a)[0], mlm_masking(*a)[1].float())),
    Wrong("mlm_masking", "inplace", masking_in_place),
]

# ----------------------------------------------------------------- exercise 3: wordpiece_greedy


def wordpiece_greedy(word, vocab, on_fail=lambda pieces: ["[UNK]"], prefix_first=False,
                     prefix_rest=True, go_on=None):
    """Right by default; each keyword is one student's slip. `go_on`: at a character that
    starts no piece, "skip" it or put "[UNK]" for it and carry on, instead of `on_fail`."""
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            hashed = (start > 0 and prefix_rest) or (start == 0 and prefix_first)
            piece = ("##" if hashed else "") + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            if go_on is None:
                return on_fail(pieces)
            if go_on == "unk":
                pieces.append("[UNK]")
            start += 1
            continue
        pieces.append(piece)
        start = end
    return pieces


def shortest_first(word, vocab):  # the shortest piece that matches, not the longest
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def right_to_left(word, vocab):  # longest match from the end of the word backwards
    pieces, end = [], len(word)
    while end > 0:
        for start in range(end):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return ["[UNK]"]
        pieces.insert(0, piece)
        end = start
    return pieces


def plain_lookup(word, vocab):  # looks up later pieces without '##', returns them with it
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and word[start:end] not in vocab:
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(word[start:end] if start == 0 else "##" + word[start:end])
        start = end
    return pieces


def backtracking(word, vocab):  # a shorter piece when the longest leads to no full cut
    def cut(start):
        if start == len(word):
            return []
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            rest = cut(end) if piece in vocab else None
            if rest is not None:
                return [piece] + rest
        return None

    pieces = cut(0)
    return ["[UNK]"] if pieces is None else pieces


W3 = [
    Wrong("wordpiece_greedy", "shortest", shortest_first),
    Wrong("wordpiece_greedy", "no_hash", lambda w, v: wordpiece_greedy(w, v, prefix_rest=False)),
    Wrong("wordpiece_greedy", "no_hash", plain_lookup),
    Wrong("wordpiece_greedy", "backtrack", backtracking),
    Wrong("wordpiece_greedy", "hash_first", lambda w, v: wordpiece_greedy(w, v, prefix_first=True)),
    Wrong("wordpiece_greedy", "piece_unk", lambda w, v: wordpiece_greedy(w, v, go_on="unk")),
    Wrong("wordpiece_greedy", "skip", lambda w, v: wordpiece_greedy(w, v, go_on="skip")),
    Wrong("wordpiece_greedy", "empty", lambda w, v: wordpiece_greedy(w, v, lambda p: [])),
    Wrong("wordpiece_greedy", "prefix_unk", lambda w, v: wordpiece_greedy(
        w, v, lambda p: p + ["[UNK]"])),
    Wrong("wordpiece_greedy", "right_to_left", right_to_left),
    Wrong("wordpiece_greedy", "whole_word", lambda w, v: [w] if w in v else ["[UNK]"]),
    Wrong("wordpiece_greedy", "chars", lambda w, v: list(w) if all(
        c in v or "##" + c in v for c in w) else ["[UNK]"]),
    Wrong("wordpiece_greedy", "string", lambda w, v: " ".join(wordpiece_greedy(w, v))),
    Wrong("wordpiece_greedy", "not_list", lambda w, v: tuple(wordpiece_greedy(w, v))),
]

# ----------------------------------------------------------------- exercise 4: mean_pool


def mean_pool(h, m):
    m = m[:, :, None].to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1)


def summed(h, m):
    return (h * m[:, :, None]).sum(1)


def pool_by_length(h, m):  # assumes the padding is at the end
    return torch.stack([h[b, : int(n)].mean(0) for b, n in enumerate(m.sum(1))])


def pool_in_place(h, m):
    h *= m[:, :, None]
    return h.sum(1) / m.sum(1, keepdim=True)


W4 = [
    Wrong("mean_pool", "mean_all", lambda h, m: h.mean(dim=1)),
    Wrong("mean_pool", "no_divide", summed),
    Wrong("mean_pool", "divide_T", lambda h, m: summed(h, m) / h.shape[1]),
    Wrong("mean_pool", "divide_T", lambda h, m: (h * m[:, :, None]).mean(dim=1)),
    Wrong("mean_pool", "batch_total", lambda h, m: summed(h, m) / m.sum()),
    Wrong("mean_pool", "max_pool", lambda h, m: h.masked_fill(m[:, :, None] == 0,
                                                              float("-inf")).amax(1)),
    Wrong("mean_pool", "cls", lambda h, m: h[:, 0]),
    Wrong("mean_pool", "last", lambda h, m: h[torch.arange(h.shape[0]), m.sum(1) - 1]),
    Wrong("mean_pool", "normalised", lambda h, m: F.normalize(mean_pool(h, m), dim=-1)),
    Wrong("mean_pool", "right_only", pool_by_length),
    Wrong("mean_pool", "shape", lambda h, m: h[m.bool()].mean(dim=0)),
    Wrong("mean_pool", "shape", lambda h, m: mean_pool(h, m)[:, None]),
    Wrong("mean_pool", "inplace", pool_in_place),
]

# ----------------------------------------------------------------- exercise 5: cosine_top_k


def cosine_top_k(query, keys, k):
    sims = F.normalize(keys, dim=-1) @ F.normalize(query, dim=0)
    return torch.topk(sims, k).indices


def sims(q, K):
    return F.normalize(K, dim=-1) @ F.normalize(q, dim=0)


def top_k_in_place(q, K, k):
    K /= K.norm(dim=-1, keepdim=True)
    return torch.topk(K @ q, k).indices


W5 = [
    Wrong("cosine_top_k", "dot", lambda q, K, k: torch.topk(K @ q, k).indices),
    Wrong("cosine_top_k", "euclid", lambda q, K, k: (K - q).norm(dim=-1).argsort()[:k]),
    Wrong("cosine_top_k", "least", lambda q, K, k: sims(q, K).argsort()[:k]),
    Wrong("cosine_top_k", "by_index", lambda q, K, k: torch.topk(sims(q, K), k).indices.sort()
          .values),
    Wrong("cosine_top_k", "dim0", lambda q, K, k: torch.topk(F.normalize(K, dim=0) @ q, k)
          .indices),
    Wrong("cosine_top_k", "values", lambda q, K, k: torch.topk(sims(q, K), k).values),
    Wrong("cosine_top_k", "count", lambda q, K, k: sims(q, K).argsort(descending=True)[1 : k + 1]),
    Wrong("cosine_top_k", "count", lambda q, K, k: torch.topk(sims(q, K), min(k + 1, len(K)))
          .indices),
    Wrong("cosine_top_k", "dtype", lambda q, K, k: torch.topk(sims(q, K), k).indices.int()),
    Wrong("cosine_top_k", "inplace", top_k_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5
SOLUTIONS = {"bidirectional_mask": bidirectional_mask, "mlm_masking": mlm_masking,
             "wordpiece_greedy": wordpiece_greedy, "mean_pool": mean_pool,
             "cosine_top_k": cosine_top_k}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch10, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch10, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch10, wrong)


def test_catalogue_complete():
    assert_complete(ch10, CATALOGUE, SOLUTIONS)


def test_alternatives_pass(capsys):
    ch10.check_bidirectional_mask(lambda m: (m[:, None, :] == 1).repeat(1, m.shape[1], 1))
    ch10.check_cosine_top_k(lambda q, K, k: (K @ q / K.norm(dim=-1)).argsort(descending=True)[:k])
    ch10.check_cosine_top_k(lambda q, K, k: torch.topk(F.normalize(K, dim=-1) @ q, k).indices)
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.parametrize("check, wrong, message", [
    # a wrong bool mask the table has no entry for: the position message, not a crash
    (ch10.check_bidirectional_mask, lambda m: (m.bool()[:, :, None] & m.bool()[:, None, :])
     | torch.eye(m.shape[1], dtype=torch.bool),
     r"wrong values, .* \(expected (True|False), got (True|False)\)"),
    # indices are named as integers (they read 'expected 0.000000, got 6.000000')
    (ch10.check_cosine_top_k, lambda q, K, k: sims(q, K).argsort()[-k:],
     r"wrong values, .* \(expected \d+, got \d+\)"),
    (ch10.check_wordpiece_greedy, lambda w, v: wordpiece_greedy(w, v)[:-1] if len(w) > 3
     else wordpiece_greedy(w, v), "expected"),
    (ch10.check_mean_pool, lambda h, m: mean_pool(h, m).double(), "expected dtype"),
    # wrong answers that coincide with a catalogued mistake on one case only get the value
    # message, not that mistake's hint ('every entry is True', 'every chosen position became
    # [MASK]', 'you divided by T'), which would send the student after the wrong bug
    (ch10.check_bidirectional_mask, lambda m: bidirectional_mask(m[:1].expand(len(m), -1)),
     r"wrong values, .* \(expected (True|False), got (True|False)\)"),
    (ch10.check_mlm_masking, other_partition, r"inputs\[\d+, \d+\] is \d+, expected"),
    (ch10.check_mean_pool, lambda h, m: summed(h, m) / m[0].sum(), r"wrong values, largest"),
    # a missing return is named as such (was 'returned NoneType: return a pair')
    (ch10.check_mlm_masking, lambda *a: None, "did you forget `return`"),
    (ch10.check_wordpiece_greedy, lambda w, v: None, "did you forget `return`"),
    # zeros where mask_id belongs (passed while every case used mask_id = 0)
    (ch10.check_mlm_masking, masked_with_zeros, r"inputs\[\d+, \d+\] is 0, expected"),
])
def test_other_wrong_answers_are_rejected(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_wordpiece_catalogue_variants_differ_from_the_right_answer():
    """Each modelled mistake gives a different answer on at least one of the checker's words."""
    from lmkit.wordpiece import wordpiece

    variants = [w.fn for w in W3 if w.mistake in (
        "shortest", "no_hash", "backtrack", "hash_first", "piece_unk", "skip", "empty",
        "prefix_unk", "right_to_left")]
    assert len(variants) == 10
    for v in variants:
        assert any(v(w, ch10._VOCAB) != wordpiece(w, ch10._VOCAB) for w in ch10._WORDS)
    assert all(wordpiece_greedy(w, ch10._VOCAB) == wordpiece(w, ch10._VOCAB) for w in ch10._WORDS)
