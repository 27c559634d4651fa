"""Checkers for the chapter 10 exercises (encoders).

The hints live in one table, ``MISTAKES`` (see ``lmkit.checks.common``): the checks quote it,
tools/mistakes.py lists it under each exercise, tests/test_checks_ch10.py proves each is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mlm import IGNORE_INDEX, apply_masking
from ..model import mean_pool
from ..wordpiece import wordpiece
from .common import (
    INPLACE,
    NO_RETURN,
    Mistake,
    call_tensors,
    checker,
    close,
    compare,
    fail,
    passed,
    shape_of,
)

__all__ = ["check_bidirectional_mask", "check_mlm_masking", "check_wordpiece_greedy",
           "check_mean_pool", "check_cosine_top_k", "MISTAKES"]

M = Mistake
_RIGHT_ONLY = M("assuming the padding is at the end (building the mask from the lengths)",
                "padding is not always at the end: this batch is padded on the LEFT (as some "
                "tokenizers do), so the first attention_mask.sum() positions are not the real "
                "ones. Use attention_mask itself, position by position, not the lengths")
MISTAKES: dict[str, dict[str, Mistake]] = {
    "bidirectional_mask": {
        "all_true": M("making every entry True (padding visible)",
                      "every entry is True: the padding tokens are visible. Key j may be "
                      "attended to only if attention_mask[b, j] is 1"),
        "causal_padded": M("the causal mask with padding",
                           "that is the causal mask (with padding): an encoder is "
                           "bidirectional, query i may attend to later keys j > i too"),
        "causal": M("the causal mask of chapter 03, without padding",
                    "that is the causal mask of chapter 03, and it ignores the padding: an "
                    "encoder lets every query see every real key, before and after it"),
        "transposed": M("only keys at or after the query (the transposed causal mask)",
                        "only keys at or after the query are allowed (the transposed causal "
                        "mask); an encoder sees both directions"),
        "rows": M("masking the padding queries (rows) instead of the padding keys (columns)",
                  "you masked the padding *queries* (rows) instead of the padding *keys* "
                  "(columns): entry [b, i, j] says whether query i may look at key j, so it "
                  "depends on attention_mask[b, j]"),
        "rows_and_keys": M("blocking the padding queries' rows completely (a softmax of 0/0)",
                           "you also blocked the padding queries' rows completely: a row with "
                           "no visible key gives a softmax of 0/0 = NaN. Mask only the keys "
                           "(columns); the outputs at padding positions are simply ignored "
                           "later"),
        "inverted": M("True for padding (the inverted mask)",
                      "the mask is inverted: True must mean 'may attend' (lmkit's and "
                      "PyTorch's SDPA convention), so real keys are True and padding keys "
                      "False"),
        "diagonal": M("only the diagonal (each query sees itself)",
                      "only the diagonal is True: each query would see itself only. In an "
                      "encoder every query sees every real key"),
        "right_only": _RIGHT_ONLY,
        "dtype": M("returning 0/1 integers or floats instead of booleans",
                   "return a boolean mask (e.g. `.bool()`), as attention's masked_fill(~mask, "
                   "-inf) needs"),
        "shape": M("returning (B, T) or (B, 1, T) instead of (B, T, T)",
                   "one row per query i and one column per key j (use expand, or compare "
                   "against a (B, 1, T) view)"),
        "inplace": INPLACE,
    },
    "mlm_masking": {
        "labels_all": M("keeping every token in the labels",
                        "labels: every position keeps its token, so the loss would count the "
                        "positions the model can simply copy. Put -100 where nothing was "
                        "chosen"),
        "labels_zero": M("0 instead of -100 for the unchosen labels",
                         "labels: unchosen positions must be -100 (cross-entropy's "
                         "ignore_index), not 0, which is a real token id"),
        "labels_corrupted": M("the corrupted input as the label",
                              "labels: at the chosen positions the label is the ORIGINAL token "
                              "(ids), not the corrupted input ([MASK] or the random token)"),
        "labels_inverted": M("-100 at the chosen positions (labels inverted)",
                             "labels are inverted: -100 goes where nothing was chosen, the "
                             "original token where something was"),
        "all_mask": M("[MASK] at every chosen position (no 80/10/10)",
                      "inputs: every chosen position became [MASK]; BERT's rule is 80% [MASK] "
                      "(u_kind < 0.8), 10% random token (0.8 <= u_kind < 0.9), 10% unchanged"),
        "swapped": M("the random and the unchanged ranges swapped",
                     "inputs: the random token goes where 0.8 <= u_kind < 0.9, and positions "
                     "with u_kind >= 0.9 stay unchanged (you swapped the two)"),
        "unchosen": M("changing positions that were not chosen",
                      "inputs: you replaced positions that were not chosen; only positions "
                      "with u_select < p may change"),
        "random_unchosen": M("random tokens at unchosen positions",
                             "inputs: random tokens also went to unchosen positions; combine "
                             "the u_kind test with the chosen positions (u_select < p)"),
        "over_p": M("choosing u_select >= p", "you chose the positions with u_select >= p "
                                              "(85% of them); choose u_select < p"),
        "le_select": M("choosing u_select <= p (the boundary)",
                       "a position with u_select exactly p was chosen: the rule is strict, "
                       "u_select < p (u_select <= p chooses one position too many now and "
                       "then)"),
        "le_kind": M("testing u_kind <= 0.8 and <= 0.9 (the boundaries)",
                     "the boundaries of u_kind: [MASK] when u_kind < 0.8 (strictly), a random "
                     "token when 0.8 <= u_kind < 0.9, so u_kind == 0.8 gets a random token and "
                     "u_kind == 0.9 stays unchanged"),
        "not_pair": M("returning one tensor instead of the pair (inputs, labels)",
                      "return a pair (inputs, labels)"),
        "dtype": M("another dtype or shape (float labels, a flattened tensor)",
                   "inputs and labels are token ids: keep ids' dtype (torch.long) and shape "
                   "(B, T)"),
        "inplace": INPLACE,
    },
    "wordpiece_greedy": {
        "shortest": M("taking the shortest matching piece",
                      "you took the SHORTEST matching piece; WordPiece takes the longest piece "
                      "of the vocabulary that starts where you are, then goes on"),
        "no_hash": M("looking up later pieces without '##'",
                     "pieces after the first must be looked up (and returned) with the '##' "
                     "prefix, which marks a piece that continues a word: 'play' and '##play' "
                     "are different entries of the vocabulary"),
        "hash_first": M("'##' on the first piece too", "the first piece of a word has no '##' "
                        "prefix; only the pieces that continue it do"),
        "piece_unk": M("[UNK] for the failing character only",
                       "when no piece matches, the WHOLE word becomes ['[UNK]'], not just the "
                       "character that failed"),
        "skip": M("skipping a character that matches nothing",
                  "you skipped the character that matched nothing; then the whole word is "
                  "['[UNK]']"),
        "empty": M("an empty list for a word with no cut",
                   "a word with no full cut becomes ['[UNK]'], not an empty list"),
        "prefix_unk": M("keeping the pieces found before a failure, then [UNK]",
                        "when a later part of the word matches nothing, the whole word is "
                        "['[UNK]']: drop the pieces you found before it"),
        "backtrack": M("trying a shorter piece when the rest of the word matches nothing",
                       "WordPiece never goes back: it keeps the longest piece it found, and if "
                       "what follows matches nothing the whole word is ['[UNK]'], even when a "
                       "shorter piece would have led to a full cut"),
        "right_to_left": M("matching from the end of the word",
                           "you matched from the end of the word; WordPiece reads left to "
                           "right, longest prefix first"),
        "whole_word": M("looking up only the whole word",
                        "you only looked up the whole word; cut it into the longest pieces the "
                        "vocabulary has"),
        "chars": M("cutting the word into single characters",
                   "you cut the word into single characters; take the LONGEST piece each time"),
        "string": M("returning a string instead of a list",
                    "return a list of pieces, e.g. ['una', '##ffable']"),
        "not_list": M("returning a tuple or another container", "return a list of strings"),
    },
    "mean_pool": {
        "mean_all": M("averaging over all T positions, padding included",
                      "you averaged over all T positions, padding included: sum h over the "
                      "real tokens only (h * mask) and divide by their number"),
        "no_divide": M("summing without dividing", "you summed over the real tokens but did "
                       "not divide by their number (attention_mask.sum(dim=1))"),
        "divide_T": M("dividing by T, the padded length ((h * mask).mean(dim=1))",
                      "you divided by T, the padded length (as (h * mask).mean(dim=1) does); "
                      "divide each row by its own number of real tokens, "
                      "attention_mask.sum(dim=1, keepdim=True)"),
        "batch_total": M("dividing by the number of real tokens in the whole batch",
                         "you divided by the number of real tokens in the whole batch; each "
                         "sequence is divided by its own count"),
        "max_pool": M("max pooling", "that is max pooling; take the mean"),
        "cls": M("taking the first token ([CLS] pooling)",
                 "you took the first token ([CLS] pooling); the exercise asks for the mean over "
                 "the real tokens"),
        "last": M("taking the last real token", "you took the last real token; average all "
                  "real tokens"),
        "normalised": M("L2-normalising the mean", "right mean, but you also L2-normalised it; "
                        "return the mean itself (sentence_embeddings normalises after)"),
        "right_only": _RIGHT_ONLY,
        "shape": M("another shape ((B, 1, C), a flat vector)",
                   "one vector per sequence: average over dim 1 (the positions)"),
        "inplace": INPLACE,
    },
    "cosine_top_k": {
        "dot": M("ranking by the raw dot product",
                 "you ranked by the raw dot product: long vectors win. Normalise the keys (and "
                 "the query) to unit length first: cosine = dot product of unit vectors"),
        "euclid": M("ranking by Euclidean distance between the raw vectors",
                    "you ranked by Euclidean distance between the raw vectors; rank by cosine "
                    "similarity (normalise, then dot product)"),
        "least": M("the k least similar rows (ascending order)",
                   "those are the k LEAST similar rows: sort in descending order (or "
                   "torch.topk, which returns the largest)"),
        "by_index": M("the right rows, sorted by index", "the right rows, but sorted by index; "
                      "return them best first"),
        "dim0": M("normalising the keys over dim 0", "you normalised the keys over dim 0 (each "
                  "feature across rows); normalise each row: F.normalize(keys, dim=-1)"),
        "values": M("returning the similarities instead of the indices",
                    "you returned the similarities; return the row indices "
                    "(torch.topk(...).indices)"),
        "count": M("returning another number of indices (off by one, or all of them)",
                   "return exactly k indices, shape (k,)"),
        "dtype": M("indices as int32 or float", "return the indices as a LongTensor (int64), "
                   "as torch.topk(...).indices is"),
        "inplace": INPLACE,
    },
}


def _padding(lengths: list[int], T: int, left: bool = False) -> Tensor:
    m = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    return m.flip(1) if left else m  # left padding: the real tokens at the end


def _explaining(results: list, same) -> str | None:
    """The hint of the mistake that explains the answer on EVERY case (case, got, want,
    [(mistake's output, hint), ...]), or None. On a single case an unrelated wrong answer
    may coincide with a mistake (the first sequence's mask used for all is 'all True' when
    that sequence has no padding); a mistake missing from a case gives the right answer there."""
    hints = list(dict.fromkeys(h for r in results for _, h in r[3]))
    for hint in hints:
        outs = [{h: o for o, h in r[3]}.get(hint, r[2]) for r in results]
        if all(same(got, out) or same(got, want) and same(out, want)
               for (_, got, want, *_), out in zip(results, outs)):
            return hint
    return None


def _verdict(name: str, results: list, n_cases: int) -> None:
    """Pass, or fail with the hint of the mistake that explains every case, or else with the
    first wrong value (`compare`'s message) of the first wrong case."""
    if all(close(got, want) for _, got, want, *_ in results):
        passed(name, n_cases)
        return
    hint = _explaining(results, close)
    if hint is not None:
        case = next(c for c, got, want, *_ in results if not close(got, want))
        fail(f"{name} on {case}: {hint}")
    for case, got, want, *_ in results:
        compare(name, case, got, want, [])


# ----------------------------------------------------------------------------- exercise 1


def _wrong_masks(m: Tensor) -> list[tuple[Tensor, str]]:
    H = MISTAKES["bidirectional_mask"]
    B, T = m.shape
    keys = m.bool()[:, None, :].expand(B, T, T)  # the right answer
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    return [
        (torch.ones(B, T, T, dtype=torch.bool), H["all_true"].hint),
        (keys & tril, H["causal_padded"].hint),
        (tril.expand(B, T, T), H["causal"].hint),
        (keys & ~tril | torch.eye(T, dtype=torch.bool) & keys, H["transposed"].hint),
        (m.bool()[:, :, None].expand(B, T, T), H["rows"].hint),
        (m.bool()[:, :, None] & m.bool()[:, None, :], H["rows_and_keys"].hint),
        (~keys, H["inverted"].hint),
        (torch.eye(T, dtype=torch.bool).expand(B, T, T), H["diagonal"].hint),
    ]


@checker
def check_bidirectional_mask(fn) -> None:
    """Exercise 1: fn(attention_mask (B, T) of 0/1) -> boolean (B, T, T), True = may attend."""
    H = MISTAKES["bidirectional_mask"]
    cases = [([4, 2, 3], 4, False), ([5], 5, False), ([1, 6], 6, False), ([3, 3], 3, False),
             ([2, 7, 5, 1], 7, False), ([2, 4, 3], 4, True)]
    results = []
    for lengths, T, left in cases:
        m = _padding(lengths, T, left)
        got = call_tensors(fn, m, name="bidirectional_mask")
        want = m.bool()[:, None, :].expand(len(lengths), T, T)
        case = (f"attention_mask of shape {tuple(m.shape)} (real lengths {lengths}"
                + (", padded on the left)" if left else ")"))
        if isinstance(got, Tensor) and got.dtype != torch.bool and got.shape == want.shape:
            if torch.equal(got.bool(), want) or torch.equal(got.ne(0), want):
                fail(f"bidirectional_mask on {case}: the values are right but the dtype is "
                     f"{got.dtype}; {H['dtype'].hint}")
        if isinstance(got, Tensor) and got.shape in ((len(lengths), T), (len(lengths), 1, T)):
            fail(f"bidirectional_mask on {case}: expected shape (B, T, T) = "
                 f"{(len(lengths), T, T)}, got {shape_of(got)}: {H['shape'].hint}")
        if not (isinstance(got, Tensor) and got.shape == want.shape and got.dtype == want.dtype):
            compare("bidirectional_mask", case, got, want, [],  # fails: type, shape or dtype
                    shape_hint="One (T, T) matrix per sequence: [b, i, j] says whether query "
                               "i may attend to key j.")
        mistakes = _wrong_masks(m)
        if left:
            mistakes.append((_padding(lengths, T).bool()[:, None, :].expand(len(lengths), T, T),
                             H["right_only"].hint))
        results.append((case, got, want, mistakes))
    _verdict("bidirectional_mask", results, len(cases))


# ----------------------------------------------------------------------------- exercise 2


def _masking_le(ids, u1, u2, rnd, mask_id, p, select=False, kind=False):
    """The masking rule with <= where it says < (the boundary slips)."""
    chosen = u1 <= p if select else u1 < p
    first = u2 <= 0.8 if kind else u2 < 0.8
    second = ((u2 > 0.8) & (u2 <= 0.9)) if kind else ((u2 >= 0.8) & (u2 < 0.9))
    inputs = ids.clone()
    inputs[chosen & first] = mask_id
    inputs[chosen & second] = rnd[chosen & second]
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))


def _wrong_maskings(ids, u1, u2, rnd, mask_id, p):
    H = MISTAKES["mlm_masking"]
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
    return [
        (_masking_le(ids, u1, u2, rnd, mask_id, p, select=True), H["le_select"].hint),
        (_masking_le(ids, u1, u2, rnd, mask_id, p, kind=True), H["le_kind"].hint),
        ((right_in, ids), H["labels_all"].hint),
        ((right_in, torch.where(chosen, ids, torch.zeros_like(ids))), H["labels_zero"].hint),
        ((right_in, torch.where(chosen, right_in, ign)), H["labels_corrupted"].hint),
        ((all_mask, right_lab), H["all_mask"].hint),
        ((swapped, right_lab), H["swapped"].hint),
        ((every, torch.where(chosen, ids, ign)), H["unchosen"].hint),
        ((rand_all, right_lab), H["random_unchosen"].hint),
        ((inv_in, inv_lab), H["over_p"].hint),
        ((right_in, torch.where(chosen, ign, ids)), H["labels_inverted"].hint),
    ]


@checker
def check_mlm_masking(fn) -> None:
    """Exercise 2: fn(ids, u_select, u_kind, random_ids, mask_id, p) -> (inputs, labels)."""
    H = MISTAKES["mlm_masking"]
    g = torch.Generator().manual_seed(0)
    cases = [(2, 12, 50, 0.15), (4, 40, 100, 0.15), (1, 8, 20, 0.5), (3, 25, 1000, 0.3)]
    results = []
    for B, T, V, p in cases:
        ids = torch.randint(1, V, (B, T), generator=g)
        u1, u2 = torch.rand(B, T, generator=g), torch.rand(B, T, generator=g)
        # the boundaries exactly: u_select == p (not chosen); chosen with u_kind == 0.8 (a
        # random token) and u_kind == 0.9 (unchanged)
        u1[0, 0], u2[0, 0] = p, 0.5
        u1[0, 1], u2[0, 1] = 0.0, 0.8
        u1[0, 2], u2[0, 2] = 0.0, 0.9
        rnd = torch.randint(1, V, (B, T), generator=g)
        mask_id = V  # one id past the vocabulary, as [MASK] in the chapter (not 0: writing
        # zeros instead of mask_id must fail)
        got = call_tensors(fn, ids, u1, u2, rnd, mask_id, p, name="mlm_masking")
        case = f"ids of shape {(B, T)}, p={p}"
        if got is None:
            fail(f"mlm_masking on {case}: {NO_RETURN.hint}")
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"mlm_masking on {case} returned {type(got).__name__}: {H['not_pair'].hint}")
        want = apply_masking(ids, u1, u2, rnd, mask_id, p)
        for what, t, w in zip(("inputs", "labels"), got, want):
            if not isinstance(t, Tensor) or t.shape != w.shape or t.dtype != w.dtype:
                fail(f"mlm_masking on {case}: {what} should be a {w.dtype} tensor of shape "
                     f"{tuple(w.shape)}, got {shape_of(t)}"
                     + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else "")
                     + f": {H['dtype'].hint}")
        results.append((case, got, want, _wrong_maskings(ids, u1, u2, rnd, mask_id, p),
                        (T, ids, u1, u2, rnd)))

    def same(a, b):
        return all(torch.equal(t, w) for t, w in zip(a, b))

    if all(same(got, want) for _, got, want, *_ in results):
        passed("mlm_masking", len(cases))
        return
    hint = _explaining(results, same)
    for case, got, want, _, (T, ids, u1, u2, rnd) in results:
        if hint is not None and not same(got, want):
            fail(f"mlm_masking on {case}: {hint}")
        for what, t, w in zip(("inputs", "labels"), got, want):
            if not torch.equal(t, w):
                b, i = divmod(int((t != w).flatten().nonzero()[0]), T)
                fail(f"mlm_masking on {case}: {what}[{b}, {i}] is {int(t[b, i])}, expected "
                     f"{int(w[b, i])} (u_select={u1[b, i]:.3f}, u_kind={u2[b, i]:.3f}, "
                     f"ids={int(ids[b, i])}, random_ids={int(rnd[b, i])})")


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


