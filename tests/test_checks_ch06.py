"""The chapter 06 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import pytest
import torch
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch06
from lmkit.model import TransformerLM

# ----------------------------------------------------------------- exercise 1: lm_head_probs


def lm_head_probs(h, W_E):
    return torch.softmax(h @ W_E.T, dim=-1)


def manual(h, W_E):  # exp / sum, without subtracting the maximum
    e = (h @ W_E.T).exp()
    return e / e.sum(-1, keepdim=True)


def scale_in_place(h, W_E):
    h /= 1.0
    h.mul_(2.0)
    return torch.softmax(h @ W_E.T / 2, dim=-1)


W1 = [
    Wrong("lm_head_probs", "logits", lambda h, W: h @ W.T),
    Wrong("lm_head_probs", "log", lambda h, W: torch.log_softmax(h @ W.T, dim=-1)),
    Wrong("lm_head_probs", "dim", lambda h, W: torch.softmax(h @ W.T, dim=1)),
    Wrong("lm_head_probs", "dim", lambda h, W: torch.softmax(h @ W.T, dim=0)),
    Wrong("lm_head_probs", "transpose", lambda h, W: torch.softmax(h @ W, dim=-1)),
    Wrong("lm_head_probs", "overflow", manual),
    Wrong("lm_head_probs", "sums", lambda h, W: torch.sigmoid(h @ W.T)),
    Wrong("lm_head_probs", "sums", lambda h, W: (h @ W.T).abs() / (h @ W.T).abs().sum(-1, True)),
    Wrong("lm_head_probs", "shape", lambda h, W: torch.softmax(h @ W.T, dim=-1)[:, -1]),
    Wrong("lm_head_probs", "inplace", scale_in_place),
]

# ----------------------------------------------------------------- exercise 2: block_forward


def pre_norm(x, norm1, attn, norm2, mlp):
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def chapter05_order(x, attn, mlp, norm1, norm2):
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def chapter05_order_renamed(x, a, m, n1, n2):  # same mistake, other names
    x = x + a(n1(x))
    return x + m(n2(x))


def in_place(x, norm1, attn, norm2, mlp):
    x += attn(norm1(x))
    x += mlp(norm2(x))
    return x


W2 = [
    Wrong("block_forward", "post", lambda x, n1, a, n2, m: (lambda p: n2(p + m(p)))(n1(x + a(x)))),
    Wrong("block_forward", "parallel", lambda x, n1, a, n2, m: x + a(n1(x)) + m(n2(x))),
    Wrong("block_forward", "norm1_twice", lambda x, n1, a, n2, m: (lambda h: h + m(n1(h)))(
        x + a(n1(x)))),
    Wrong("block_forward", "normed_stream", lambda x, n1, a, n2, m: (lambda xn: (
        lambda y: y + m(n2(y)))(xn + a(xn)))(n1(x))),
    Wrong("block_forward", "no_residual", lambda x, n1, a, n2, m: m(n2(x + a(n1(x))))),
    Wrong("block_forward", "no_residual", lambda x, n1, a, n2, m: m(n2(a(n1(x))))),
    Wrong("block_forward", "no_norms", lambda x, n1, a, n2, m: (lambda y: y + m(y))(x + a(x))),
    Wrong("block_forward", "arg_order", chapter05_order),
    Wrong("block_forward", "arg_order", chapter05_order_renamed),
    Wrong("block_forward", "inplace", in_place),
    Wrong("block_forward", "shape", lambda x, n1, a, n2, m: pre_norm(x, n1, a, n2, m)[:, -1]),
]

# ----------------------------------------------------------------- exercise 3: count_params


def count_params(c, tok=True, pos=True, lin_bias=True, norm_bias=True, final=True, norms=True,
                 blocks=0, proj=4, ffn=None, head=None):
    V, P, C, L = c.vocab_size, c.context_length, c.d_model, c.n_layers
    F = c.ffn_dim if ffn is None else ffn(c)
    attn = proj * C * C + (proj * C if lin_bias else 0)
    mlp = 2 * C * F + ((F + C) if lin_bias else 0)
    ln = (2 if norm_bias else 1) * C if norms else 0
    block = attn + mlp + 2 * ln
    tied = c.tie_embeddings if head is None else head
    return ((V * C if tok else 0) + (P * C if pos else 0) + (L + blocks) * block
            + (ln if final else 0) + (0 if tied else V * C))


def cp(**kw):
    return lambda c: count_params(c, **kw)


W3 = [
    Wrong("count_params", "tied_twice", lambda c: count_params(c) + (c.vocab_size * c.d_model
                                                                     if c.tie_embeddings else 0)),
    Wrong("count_params", "untied", cp(head=True)),
    Wrong("count_params", "no_tok", lambda c: count_params(c, tok=False)
          if c.tie_embeddings else count_params(c) - c.vocab_size * c.d_model),
    Wrong("count_params", "no_pos", cp(pos=False)),
    Wrong("count_params", "no_linear_bias", cp(lin_bias=False)),
    Wrong("count_params", "no_biases", cp(lin_bias=False, norm_bias=False)),
    Wrong("count_params", "no_norm_bias", cp(norm_bias=False)),
    Wrong("count_params", "no_final_norm", cp(final=False)),
    Wrong("count_params", "no_norms", cp(norms=False)),
    Wrong("count_params", "one_block", cp(blocks=-1)),
    Wrong("count_params", "three_proj", cp(proj=3)),
    Wrong("count_params", "ffn_width", cp(ffn=lambda c: 4 * c.d_model)),
    Wrong("count_params", "type", lambda c: float(count_params(c))),
]

# ----------------------------------------------------------------- exercise 4: flops_per_token


def flops_per_token(c, T, per_weight=2, attn=4, attn_total=False, proj=4, ffn=None, head=True,
                    tok=False, pos=False):
    V, P, C, L = c.vocab_size, c.context_length, c.d_model, c.n_layers
    F = c.ffn_dim if ffn is None else ffn(c)
    w = L * (proj * C * C + 2 * C * F) + (V * C if head else 0) + (V * C if tok else 0)
    w += P * C if pos else 0
    a = attn * L * T * C * (T if attn_total else 1)
    return per_weight * w + a


def fl(**kw):
    return lambda c, T: flops_per_token(c, T, **kw)


def two_n(c, T):
    n = count_params(c)
    return 2 * n + 4 * c.n_layers * T * c.d_model


W4 = [
    Wrong("flops_per_token", "two_flops", fl(per_weight=1)),
    Wrong("flops_per_token", "no_attn", fl(attn=0)),
    Wrong("flops_per_token", "half_attn", fl(attn=2)),
    Wrong("flops_per_token", "attn_all_tokens", fl(attn_total=True)),
    Wrong("flops_per_token", "no_o", fl(proj=3)),
    Wrong("flops_per_token", "ffn_width", fl(ffn=lambda c: 4 * c.d_model)),
    Wrong("flops_per_token", "no_head", fl(head=False)),
    Wrong("flops_per_token", "tok_emb", fl(tok=True)),
    Wrong("flops_per_token", "pos_emb", fl(pos=True)),
    Wrong("flops_per_token", "rough", two_n),
    Wrong("flops_per_token", "extras", lambda c, T: flops_per_token(c, T) + 2 * (
        count_params(c) - count_params(c, lin_bias=False, norms=False))),
    Wrong("flops_per_token", "type", lambda c, T: flops_per_token(c, T) / 1),
]

# ----------------------------------------------------------------- exercise 5: gpt2_block_weights


def gpt2_block_weights(hf, transpose=True, order="qkv", ln=("ln_1", "ln_2"), split_dim=1,
                       up="mlp.c_fc", down="mlp.c_proj"):
    t = (lambda w: w.T) if transpose else (lambda w: w)
    W = hf["attn.c_attn.weight"]
    parts_w = W.chunk(3, dim=split_dim) if split_dim == 1 else [
        p.T for p in W.T.reshape(W.shape[1], W.shape[0]).chunk(3, dim=0)]
    parts_b = hf["attn.c_attn.bias"].chunk(3, dim=0)
    out = {f"norm1.{p}": hf[f"{ln[0]}.{p}"] for p in ("weight", "bias")}
    out |= {f"norm2.{p}": hf[f"{ln[1]}.{p}"] for p in ("weight", "bias")}
    for name, k in zip("qkv", (order.index(c) for c in "qkv")):
        out[f"attn.{name}_proj.weight"] = t(parts_w[k])
        out[f"attn.{name}_proj.bias"] = parts_b[k]
    out["attn.o_proj.weight"] = t(hf["attn.c_proj.weight"])
    out["attn.o_proj.bias"] = hf["attn.c_proj.bias"]
    out["mlp.up_proj.weight"] = t(hf[f"{up}.weight"])
    out["mlp.up_proj.bias"] = hf[f"{up}.bias"]
    out["mlp.down_proj.weight"] = t(hf[f"{down}.weight"])
    out["mlp.down_proj.bias"] = hf[f"{down}.bias"]
    return out


def edited(**changes):
    def f(hf):
        out = gpt2_block_weights(hf)
        for k, fn in changes.items():
            if fn is None:
                del out[k.replace("__", ".")]
            else:
                out[k.replace("__", ".")] = fn(hf)
        return out
    return f


def pops(hf):
    w = hf.pop("attn.c_attn.weight")  # "moves" the tensor out of the caller's dict
    hf["attn.c_attn.weight"] = w
    out = gpt2_block_weights(hf)
    hf["attn.c_attn.weight"].mul_(1.0).add_(0.0)
    hf["mlp.c_fc.bias"].zero_()
    return out | {"mlp.up_proj.bias": out["mlp.up_proj.bias"]}


W5 = [
    Wrong("gpt2_block_weights", "unsplit", edited(attn__q_proj__weight=lambda hf: hf[
        "attn.c_attn.weight"].T)),
    Wrong("gpt2_block_weights", "unsplit", edited(attn__q_proj__bias=lambda hf: hf[
        "attn.c_attn.bias"])),
    Wrong("gpt2_block_weights", "transpose", lambda hf: gpt2_block_weights(hf, transpose=False)),
    Wrong("gpt2_block_weights", "transpose", edited(mlp__up_proj__weight=lambda hf: hf[
        "mlp.c_fc.weight"])),
    Wrong("gpt2_block_weights", "transpose", edited(attn__o_proj__weight=lambda hf: hf[
        "attn.c_proj.weight"])),
    Wrong("gpt2_block_weights", "split_dim", edited(attn__q_proj__weight=lambda hf: hf[
        "attn.c_attn.weight"].chunk(3, dim=0)[0])),
    Wrong("gpt2_block_weights", "qkv_order", lambda hf: gpt2_block_weights(hf, order="kqv")),
    Wrong("gpt2_block_weights", "ln_swap", lambda hf: gpt2_block_weights(hf, ln=("ln_2", "ln_1"))),
    Wrong("gpt2_block_weights", "source", edited(mlp__down_proj__bias=lambda hf: hf[
        "attn.c_proj.bias"])),
    Wrong("gpt2_block_weights", "missing", edited(mlp__down_proj__bias=None)),
    Wrong("gpt2_block_weights", "missing", lambda hf: {k.replace("attn.", "attention."): v
                                                       for k, v in gpt2_block_weights(hf).items()}),
    Wrong("gpt2_block_weights", "type", lambda hf: list(gpt2_block_weights(hf).values())),
    Wrong("gpt2_block_weights", "inplace", pops),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5
SOLUTIONS = {"lm_head_probs": lm_head_probs, "block_forward": pre_norm,
             "count_params": count_params, "flops_per_token": flops_per_token,
             "gpt2_block_weights": gpt2_block_weights}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch06, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch06, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch06, wrong)


def test_catalogue_complete():
    assert_complete(ch06, CATALOGUE, SOLUTIONS)


@pytest.mark.parametrize("config", ch06._GPT2_CASES, ids=lambda c: f"C{c.d_model}L{c.n_layers}")
def test_checker_reference_counts_are_lmkits(config):
    with torch.device("meta"):  # shapes only
        model = TransformerLM(config)
    n_params, n_linear = ch06._lmkit_counts(config)
    assert n_params == model.num_parameters()
    for T in (1, 7, 1024):
        assert 2 * n_linear + 4 * config.n_layers * T * config.d_model == model.flops_per_token(T)


def test_checkers_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ch06.check_block_forward(pre_norm)
    ch06.check_gpt2_block_weights(gpt2_block_weights)
    torch.testing.assert_close(torch.rand(3), expected)


def builds_on_meta(c):
    with torch.device("meta"):
        return TransformerLM(c).num_parameters()


REVIEW = [Wrong("count_params", "build", builds_on_meta)]
CATALOGUE += REVIEW


def test_count_params_refuses_building():
    assert_rejected(ch06, REVIEW[0])
