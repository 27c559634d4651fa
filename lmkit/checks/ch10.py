"""Checkers for the chapter 10 exercises (encoders)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mlm import IGNORE_INDEX, apply_masking
from ..model import mean_pool
from ..wordpiece import wordpiece
from .common import call_tensors, close, compare, fail, passed, shape_of, unchanged

__all__ = ["check_bidirectional_mask", "check_mlm_masking", "check_wordpiece_greedy",
           "check_mean_pool", "check_cosine_top_k"]


def _padding(lengths: list[int], T: int, left: bool = False) -> Tensor:
    m = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    return m.flip(1) if left else m  # left padding: the real tokens at the end


_RIGHT_ONLY = ("padding is not always at the end: this batch is padded on the LEFT (as some "
               "tokenizers do), so the first attention_mask.sum() positions are not the real "
               "ones. Use attention_mask itself, position by position, not the lengths")


# ----------------------------------------------------------------------------- exercise 1


def _wrong_masks(m: Tensor) -> list[tuple[Tensor, str]]:
    B, T = m.shape
    keys = m.bool()[:, None, :].expand(B, T, T)  # the right answer
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    return [
        (torch.ones(B, T, T, dtype=torch.bool),
         "every entry is True: the padding tokens are visible. Key j may be attended to only "
         "if attention_mask[b, j] is 1"),
        (keys & tril,
         "that is the causal mask (with padding): an encoder is bidirectional, query i may "
         "attend to later keys j > i too"),
        (tril.expand(B, T, T),
         "that is the causal mask of chapter 03, and it ignores the padding: an encoder lets "
         "every query see every real key, before and after it"),
        (keys & ~tril | torch.eye(T, dtype=torch.bool) & keys,
         "only keys at or after the query are allowed (the transposed causal mask); an encoder "
         "sees both directions"),
        (m.bool()[:, :, None].expand(B, T, T),
         "you masked the padding *queries* (rows) instead of the padding *keys* (columns): "
         "entry [b, i, j] says whether query i may look at key j, so it depends on "
         "attention_mask[b, j]"),
        (m.bool()[:, :, None] & m.bool()[:, None, :],
         "you also blocked the padding queries' rows completely: a row with no visible key "
         "gives a softmax of 0/0 = NaN. Mask only the keys (columns); the outputs at padding "
         "positions are simply ignored later"),
        (~keys,
         "the mask is inverted: True must mean 'may attend' (lmkit's and PyTorch's SDPA "
         "convention), so real keys are True and padding keys False"),
        (torch.eye(T, dtype=torch.bool).expand(B, T, T),
         "only the diagonal is True: each query would see itself only. In an encoder every "
         "query sees every real key"),
    ]


def check_bidirectional_mask(fn) -> None:
    """Exercise 1: fn(attention_mask (B, T) of 0/1) -> boolean (B, T, T), True = may attend."""
    cases = [([4, 2, 3], 4, False), ([5], 5, False), ([1, 6], 6, False), ([3, 3], 3, False),
             ([2, 7, 5, 1], 7, False), ([2, 4, 3], 4, True)]
    for lengths, T, left in cases:
        m = _padding(lengths, T, left)
        before = m.clone()
        got = call_tensors(fn, m, name="bidirectional_mask")
        unchanged("bidirectional_mask", [before], [m], "attention_mask")
        want = m.bool()[:, None, :].expand(len(lengths), T, T)
        case = (f"attention_mask of shape {tuple(m.shape)} (real lengths {lengths}"
                + (", padded on the left)" if left else ")"))
        if isinstance(got, Tensor) and got.dtype != torch.bool and got.shape == want.shape:
            if torch.equal(got.bool(), want) or torch.equal(got.ne(0), want):
                fail(f"bidirectional_mask on {case}: the values are right but the dtype is "
                     f"{got.dtype}; return a boolean mask (e.g. `.bool()`), as attention's "
                     "masked_fill(~mask, -inf) needs")
        if isinstance(got, Tensor) and got.shape in ((len(lengths), T), (len(lengths), 1, T)):
            fail(f"bidirectional_mask on {case}: expected shape (B, T, T) = "
                 f"{(len(lengths), T, T)}, got {shape_of(got)}: one row per query i and one "
                 "column per key j (use expand, or compare against a (B, 1, T) view)")
        mistakes = _wrong_masks(m)
        if left:
            mistakes.append((_padding(lengths, T).bool()[:, None, :].expand(len(lengths), T, T),
                             _RIGHT_ONLY))
        if isinstance(got, Tensor) and got.dtype == torch.bool:  # compare as 0/1: a bool
            got, want = got.long(), want.long()  # tensor cannot be subtracted for the message
            mistakes = [(w.long(), hint) for w, hint in mistakes]
        compare("bidirectional_mask", case, got, want, mistakes,
                shape_hint="One (T, T) matrix per sequence: [b, i, j] says whether query i "
                           "may attend to key j.")
    passed("bidirectional_mask", len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _wrong_maskings(ids, u1, u2, rnd, mask_id, p):
    chosen = u1 < p
    ign = torch.full_like(ids, IGNORE_INDEX)
    right_in, right_lab = apply_masking(ids, u1, u2, rnd, mask_id, p)
    all_mask = ids.masked_fill(chosen, mask_id)
    swapped = ids.clone()
    swapped[chosen & (u2 < 0.8)] = mask_id
    swapped[chosen & (u2 >= 0.9)] = rnd[chosen & (u2 >= 0.9)]
    every = ids.clone()
    every[u2 < 0.8] = mask_id
    every[(u2 >= 0.8) & (u2 < 0.9)] = rnd[(u2 >= 0.8) & (u2 < 0.9)]
    rand_all = ids.clone()
    rand_all[chosen & (u2 < 0.8)] = mask_id
    sel = (u2 >= 0.8) & (u2 < 0.9)
    rand_all[sel] = rnd[sel]
    inv_in, inv_lab = apply_masking(ids, 1 - u1, u2, rnd, mask_id, 1 - p)
    le_select = _masking_le(ids, u1, u2, rnd, mask_id, p, select=True)
    le_kind = _masking_le(ids, u1, u2, rnd, mask_id, p, kind=True)
    return [
        (le_select,
         "a position with u_select exactly p was chosen: the rule is strict, u_select < p "
         "(u_select <= p chooses one position too many now and then)"),
        (le_kind,
         "the boundaries of u_kind: [MASK] when u_kind < 0.8 (strictly), a random token when "
         "0.8 <= u_kind < 0.9, so u_kind == 0.8 gets a random token and u_kind == 0.9 stays "
         "unchanged"),
        ((right_in, ids),
         "labels: every position keeps its token, so the loss would count the positions the "
         "model can simply copy. Put -100 where nothing was chosen"),
        ((right_in, torch.where(chosen, ids, torch.zeros_like(ids))),
         "labels: unchosen positions must be -100 (cross-entropy's ignore_index), not 0, which "
         "is a real token id"),
        ((right_in, torch.where(chosen, right_in, ign)),
         "labels: at the chosen positions the label is the ORIGINAL token (ids), not the "
         "corrupted input ([MASK] or the random token)"),
        ((all_mask, right_lab),
         "inputs: every chosen position became [MASK]; BERT's rule is 80% [MASK] (u_kind < "
         "0.8), 10% random token (0.8 <= u_kind < 0.9), 10% unchanged"),
        ((swapped, right_lab),
         "inputs: the random token goes where 0.8 <= u_kind < 0.9, and positions with "
         "u_kind >= 0.9 stay unchanged (you swapped the two)"),
        ((every, torch.where(chosen, ids, ign)),
         "inputs: you replaced positions that were not chosen; only positions with "
         "u_select < p may change"),
        ((rand_all, right_lab),
         "inputs: random tokens also went to unchosen positions; combine the u_kind test with "
         "the chosen positions (u_select < p)"),
        ((inv_in, inv_lab),
         "you chose the positions with u_select >= p (85% of them); choose u_select < p"),
        ((right_in, torch.where(chosen, ign, ids)),
         "labels are inverted: -100 goes where nothing was chosen, the original token where "
         "something was"),
    ]


def _masking_le(ids, u1, u2, rnd, mask_id, p, select=False, kind=False):
    """The masking rule with <= where it says < (the boundary slips)."""
    chosen = u1 <= p if select else u1 < p
    first = u2 <= 0.8 if kind else u2 < 0.8
    second = ((u2 > 0.8) & (u2 <= 0.9)) if kind else ((u2 >= 0.8) & (u2 < 0.9))
    inputs = ids.clone()
    inputs[chosen & first] = mask_id
    inputs[chosen & second] = rnd[chosen & second]
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))


def check_mlm_masking(fn) -> None:
    """Exercise 2: fn(ids, u_select, u_kind, random_ids, mask_id, p) -> (inputs, labels)."""
    g = torch.Generator().manual_seed(0)
    cases = [(2, 12, 50, 0.15), (4, 40, 100, 0.15), (1, 8, 20, 0.5), (3, 25, 1000, 0.3)]
    for B, T, V, p in cases:
        ids = torch.randint(1, V, (B, T), generator=g)
        u1, u2 = torch.rand(B, T, generator=g), torch.rand(B, T, generator=g)
        # the boundaries exactly: u_select == p (not chosen); chosen with u_kind == 0.8 (a
        # random token) and u_kind == 0.9 (unchanged)
        u1[0, 0], u2[0, 0] = p, 0.5
        u1[0, 1], u2[0, 1] = 0.0, 0.8
        u1[0, 2], u2[0, 2] = 0.0, 0.9
        rnd = torch.randint(1, V, (B, T), generator=g)
        mask_id = 0
        args = [ids, u1, u2, rnd]
        before = [a.clone() for a in args]
        got = call_tensors(fn, *[a for a in args], mask_id, p, name="mlm_masking")
        unchanged("mlm_masking", before, args, "ids: start from ids.clone()")
        case = f"ids of shape {(B, T)}, p={p}"
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"mlm_masking on {case} should return a pair (inputs, labels), got "
                 f"{type(got).__name__}")
        want = apply_masking(ids, u1, u2, rnd, mask_id, p)
        if all(isinstance(t, Tensor) and t.dtype == w.dtype and torch.equal(t, w)
               for t, w in zip(got, want)):
            continue
        for (w_in, w_lab), hint in _wrong_maskings(ids, u1, u2, rnd, mask_id, p):
            if all(isinstance(t, Tensor) and t.shape == w.shape and t.dtype == w.dtype
                   and torch.equal(t, w) for t, w in zip(got, (w_in, w_lab))):
                fail(f"mlm_masking on {case}: {hint}")
        for what, t, w in zip(("inputs", "labels"), got, want):
            if not isinstance(t, Tensor) or t.shape != w.shape or t.dtype != w.dtype:
                fail(f"mlm_masking on {case}: {what} should be a {w.dtype} tensor of shape "
                     f"{tuple(w.shape)}, got {shape_of(t)}"
                     + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else ""))
            if not torch.equal(t, w):
                b, i = divmod(int((t != w).flatten().nonzero()[0]), T)
                fail(f"mlm_masking on {case}: {what}[{b}, {i}] is {int(t[b, i])}, expected "
                     f"{int(w[b, i])} (u_select={u1[b, i]:.3f}, u_kind={u2[b, i]:.3f}, "
                     f"ids={int(ids[b, i])}, random_ids={int(rnd[b, i])})")
    passed("mlm_masking", len(cases))


# ----------------------------------------------------------------------------- exercise 3


def _shortest_first(word, vocab):
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


def _greedy(word, vocab, prefix_first=False, prefix_rest=True, on_fail="unk"):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            pre = "##" if (start > 0 and prefix_rest) or (start == 0 and prefix_first) else ""
            if pre + word[start:end] in vocab:
                break
            end -= 1
        if end == start:
            if on_fail == "unk":
                return ["[UNK]"]
            if on_fail == "empty":
                return []
            if on_fail == "prefix_unk":
                return pieces + ["[UNK]"]
            if on_fail == "piece_unk":
                pieces.append("[UNK]")
            start += 1  # "skip" and "piece_unk" go on after the character
            continue
        pieces.append(pre + word[start:end])
        start = end
    return pieces


def _right_to_left(word, vocab):
    pieces, end = [], len(word)
    while end > 0:
        start = 0
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            start += 1
        if start == end:
            return ["[UNK]"]
        pieces.insert(0, piece)
        end = start
    return pieces


_VOCAB = {"[UNK]", "un", "una", "##aff", "##able", "##ffable", "##a", "##f", "##b", "##l", "##e",
          "a", "f", "play", "##ing", "##in", "##g", "##s", "p", "##lay", "pla", "##y", "##er",
          "aff", "able", "b", "##p", "x", "##x", "##yer"}

_WORDS = ["unaffable", "playing", "plays", "player", "a", "unx", "zebra", "aaa", "play",
          "playingx", "fab", "x" * 30, "pax", "playz"]


def check_wordpiece_greedy(fn) -> None:
    """Exercise 3: fn(word, vocab) -> WordPiece pieces, greedy longest-match-first, ## and [UNK]."""
    wrong = [
        (_shortest_first, "you took the SHORTEST matching piece; WordPiece takes the longest "
                          "piece of the vocabulary that starts where you are, then goes on"),
        (lambda w, v: _greedy(w, v, prefix_rest=False),
         "pieces after the first must be looked up (and returned) with the '##' prefix, which "
         "marks a piece that continues a word"),
        (lambda w, v: _greedy(w, v, prefix_first=True),
         "the first piece of a word has no '##' prefix; only the pieces that continue it do"),
        (lambda w, v: _greedy(w, v, on_fail="piece_unk"),
         "when no piece matches, the WHOLE word becomes ['[UNK]'], not just the character that "
         "failed"),
        (lambda w, v: _greedy(w, v, on_fail="skip"),
         "you skipped the character that matched nothing; then the whole word is ['[UNK]']"),
        (lambda w, v: _greedy(w, v, on_fail="empty"),
         "a word with no full cut becomes ['[UNK]'], not an empty list"),
        (lambda w, v: _greedy(w, v, on_fail="prefix_unk"),
         "when a later part of the word matches nothing, the whole word is ['[UNK]']: drop the "
         "pieces you found before it"),
        (_right_to_left, "you matched from the end of the word; WordPiece reads left to right, "
                         "longest prefix first"),
        (lambda w, v: [w] if w in v else ["[UNK]"],
         "you only looked up the whole word; cut it into the longest pieces the vocabulary has"),
        (lambda w, v: list(w) if all(c in v or "##" + c in v for c in w) else ["[UNK]"],
         "you cut the word into single characters; take the LONGEST piece each time"),
    ]
    answers = {}
    for word in _WORDS:
        got = call_tensors(fn, word, set(_VOCAB), name="wordpiece_greedy")
        case = f"word {word!r}"
        if isinstance(got, str):
            fail(f"wordpiece_greedy on {case} returned the string {got!r}; return a list of "
                 "pieces, e.g. ['una', '##ffable']")
        if not isinstance(got, list):
            fail(f"wordpiece_greedy on {case} should return a list of strings, got "
                 f"{type(got).__name__}")
        answers[word] = got
    bad = [w for w in _WORDS if answers[w] != wordpiece(w, _VOCAB)]
    if bad:
        first = bad[0]
        want = wordpiece(first, _VOCAB)
        # the mistake that explains every answer, several words may share one symptom
        for wrong_fn, hint in wrong:
            if all(answers[w] == wrong_fn(w, _VOCAB) for w in _WORDS):
                fail(f"wordpiece_greedy on word {first!r}: {hint} (expected {want}, got "
                     f"{answers[first]})")
        fail(f"wordpiece_greedy on word {first!r}: expected {want}, got {answers[first]}")
    passed("wordpiece_greedy", len(_WORDS))