def _greedy(word, vocab, prefix_first=False, prefix_rest=True, on_fail="unk",
            hash_out=False):
    """WordPiece with one mistake; `hash_out`: looked up without '##' but returned with it."""
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            pre = "##" if (start > 0 and prefix_rest) or (start == 0 and prefix_first) else ""
            if pre + word[start:end] in vocab:
                break
            end -= 1
        if hash_out and end > start and start > 0:
            pre = "##"
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


def _backtracking(word, vocab, start=0):
    """A full cut if there is one (a shorter piece when the longest leads nowhere)."""
    if start == len(word):
        return []
    for end in range(len(word), start, -1):
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        rest = _backtracking(word, vocab, end) if piece in vocab else None
        if rest is not None and rest != ["[UNK]"]:
            return [piece] + rest
    return ["[UNK]"] if start == 0 else None


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
          "aff", "able", "b", "##p", "x", "##x", "##yer", "##yz"}

# "playz": greedy takes "play", then "z" matches nothing ("pla" + "##yz" would cut it, but
# WordPiece never goes back); "aplay": "play" is in the vocabulary, "##play" is not
_WORDS = ["unaffable", "playing", "plays", "player", "a", "unx", "zebra", "aaa", "play",
          "playingx", "fab", "x" * 30, "pax", "playz", "aplay"]


