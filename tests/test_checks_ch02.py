"""The chapter 02 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import pytest
import torch
import torch.nn.functional as F
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch02
from lmkit.embeddings import sinusoidal_encoding

# ----------------------------------------------------------------- exercise 1: one_hot_embed


def one_hot_embed(ids, W):
    return F.one_hot(ids, num_classes=W.shape[0]).to(W.dtype) @ W


def by_hand_shifted(ids, W):  # builds the one-hot by hand, one place off
    oh = torch.zeros(*ids.shape, W.shape[0])
    oh.scatter_(-1, ((ids - 1) % W.shape[0]).unsqueeze(-1), 1.0)
    return oh @ W


def flattened(ids, W):
    return F.one_hot(ids.flatten(), W.shape[0]).to(W.dtype) @ W


W1 = [
    Wrong("one_hot_embed", "index", lambda ids, W: W[ids]),
    Wrong("one_hot_embed", "index", lambda ids, W: F.embedding(ids, W)),
    Wrong("one_hot_embed", "index", lambda ids, W: torch.nn.Embedding.from_pretrained(W)(ids)),
    Wrong("one_hot_embed", "index", lambda ids, W: torch.stack([W[i] for i in ids.flatten()])
          .view(*ids.shape, -1)),
    Wrong("one_hot_embed", "dtype", lambda ids, W: F.one_hot(ids, W.shape[0]) @ W),
    Wrong("one_hot_embed", "dtype", lambda ids, W: F.one_hot(ids, W.shape[0]) @ W.long()),
    Wrong("one_hot_embed", "num_classes", lambda ids, W: F.one_hot(ids).float() @ W),
    Wrong("one_hot_embed", "transpose", lambda ids, W: F.one_hot(ids, W.shape[0]).float() @ W.T),
    Wrong("one_hot_embed", "one_hot_only", lambda ids, W: F.one_hot(ids, W.shape[0]).float()),
    Wrong("one_hot_embed", "off_by_one", by_hand_shifted),
    Wrong("one_hot_embed", "shape", flattened),
    Wrong("one_hot_embed", "shape", lambda ids, W: F.one_hot(ids, W.shape[0]).float().sum(0) @ W),
    Wrong("one_hot_embed", "none", lambda ids, W: None),
]

# ----------------------------------------------------------------- exercise 2: sinusoidal


def sinusoidal(T, d):
    return sinusoidal_encoding(T, d)


def table(T, d, exponent=lambda two_i, d: two_i / d, first=0, layout="interleave",
          divide=True, dtype=torch.float32):
    t = torch.arange(first, first + T, dtype=torch.float32)[:, None]
    two_i = torch.arange(0, d, 2, dtype=torch.float32)
    power = 10000.0 ** exponent(two_i, d)
    a = t / power if divide else t * power
    s, c = a.sin(), a.cos()
    if layout == "concat":
        return torch.cat([s, c], dim=1)
    if layout == "swap":
        s, c = c, s
    if layout == "stack":
        return torch.stack([s, c], dim=-1)
    if layout == "half":
        return s
    pe = torch.zeros(T, d, dtype=dtype)
    pe[:, 0::2], pe[:, 1::2] = s, c
    return pe


def per_column(T, d):  # column j gets exponent j/d, so a pair's cos uses the next frequency
    t = torch.arange(T, dtype=torch.float32)[:, None]
    a = t / 10000.0 ** (torch.arange(d, dtype=torch.float32) / d)
    pe = a.clone()
    pe[:, 0::2], pe[:, 1::2] = a[:, 0::2].sin(), a[:, 1::2].cos()
    return pe


W2 = [
    Wrong("sinusoidal", "concat", lambda T, d: table(T, d, layout="concat")),
    Wrong("sinusoidal", "swap", lambda T, d: table(T, d, layout="swap")),
    Wrong("sinusoidal", "half", lambda T, d: table(T, d, exponent=lambda ti, d: ti / 2 / d)),
    Wrong("sinusoidal", "per_column", per_column),
    Wrong("sinusoidal", "multiply", lambda T, d: table(T, d, divide=False)),
    Wrong("sinusoidal", "from_one", lambda T, d: table(T, d, first=1)),
    Wrong("sinusoidal", "transpose", lambda T, d: table(T, d).T),
    Wrong("sinusoidal", "half_width", lambda T, d: table(T, d, layout="half")),
    Wrong("sinusoidal", "pairs", lambda T, d: table(T, d, layout="stack")),
    Wrong("sinusoidal", "int_dtype", lambda T, d: table(T, d, dtype=torch.long)),
    Wrong("sinusoidal", "none", lambda T, d: print(table(T, d))),
]

# ----------------------------------------------------------------- exercise 3: add_positions


def add_positions(ids, tok_table, pos_table):
    B, T = ids.shape
    if T > pos_table.shape[0]:
        raise ValueError(f"{T} tokens do not fit in {pos_table.shape[0]} positions")
    return tok_table[ids] + pos_table[:T]


def positions(check=">", message=True, error=ValueError, slice_=lambda pos, B, T: pos[:T],
              first=0, combine=lambda tok, pos: tok + pos):
    def f(ids, tok_table, pos_table):
        B, T = ids.shape
        L = pos_table.shape[0]
        too_long = {">": T > L, ">=": T >= L, None: False}[check]
        if too_long:
            raise error(f"{T} tokens do not fit in {L} positions" if message else "too long")
        return combine(tok_table[ids], slice_(pos_table, B, T)[first:] if first else
                       slice_(pos_table, B, T))
    return f


def asserts(ids, tok_table, pos_table):
    assert ids.shape[1] <= pos_table.shape[0], "too long"
    return tok_table[ids] + pos_table[: ids.shape[1]]


W3 = [
    Wrong("add_positions", "tok_only", lambda ids, tok, pos: tok[ids]),
    Wrong("add_positions", "pos_by_id", lambda ids, tok, pos: tok[ids] + pos[ids]),
    Wrong("add_positions", "from_one", positions(slice_=lambda pos, B, T: pos[1:T + 1])),
    Wrong("add_positions", "slice", positions(slice_=lambda pos, B, T: pos)),
    Wrong("add_positions", "slice", positions(slice_=lambda pos, B, T: pos[:B])),
    Wrong("add_positions", "no_check", positions(check=None,
                                                 slice_=lambda pos, B, T: pos[torch.arange(T)
                                                                              .clamp(max=15)])),
    Wrong("add_positions", "error_type", positions(error=IndexError)),
    Wrong("add_positions", "error_type", asserts),
    Wrong("add_positions", "boundary", positions(check=">=")),
    Wrong("add_positions", "message", positions(message=False)),
    Wrong("add_positions", "shape", positions(combine=lambda tok, pos: (tok + pos).mean(0))),
    Wrong("add_positions", "none", lambda ids, tok, pos: None),
]

# ----------------------------------------------------------------- exercise 4: position_similarity


def position_similarity(pe):
    unit = pe / pe.norm(dim=-1, keepdim=True)
    return unit @ unit.T


def normalise_in_place(pe):
    pe /= pe.norm(dim=-1, keepdim=True)
    return pe @ pe.T


W4 = [
    Wrong("position_similarity", "dot", lambda pe: pe @ pe.T),
    Wrong("position_similarity", "cols", lambda pe: F.normalize(pe, dim=0) @ F.normalize(pe, dim=0).T),
    Wrong("position_similarity", "keepdim", lambda pe: (pe / pe.norm(dim=-1)) @ (pe / pe.norm(dim=-1)).T),
    Wrong("position_similarity", "one_side", lambda pe: (pe / pe.norm(dim=-1, keepdim=True)) @ pe.T),
    Wrong("position_similarity", "columns", lambda pe: F.normalize(pe.T, dim=-1) @ F.normalize(pe.T, dim=-1).T),
    Wrong("position_similarity", "one_side", lambda pe: pe @ pe.T / pe.norm(dim=-1, keepdim=True) ** 2),
    Wrong("position_similarity", "lengths", lambda pe: pe @ pe.T / (pe.norm(dim=-1, keepdim=True)
                                                                    * pe.norm(dim=-1)) ** 2),
    Wrong("position_similarity", "lengths", lambda pe: pe @ pe.T / pe.norm() ** 2),
    Wrong("position_similarity", "distance", lambda pe: torch.cdist(pe, pe)),
    Wrong("position_similarity", "pairwise", lambda pe: F.cosine_similarity(pe, pe)),
    Wrong("position_similarity", "inplace", normalise_in_place),
]

# ----------------------------------------------------------------- exercise 5: permutation_test


def is_permutation_equivariant(layer, x, n_trials=3):
    y = layer(x)
    for _ in range(n_trials):
        perm = torch.randperm(x.shape[1])
        if not torch.allclose(layer(x[:, perm]), y[:, perm], atol=1e-5):
            return False
    return True


def one_trial(layer, x, n_trials=3):
    y = layer(x)
    for _ in range(n_trials):
        perm = torch.randperm(x.shape[1])
        return torch.allclose(layer(x[:, perm]), y[:, perm], atol=1e-5)  # returns in trial 1


def any_trial(layer, x, n_trials=3):
    y = layer(x)
    for _ in range(n_trials):
        perm = torch.randperm(x.shape[1])
        if torch.allclose(layer(x[:, perm]), y[:, perm], atol=1e-5):
            return True
    return False


def reversal_only(layer, x, n_trials=3):
    return torch.allclose(layer(x.flip(1)), layer(x).flip(1), atol=1e-5)


def permutes_batch(layer, x, n_trials=3):
    perm = torch.randperm(x.shape[0])
    return torch.allclose(layer(x[perm]), layer(x)[perm], atol=1e-5)


def permutes_channels(layer, x, n_trials=3):
    perm = torch.randperm(x.shape[2])
    return torch.allclose(layer(x[..., perm]), layer(x)[..., perm], atol=1e-5)


def output_not_permuted(layer, x, n_trials=3):
    perm = torch.randperm(x.shape[1])
    return torch.allclose(layer(x[:, perm]), layer(x), atol=1e-5)


def inverse_on_output(layer, x, n_trials=3):
    perm = torch.randperm(x.shape[1])
    return torch.allclose(layer(x[:, perm]), layer(x)[:, perm.argsort()], atol=1e-5)


def shuffles_in_place(layer, x, n_trials=3):
    y = layer(x)
    perm = torch.randperm(x.shape[1])
    x.copy_(x[:, perm])
    return torch.allclose(layer(x), y[:, perm], atol=1e-5)


def exact(layer, x, n_trials=3):
    y = layer(x)
    for _ in range(n_trials):
        perm = torch.randperm(x.shape[1])
        if not torch.equal(layer(x[:, perm]), y[:, perm]):
            return False
    return True


W5 = [
    Wrong("permutation_test", "tolerance", exact),
    Wrong("permutation_test", "all_trials", one_trial),
    Wrong("permutation_test", "all_trials", any_trial),
    Wrong("permutation_test", "reversal", reversal_only),
    Wrong("permutation_test", "dim", permutes_batch),
    Wrong("permutation_test", "dim", permutes_channels),
    Wrong("permutation_test", "compare", output_not_permuted),
    Wrong("permutation_test", "compare", inverse_on_output),
    Wrong("permutation_test", "type", lambda layer, x, n_trials=3: int(
        is_permutation_equivariant(layer, x, n_trials))),
    Wrong("permutation_test", "inplace", shuffles_in_place),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5
SOLUTIONS = {"one_hot_embed": one_hot_embed, "sinusoidal": sinusoidal,
             "add_positions": add_positions, "position_similarity": position_similarity,
             "permutation_test": is_permutation_equivariant}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch02, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch02, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch02, wrong)


def test_catalogue_complete():
    assert_complete(ch02, CATALOGUE, SOLUTIONS)


def test_alternative_correct_answers_pass(capsys):
    ch02.check_sinusoidal(lambda T, d: table(T, d, exponent=lambda ti, d: ti / d))
    ch02.check_position_similarity(lambda pe: F.cosine_similarity(pe[:, None], pe[None], dim=-1))
    ch02.check_one_hot_embed(lambda ids, W: torch.einsum("...v,vc->...c",
                                                         F.one_hot(ids, W.shape[0]).float(), W))
    assert capsys.readouterr().out.count("✓") == 3


def fixed_swap(layer, x, n_trials=3):  # one hand-picked reordering
    perm = torch.tensor([1, 0, *range(2, x.shape[1])])
    return torch.allclose(layer(x[:, perm]), layer(x)[:, perm], atol=1e-5)


def rolls_only(layer, x, n_trials=3):
    return all(torch.allclose(layer(x.roll(s, 1)), layer(x).roll(s, 1), atol=1e-5)
               for s in range(1, n_trials + 1))


REVIEW = [
    Wrong("one_hot_embed", "index", lambda ids, W: torch.embedding(W, ids)),
    Wrong("one_hot_embed", "index", lambda ids, W: W.detach().index_select(0, ids.flatten())
          .view(*ids.shape, -1)),
    Wrong("one_hot_embed", "index", lambda ids, W: torch.stack([W.unbind(0)[i] for i in
                                                                ids.flatten().tolist()])
          .view(*ids.shape, -1)),
    Wrong("one_hot_embed", "index", lambda ids, W: torch.tensor(W.tolist())[ids]),
    Wrong("one_hot_embed", "index", lambda ids, W: torch.cat([W.narrow(0, i, 1) for i in
                                                              ids.flatten().tolist()])
          .view(*ids.shape, -1)),
    Wrong("permutation_test", "reversal", fixed_swap),
    Wrong("permutation_test", "reversal", rolls_only),
]
CATALOGUE += REVIEW


@pytest.mark.parametrize("wrong", REVIEW, ids=lambda w: w.id)
def test_review_wrong_answers(wrong):
    assert_rejected(ch02, wrong)
