"""The chapter 10 checkers accept right answers and reject typical mistakes with a useful hint."""

import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch10


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


CHECKS = [ch10.check_bidirectional_mask, ch10.check_mlm_masking, ch10.check_wordpiece_greedy,
          ch10.check_mean_pool, ch10.check_cosine_top_k]


@pytest.mark.parametrize("check", CHECKS)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def rejects(check, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        check(fn)


# ----------------------------------------------------------------------------- exercise 1


def bidirectional_mask(m):
    B, T = m.shape
    return m.bool()[:, None, :].expand(B, T, T)


def test_bidirectional_mask(capsys):
    ch10.check_bidirectional_mask(bidirectional_mask)
    ch10.check_bidirectional_mask(lambda m: (m[:, None, :] == 1).repeat(1, m.shape[1], 1))
    assert capsys.readouterr().out.count("✓ bidirectional_mask") == 2
    T = lambda m: m.shape[1]  # noqa: E731
    tril = lambda m: torch.ones(T(m), T(m), dtype=torch.bool).tril()  # noqa: E731
    catalogue = [
        (lambda m: torch.ones(m.shape[0], T(m), T(m), dtype=torch.bool), "padding tokens are visible"),
        (lambda m: bidirectional_mask(m) & tril(m), "causal mask \\(with padding\\)"),
        (lambda m: tril(m).expand(m.shape[0], T(m), T(m)), "causal mask of chapter 03"),
        (lambda m: bidirectional_mask(m) & tril(m).T, "transposed causal mask"),
        (lambda m: m.bool()[:, :, None].expand(-1, T(m), T(m)), "padding \\*queries\\*"),
        (lambda m: m.bool()[:, :, None] & m.bool()[:, None, :], "NaN"),
        (lambda m: ~bidirectional_mask(m), "inverted"),
        (lambda m: torch.eye(T(m), dtype=torch.bool).expand(m.shape[0], -1, -1), "diagonal"),
        (lambda m: bidirectional_mask(m).long(), "dtype is torch.int64"),
        (lambda m: m.bool(), "expected shape \\(B, T, T\\)"),
        (lambda m: m.bool()[:, None, :], "expected shape \\(B, T, T\\)"),
    ]
    for wrong, hint in catalogue:
        rejects(ch10.check_bidirectional_mask, wrong, hint)

    def in_place(m):
        m[:] = 1
        return bidirectional_mask(m)

    rejects(ch10.check_bidirectional_mask, in_place, "changed one of its input tensors")


# ----------------------------------------------------------------------------- exercise 2


def mlm_masking(ids, u_select, u_kind, random_ids, mask_id, p):
    chosen = u_select < p
    inputs = ids.clone()
    inputs[chosen & (u_kind < 0.8)] = mask_id
    swap = chosen & (u_kind >= 0.8) & (u_kind < 0.9)
    inputs[swap] = random_ids[swap]
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs, labels


def test_mlm_masking(capsys):
    ch10.check_mlm_masking(mlm_masking)
    assert "✓ mlm_masking" in capsys.readouterr().out

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

    def in_place(ids, u1, u2, rnd, mask_id, p):
        out = mlm_masking(ids, u1, u2, rnd, mask_id, p)
        ids[u1 < p] = mask_id
        return out

    catalogue = [
        (variant(labels_fn=lambda ids, x, c: ids), "Put -100 where nothing was chosen"),
        (variant(labels_fn=lambda ids, x, c: torch.where(c, ids, torch.zeros_like(ids))),
         "not 0"),
        (variant(labels_fn=lambda ids, x, c: torch.where(c, x, torch.full_like(ids, -100))),
         "ORIGINAL token"),
        (variant(labels_fn=lambda ids, x, c: torch.where(c, torch.full_like(ids, -100), ids)),
         "labels are inverted"),
        (variant(inputs_fn=all_mask), "80% \\[MASK\\]"),
        (variant(inputs_fn=swapped), "swapped the two"),
        (variant(inputs_fn=unchosen_too), "not chosen"),
        (variant(inputs_fn=random_everywhere), "random tokens also went to unchosen"),
        (over_p, "u_select >= p"),
        (in_place, "changed one of its input tensors"),
        (lambda *a: mlm_masking(*a)[0], "should return a pair"),
        (lambda *a: (mlm_masking(*a)[0], mlm_masking(*a)[1].float()), "labels should be a "
                                                                       "torch.int64 tensor"),
    ]
    for wrong, hint in catalogue:
        rejects(ch10.check_mlm_masking, wrong, hint)


# ----------------------------------------------------------------------------- exercise 3


def wordpiece_greedy(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def test_wordpiece_greedy(capsys):
    ch10.check_wordpiece_greedy(wordpiece_greedy)
    assert "✓ wordpiece_greedy" in capsys.readouterr().out
    catalogue = [
        (ch10._shortest_first, "SHORTEST"),
        (lambda w, v: ch10._greedy(w, v, prefix_rest=False), "with the '##' prefix"),
        (lambda w, v: ch10._greedy(w, v, prefix_first=True), "first piece of a word has no"),
        (lambda w, v: ch10._greedy(w, v, on_fail="piece_unk"), "WHOLE word"),
        (lambda w, v: ch10._greedy(w, v, on_fail="skip"), "skipped the character"),
        (lambda w, v: ch10._greedy(w, v, on_fail="empty"), "not an empty list"),
        (ch10._right_to_left, "from the end of the word"),
        (lambda w, v: [w] if w in v else ["[UNK]"], "only looked up the whole word"),
        (lambda w, v: " ".join(wordpiece_greedy(w, v)), "return a list of pieces"),
        (lambda w, v: tuple(wordpiece_greedy(w, v)), "should return a list"),
        (lambda w, v: wordpiece_greedy(w, v)[:-1] if len(w) > 3 else wordpiece_greedy(w, v),
         "expected"),
    ]
    for wrong, hint in catalogue:
        rejects(ch10.check_wordpiece_greedy, wrong, hint)


def test_wordpiece_catalogue_variants_differ_from_the_right_answer():
    """Each modelled mistake gives a different answer on at least one of the checker's words."""
    from lmkit.wordpiece import wordpiece

    variants = [ch10._shortest_first, ch10._right_to_left,
                lambda w, v: ch10._greedy(w, v, prefix_rest=False),
                lambda w, v: ch10._greedy(w, v, prefix_first=True),
                lambda w, v: ch10._greedy(w, v, on_fail="piece_unk"),
                lambda w, v: ch10._greedy(w, v, on_fail="skip"),
                lambda w, v: ch10._greedy(w, v, on_fail="empty"),
                lambda w, v: ch10._greedy(w, v, on_fail="prefix_unk")]
    for v in variants:
        assert any(v(w, ch10._VOCAB) != wordpiece(w, ch10._VOCAB) for w in ch10._WORDS)
    assert ch10._greedy("unaffable", ch10._VOCAB) == wordpiece("unaffable", ch10._VOCAB)


# ----------------------------------------------------------------------------- exercise 4


def mean_pool(h, m):
    m = m[:, :, None].to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1)


def test_mean_pool(capsys):
    ch10.check_mean_pool(mean_pool)
    assert "✓ mean_pool" in capsys.readouterr().out

    def summed(h, m):
        return (h * m[:, :, None]).sum(1)

    def in_place(h, m):
        h *= m[:, :, None]
        return h.sum(1) / m.sum(1, keepdim=True)

    catalogue = [
        (lambda h, m: h.mean(dim=1), "padding included"),
        (summed, "did not divide"),
        (lambda h, m: summed(h, m) / h.shape[1], "you divided by T"),
        (lambda h, m: summed(h, m) / m.sum(), "whole batch"),
        (lambda h, m: h.masked_fill(m[:, :, None] == 0, float("-inf")).amax(1), "max pooling"),
        (lambda h, m: h[:, 0], "first token"),
        (lambda h, m: h[torch.arange(h.shape[0]), m.sum(1) - 1], "last real token"),
        (lambda h, m: F.normalize(mean_pool(h, m), dim=-1), "L2-normalised"),
        (lambda h, m: (h * m[:, :, None]).mean(dim=1), r"\(h \* mask\).mean\(dim=1\) does"),
        (lambda h, m: h[m.bool()].mean(dim=0), "expected shape"),
        (lambda h, m: mean_pool(h, m).sum(dim=-1), "average over dim 1"),
        (lambda h, m: mean_pool(h, m).double(), "expected dtype"),
        (in_place, "changed one of its input tensors"),
    ]
    for wrong, hint in catalogue:
        rejects(ch10.check_mean_pool, wrong, hint)


# ----------------------------------------------------------------------------- exercise 5


def cosine_top_k(query, keys, k):
    sims = F.normalize(keys, dim=-1) @ F.normalize(query, dim=0)
    return torch.topk(sims, k).indices


def test_cosine_top_k(capsys):
    ch10.check_cosine_top_k(cosine_top_k)
    ch10.check_cosine_top_k(lambda q, K, k: (K @ q / K.norm(dim=-1)).argsort(descending=True)[:k])
    assert capsys.readouterr().out.count("✓ cosine_top_k") == 2

    def sims(q, K):
        return F.normalize(K, dim=-1) @ F.normalize(q, dim=0)

    def in_place(q, K, k):
        K /= K.norm(dim=-1, keepdim=True)
        return torch.topk(K @ q, k).indices

    catalogue = [
        (lambda q, K, k: torch.topk(K @ q, k).indices, "raw dot product"),
        (lambda q, K, k: (K - q).norm(dim=-1).argsort()[:k], "Euclidean distance"),
        (lambda q, K, k: sims(q, K).argsort()[:k], "LEAST similar"),
        (lambda q, K, k: torch.topk(sims(q, K), k).indices.sort().values, "sorted by index"),
        (lambda q, K, k: torch.topk(F.normalize(K, dim=0) @ q, k).indices, "over dim 0"),
        (lambda q, K, k: sims(q, K).argsort(descending=True)[1 : k + 1], "expected 7 indices"),
        (lambda q, K, k: torch.topk(sims(q, K), k).values, "returned the similarities"),
        (lambda q, K, k: torch.topk(sims(q, K), min(k + 1, len(K))).indices, "expected .* indices"),
        (lambda q, K, k: torch.topk(sims(q, K), k).indices.int(), "LongTensor"),
        (in_place, "changed one of its input tensors"),
    ]
    for wrong, hint in catalogue:
        rejects(ch10.check_cosine_top_k, wrong, hint)


# ----------------------------------------------------------------------------- review (rev0910)


def lengths_mask(m):  # assumes the padding is at the end
    B, T = m.shape
    return (torch.arange(T)[None, None, :] < m.sum(1)[:, None, None]).expand(B, T, T)


def pool_by_length(h, m):  # assumes the padding is at the end
    return torch.stack([h[b, : int(n)].mean(0) for b, n in enumerate(m.sum(1))])


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


def pieces_then_unk(word, vocab):  # keeps the pieces found before the failure
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return pieces + ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def padding_queries_see_themselves(m):  # a bool mask the checker has no hint for
    T = m.shape[1]
    return (m.bool()[:, :, None] & m.bool()[:, None, :]) | torch.eye(T, dtype=torch.bool)


@pytest.mark.parametrize("check, wrong, hint", [
    (ch10.check_bidirectional_mask, lengths_mask, "padded on the LEFT"),
    (ch10.check_mean_pool, pool_by_length, "padded on the LEFT"),
    (ch10.check_mlm_masking, masking_le(select=True), "u_select exactly p was chosen"),
    (ch10.check_mlm_masking, masking_le(kind=True), "the boundaries of u_kind"),
    (ch10.check_wordpiece_greedy, pieces_then_unk, "drop the pieces you found before it"),
    (ch10.check_bidirectional_mask, padding_queries_see_themselves, "wrong values"),
], ids=["mask-right-padding-only", "pool-right-padding-only", "select-boundary",
        "kind-boundaries", "pieces-then-unk", "unknown-bool-mask-no-crash"])
def test_review_wrong_answers(check, wrong, hint):
    rejects(check, wrong, hint)


def test_left_padding_right_answers_pass(capsys):
    ch10.check_bidirectional_mask(bidirectional_mask)
    ch10.check_mean_pool(mean_pool)
    ch10.check_mlm_masking(mlm_masking)
    ch10.check_wordpiece_greedy(wordpiece_greedy)
    assert capsys.readouterr().out.count("✓") == 4