@checker
def check_wordpiece_greedy(fn) -> None:
    """Exercise 3: fn(word, vocab) -> WordPiece pieces, greedy longest-match-first, ## and [UNK]."""
    H = MISTAKES["wordpiece_greedy"]
    wrong = [
        (_shortest_first, H["shortest"].hint),
        (lambda w, v: _greedy(w, v, prefix_rest=False), H["no_hash"].hint),
        (lambda w, v: _greedy(w, v, prefix_rest=False, hash_out=True), H["no_hash"].hint),
        (lambda w, v: _greedy(w, v, prefix_first=True), H["hash_first"].hint),
        (lambda w, v: _greedy(w, v, on_fail="piece_unk"), H["piece_unk"].hint),
        (lambda w, v: _greedy(w, v, on_fail="skip"), H["skip"].hint),
        (lambda w, v: _greedy(w, v, on_fail="empty"), H["empty"].hint),
        (lambda w, v: _greedy(w, v, on_fail="prefix_unk"), H["prefix_unk"].hint),
        (_backtracking, H["backtrack"].hint),
        (_right_to_left, H["right_to_left"].hint),
        (lambda w, v: [w] if w in v else ["[UNK]"], H["whole_word"].hint),
        (lambda w, v: list(w) if all(c in v or "##" + c in v for c in w) else ["[UNK]"],
         H["chars"].hint),
    ]
    answers = {}
    for word in _WORDS:
        got = call_tensors(fn, word, set(_VOCAB), name="wordpiece_greedy")
        case = f"word {word!r}"
        if got is None:
            fail(f"wordpiece_greedy on {case}: {NO_RETURN.hint}")
        if isinstance(got, str):
            fail(f"wordpiece_greedy on {case} returned the string {got!r}: {H['string'].hint}")
        if not isinstance(got, list):
            fail(f"wordpiece_greedy on {case} returned {type(got).__name__}: "
                 f"{H['not_list'].hint}")
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