# ----------------------------------------------------------------------------- exercise 4


def check_mean_pool(fn) -> None:
    """Exercise 4: fn(h (B, T, C), attention_mask (B, T)) -> mean over real tokens, (B, C)."""
    g = torch.Generator().manual_seed(0)
    cases = [([5, 2, 3], 5, 4, False), ([4], 4, 3, False), ([1, 6], 6, 8, False),
             ([3, 3, 1, 2], 3, 5, False), ([2, 5, 3], 5, 4, True)]
    for lengths, T, C, left in cases:
        h = torch.randn(len(lengths), T, C, generator=g) + 1.0
        m = _padding(lengths, T, left)
        before = [h.clone(), m.clone()]
        got = call_tensors(fn, h, m, name="mean_pool")
        unchanged("mean_pool", before, [h, m], "h *= mask; compute h * mask instead")
        want = mean_pool(h, m)
        mf = m[:, :, None].float()
        summed = (h * mf).sum(1)
        mistakes = [
            (h.mean(dim=1), "you averaged over all T positions, padding included: sum h over "
                            "the real tokens only (h * mask) and divide by their number"),
            (summed, "you summed over the real tokens but did not divide by their number "
                     "(attention_mask.sum(dim=1))"),
            (summed / T, "you divided by T, the padded length (as (h * mask).mean(dim=1) does); "
                         "divide each row by its own number of real tokens, "
                         "attention_mask.sum(dim=1, keepdim=True)"),
            (summed / m.sum(), "you divided by the number of real tokens in the whole batch; "
                               "each sequence is divided by its own count"),
            (h.masked_fill(mf == 0, float("-inf")).amax(1), "that is max pooling; take the mean"),
            (h[:, 0], "you took the first token ([CLS] pooling); the exercise asks for the mean "
                      "over the real tokens"),
            (h[torch.arange(len(lengths)), m.sum(1) - 1],
             "you took the last real token; average all real tokens"),
            (F.normalize(want, dim=-1), "right mean, but you also L2-normalised it; return the "
                                        "mean itself (sentence_embeddings normalises after)"),
        ]
        if left:
            mistakes.append((torch.stack([h[b, :n].mean(0) for b, n in enumerate(lengths)]),
                             _RIGHT_ONLY))
        case = (f"h of shape {(len(lengths), T, C)}, real lengths {lengths}"
                + (", padded on the left" if left else ""))
        compare("mean_pool", case, got, want, mistakes,
                shape_hint="One vector per sequence: average over dim 1 (the positions).")
    passed("mean_pool", len(cases))


