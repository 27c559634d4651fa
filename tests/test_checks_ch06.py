"""The chapter 06 checkers accept right answers and reject typical mistakes with a useful hint."""

import pytest
import torch

from lmkit.checks import ch06
from lmkit.model import TransformerLM


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize(
    "check",
    [ch06.check_lm_head_probs, ch06.check_block_forward, ch06.check_count_params,
     ch06.check_flops_per_token, ch06.check_gpt2_block_weights],
)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


# ----------------------------------------------------------------------------- LM head


def test_lm_head_probs(capsys):
    ch06.check_lm_head_probs(lambda h, W_E: torch.softmax(h @ W_E.T, dim=-1))
    assert "✓ lm_head_probs" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"sum to 1 over positions \(dim 1\).*dim=-1"):
        ch06.check_lm_head_probs(lambda h, W_E: torch.softmax(h @ W_E.T, dim=1))
    with pytest.raises(AssertionError, match=r"over the batch"):
        ch06.check_lm_head_probs(lambda h, W_E: torch.softmax(h @ W_E.T, dim=0))
    with pytest.raises(AssertionError, match=r"logits are h @ W_E.T \(this case has V == C"):
        ch06.check_lm_head_probs(lambda h, W_E: torch.softmax(h @ W_E, dim=-1))
    with pytest.raises(AssertionError, match="you returned the logits"):
        ch06.check_lm_head_probs(lambda h, W_E: h @ W_E.T)
    with pytest.raises(AssertionError, match=r"shape \(B, T, V\)"):
        ch06.check_lm_head_probs(lambda h, W_E: torch.softmax(h @ W_E.T, dim=-1)[:, -1])


# ----------------------------------------------------------------------------- block


def pre_norm(x, norm1, attn, norm2, mlp):
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def test_block_forward(capsys):
    ch06.check_block_forward(pre_norm)
    assert "✓ block_forward" in capsys.readouterr().out

    def post_norm(x, norm1, attn, norm2, mlp):
        x = norm1(x + attn(x))
        return norm2(x + mlp(x))

    def parallel(x, norm1, attn, norm2, mlp):
        return x + attn(norm1(x)) + mlp(norm2(x))

    def normalised_stream(x, norm1, attn, norm2, mlp):
        x = norm1(x)
        x = x + attn(x)
        return x + mlp(norm2(x))

    def no_ffn_residual(x, norm1, attn, norm2, mlp):
        return mlp(norm2(x + attn(norm1(x))))

    def last_position_only(x, norm1, attn, norm2, mlp):
        return pre_norm(x, norm1, attn, norm2, mlp)[:, -1]

    for wrong, hint in [(post_norm, "post-norm block"), (parallel, "'parallel' block"),
                        (normalised_stream, "normalised copy"),
                        (no_ffn_residual, "feed-forward residual is missing"),
                        (last_position_only, r"to the same shape \(B, T, C\)")]:
        with pytest.raises(AssertionError, match=hint):
            ch06.check_block_forward(wrong)


# ----------------------------------------------------------------------------- counting


def count_params(c):
    """The exercise's solution, by formula."""
    V, P, C, L, F = c.vocab_size, c.context_length, c.d_model, c.n_layers, c.ffn_dim
    attn = 4 * C * C + 4 * C
    ffn = 2 * C * F + F + C
    block = attn + ffn + 4 * C
    head = 0 if c.tie_embeddings else V * C
    return V * C + P * C + L * block + 2 * C + head


def flops_per_token(c, T):
    V, C, L, F = c.vocab_size, c.d_model, c.n_layers, c.ffn_dim
    matmul_weights = L * (4 * C * C + 2 * C * F) + V * C
    return 2 * matmul_weights + 4 * L * T * C


@pytest.mark.parametrize("config", ch06._GPT2_CASES, ids=lambda c: f"C{c.d_model}L{c.n_layers}")
def test_checker_reference_counts_are_lmkits(config):
    with torch.device("meta"):  # shapes only
        model = TransformerLM(config)
    n_params, n_linear = ch06._lmkit_counts(config)
    assert n_params == model.num_parameters()
    for T in (1, 7, 1024):
        assert 2 * n_linear + 4 * config.n_layers * T * config.d_model == model.flops_per_token(T)


def test_count_params(capsys):
    ch06.check_count_params(count_params)
    ch06.check_count_params(lambda c: TransformerLM(c).num_parameters() if c.d_model < 200
                            else count_params(c))
    assert capsys.readouterr().out.count("✓ count_params") == 2
    C = lambda c: c.d_model  # noqa: E731
    mistakes = [
        (lambda c: count_params(c) + c.vocab_size * C(c) * c.tie_embeddings, "count it once"),
        (lambda c: count_params(c) - c.context_length * C(c), "position embeddings"),
        (lambda c: count_params(c) - c.n_layers * (5 * C(c) + c.ffn_dim),
         "biases of the Linear layers are missing"),
        (lambda c: count_params(c) - 2 * C(c), "final LayerNorm"),
        (lambda c: count_params(c) - (0 if c.tie_embeddings else c.vocab_size * C(c)),
         "tie_embeddings=False the LM head has its own"),
        (lambda c: count_params(type(c).gpt2(**{**c.to_dict(), "d_ff": None})),
         "config.ffn_dim"),
        (lambda c: count_params(c) - c.n_layers * (C(c) ** 2 + C(c)),
         "four projections per block"),
        (lambda c: float(count_params(c)), "should return an int"),
    ]
    for wrong, hint in mistakes:
        with pytest.raises(AssertionError, match=hint):
            ch06.check_count_params(wrong)