@checker
def check_mean_pool(fn) -> None:
    """Exercise 4: fn(h (B, T, C), attention_mask (B, T)) -> mean over real tokens, (B, C)."""
    H = MISTAKES["mean_pool"]
    g = torch.Generator().manual_seed(0)
    cases = [([5, 2, 3], 5, 4, False), ([4], 4, 3, False), ([1, 6], 6, 8, False),
             ([3, 3, 1, 2], 3, 5, False), ([2, 5, 3], 5, 4, True)]
    results = []
    for lengths, T, C, left in cases:
        h = torch.randn(len(lengths), T, C, generator=g) + 1.0
        m = _padding(lengths, T, left)
        got = call_tensors(fn, h, m, name="mean_pool")
        want = mean_pool(h, m)
        mf = m[:, :, None].float()
        summed = (h * mf).sum(1)
        mistakes = [
            (h.mean(dim=1), H["mean_all"].hint),
            (summed, H["no_divide"].hint),
            (summed / T, H["divide_T"].hint),
            (summed / m.sum(), H["batch_total"].hint),
            (h.masked_fill(mf == 0, float("-inf")).amax(1), H["max_pool"].hint),
            (h[:, 0], H["cls"].hint),
            (h[torch.arange(len(lengths)), m.sum(1) - 1], H["last"].hint),
            (F.normalize(want, dim=-1), H["normalised"].hint),
        ]
        if left:
            mistakes.append((torch.stack([h[b, :n].mean(0) for b, n in enumerate(lengths)]),
                             H["right_only"].hint))
        case = (f"h of shape {(len(lengths), T, C)}, real lengths {lengths}"
                + (", padded on the left" if left else ""))
        if not (isinstance(got, Tensor) and got.shape == want.shape and got.dtype == want.dtype):
            compare("mean_pool", case, got, want, [],  # fails: type, shape or dtype
                    shape_hint=H["shape"].hint[0].upper() + H["shape"].hint[1:] + ".")
        results.append((case, got, want, mistakes))
    _verdict("mean_pool", results, len(cases))