# ----------------------------------------------------------------------------- exercise 5


def check_cosine_top_k(fn) -> None:
    """Exercise 5: fn(query (C,), keys (N, C), k) -> LongTensor (k,) of the rows most
    cosine-similar to query, best first."""
    g = torch.Generator().manual_seed(0)
    cases = [(10, 4, 3), (25, 8, 5), (6, 3, 1), (40, 16, 10), (7, 5, 7)]
    results = []
    for N, C, k in cases:
        # rows of very different lengths, so that dot product and distance rank differently
        keys = torch.randn(N, C, generator=g) * torch.logspace(-1, 1, N)[torch.randperm(
            N, generator=g)][:, None]
        query = torch.randn(C, generator=g) * 3
        before = [query.clone(), keys.clone()]
        got = call_tensors(fn, query, keys, k, name="cosine_top_k")
        unchanged("cosine_top_k", before, [query, keys], "keys /= norm")
        cos = F.normalize(keys, dim=-1) @ F.normalize(query, dim=0)  # (N,)
        want = cos.argsort(descending=True)[:k]
        case = f"{N} keys of size {C}, k={k}"
        if isinstance(got, Tensor) and got.shape == (k,) and got.dtype.is_floating_point:
            if torch.allclose(got.double(), cos.sort(descending=True).values[:k].double(),
                              atol=1e-4):
                fail(f"cosine_top_k on {case}: you returned the similarities; return the row "
                     "indices (torch.topk(...).indices)")
        mistakes = [
            ((keys @ query).argsort(descending=True)[:k],
             "you ranked by the raw dot product: long vectors win. Normalise the keys (and "
             "the query) to unit length first: cosine = dot product of unit vectors"),
            ((keys - query).norm(dim=-1).argsort()[:k],
             "you ranked by Euclidean distance between the raw vectors; rank by cosine "
             "similarity (normalise, then dot product)"),
            (cos.argsort()[:k], "those are the k LEAST similar rows: sort in descending order "
                                "(or torch.topk, which returns the largest)"),
            (cos.argsort(descending=True)[:k].sort().values,
             "the right rows, but sorted by index; return them best first"),
            ((F.normalize(keys, dim=0) @ query).argsort(descending=True)[:k],
             "you normalised the keys over dim 0 (each feature across rows); normalise each "
             "row: F.normalize(keys, dim=-1)"),
        ]
        if isinstance(got, Tensor) and got.shape != (k,):
            fail(f"cosine_top_k on {case}: expected {k} indices, shape ({k},), got shape "
                 f"{shape_of(got)}")
        if isinstance(got, Tensor) and got.dtype != torch.long:
            fail(f"cosine_top_k on {case}: expected indices as a LongTensor (int64), got "
                 f"{got.dtype}")
        results.append((case, got, want, mistakes))
    # the mistake that explains every case: on one case two mistakes may give the same rows
    for j, (_, hint) in enumerate(results[0][3]):
        if all(close(got, m[j][0]) or close(got, want) and close(m[j][0], want)
               for _, got, want, m in results) and not all(close(g, w) for _, g, w, _ in results):
            case = next(c for c, g, w, _ in results if not close(g, w))
            fail(f"cosine_top_k on {case}: {hint}")
    for case, got, want, _ in results:
        compare("cosine_top_k", case, got, want, [])
    passed("cosine_top_k", len(cases))