def test_flops_per_token(capsys):
    ch06.check_flops_per_token(flops_per_token)
    assert "✓ flops_per_token" in capsys.readouterr().out
    mistakes = [
        (lambda c, T: flops_per_token(c, T) - 4 * c.n_layers * T * c.d_model,
         "attention term is missing"),
        (lambda c, T: flops_per_token(c, T) // 2, "multiply-add is 2 FLOPs"),
        (lambda c, T: flops_per_token(c, T) - 2 * c.vocab_size * c.d_model,
         "LM head is missing"),
        (lambda c, T: flops_per_token(c, T) + 2 * c.vocab_size * c.d_model,
         "token embedding is a lookup"),
        (lambda c, T: 2 * count_params(c) + 4 * c.n_layers * T * c.d_model,
         "2 × num_parameters is the usual rough estimate"),
        (lambda c, T: flops_per_token(c, T) - 2 * c.n_layers * T * c.d_model,
         "only one of the two attention products"),
        (lambda c, T: flops_per_token(c, T) + 4 * c.n_layers * T * c.d_model * (T - 1),
         "per token it is"),
        (lambda c, T: flops_per_token(c, T) - 2 * c.n_layers * c.d_model**2,
         "output projection"),
        (lambda c, T: flops_per_token(type(c).gpt2(**{**c.to_dict(), "d_ff": None}), T),
         "config.ffn_dim"),
    ]
    for wrong, hint in mistakes:
        with pytest.raises(AssertionError, match=hint):
            ch06.check_flops_per_token(wrong)


# ----------------------------------------------------------------------------- GPT-2 weights


def gpt2_block_weights(hf, transpose=True, order="qkv", ln=("ln_1", "ln_2")):
    t = (lambda w: w.T) if transpose else (lambda w: w)
    parts_w = hf["attn.c_attn.weight"].chunk(3, dim=1)
    parts_b = hf["attn.c_attn.bias"].chunk(3, dim=0)
    out = {f"norm1.{p}": hf[f"{ln[0]}.{p}"] for p in ("weight", "bias")}
    out |= {f"norm2.{p}": hf[f"{ln[1]}.{p}"] for p in ("weight", "bias")}
    for name, k in zip("qkv", (order.index(c) for c in "qkv")):
        out[f"attn.{name}_proj.weight"] = t(parts_w[k])
        out[f"attn.{name}_proj.bias"] = parts_b[k]
    out["attn.o_proj.weight"] = t(hf["attn.c_proj.weight"])
    out["attn.o_proj.bias"] = hf["attn.c_proj.bias"]
    out["mlp.up_proj.weight"] = t(hf["mlp.c_fc.weight"])
    out["mlp.up_proj.bias"] = hf["mlp.c_fc.bias"]
    out["mlp.down_proj.weight"] = t(hf["mlp.c_proj.weight"])
    out["mlp.down_proj.bias"] = hf["mlp.c_proj.bias"]
    return out


def test_gpt2_block_weights(capsys):
    ch06.check_gpt2_block_weights(gpt2_block_weights)
    assert "✓ gpt2_block_weights" in capsys.readouterr().out

    def unsplit(hf):
        out = gpt2_block_weights(hf)
        out["attn.q_proj.weight"] = hf["attn.c_attn.weight"].T
        return out

    def o_proj_not_transposed(hf):
        out = gpt2_block_weights(hf)
        out["attn.o_proj.weight"] = hf["attn.c_proj.weight"]
        return out

    def split_not_transposed(hf):
        out = gpt2_block_weights(hf)
        for name, w in zip("qkv", hf["attn.c_attn.weight"].chunk(3, dim=1)):
            out[f"attn.{name}_proj.weight"] = w
        return out

    def up_not_transposed(hf):
        out = gpt2_block_weights(hf)
        out["mlp.up_proj.weight"] = hf["mlp.c_fc.weight"]
        return out

    def bias_not_split(hf):
        out = gpt2_block_weights(hf)
        out["attn.q_proj.bias"] = hf["attn.c_attn.bias"]
        return out

    def missing_key(hf):
        out = gpt2_block_weights(hf)
        del out["mlp.down_proj.bias"]
        return out

    mistakes = [
        (lambda hf: gpt2_block_weights(hf, transpose=False),
         r"attn.q_proj.weight holds the right numbers but transposed"),
        (up_not_transposed,
         r"mlp.up_proj.weight has shape \(64, 256\) but nn.Linear wants \(out, in\).*transpose"),
        (split_not_transposed, r"attn.q_proj.weight holds the right numbers but transposed"),
        (o_proj_not_transposed, r"attn.o_proj.weight holds the right numbers but transposed"),
        (lambda hf: gpt2_block_weights(hf, order="kqv"), r"\[q \| k \| v\] in that order"),
        (lambda hf: gpt2_block_weights(hf, ln=("ln_2", "ln_1")), "norm1 is ln_1"),
        (unsplit, "split it into three equal parts"),
        (bias_not_split, r"attn.q_proj.bias .*split it into three"),
        (missing_key, "no 'mlp.down_proj.bias'"),
    ]
    for wrong, hint in mistakes:
        with pytest.raises(AssertionError, match=hint):
            ch06.check_gpt2_block_weights(wrong)


def test_checkers_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ch06.check_block_forward(pre_norm)
    ch06.check_gpt2_block_weights(gpt2_block_weights)
    torch.testing.assert_close(torch.rand(3), expected)