# ----------------------------------------------------------------------------- exercise 5


@checker
def check_cosine_top_k(fn) -> None:
    """Exercise 5: fn(query (C,), keys (N, C), k) -> LongTensor (k,) of the rows most
    cosine-similar to query, best first."""
    H = MISTAKES["cosine_top_k"]
    g = torch.Generator().manual_seed(0)
    cases = [(10, 4, 3), (25, 8, 5), (6, 3, 1), (40, 16, 10), (7, 5, 7)]
    results = []
    for N, C, k in cases:
        # rows of very different lengths, so that dot product and distance rank differently
        keys = torch.randn(N, C, generator=g) * torch.logspace(-1, 1, N)[torch.randperm(
            N, generator=g)][:, None]
        query = torch.randn(C, generator=g) * 3
        got = call_tensors(fn, query, keys, k, name="cosine_top_k")
        cos = F.normalize(keys, dim=-1) @ F.normalize(query, dim=0)  # (N,)
        want = cos.argsort(descending=True)[:k]
        case = f"{N} keys of size {C}, k={k}"
        if isinstance(got, Tensor) and got.shape == (k,) and got.dtype.is_floating_point:
            if torch.allclose(got.double(), cos.sort(descending=True).values[:k].double(),
                              atol=1e-4):
                fail(f"cosine_top_k on {case}: {H['values'].hint}")
        mistakes = [
            ((keys @ query).argsort(descending=True)[:k], H["dot"].hint),
            ((keys - query).norm(dim=-1).argsort()[:k], H["euclid"].hint),
            (cos.argsort()[:k], H["least"].hint),
            (cos.argsort(descending=True)[:k].sort().values, H["by_index"].hint),
            ((F.normalize(keys, dim=0) @ query).argsort(descending=True)[:k], H["dim0"].hint),
        ]
        if isinstance(got, Tensor) and got.shape != (k,):
            fail(f"cosine_top_k on {case}: expected {k} indices, shape ({k},), got shape "
                 f"{shape_of(got)}: {H['count'].hint}")
        if isinstance(got, Tensor) and got.dtype != torch.long:
            fail(f"cosine_top_k on {case}: got {got.dtype}: {H['dtype'].hint}")
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
