import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmkit.model import Block, ModelConfig, TransformerLM

V, CTX = 97, 24


def tiny(**overrides):
    base = dict(vocab_size=V, context_length=CTX, d_model=32, n_layers=2, n_heads=4)
    return ModelConfig.gpt2(**{**base, **overrides})


def tiny_llama(**overrides):
    base = dict(vocab_size=V, context_length=CTX, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    return ModelConfig.llama(**{**base, **overrides})


VARIANTS = {
    "gpt2": tiny(),
    "llama_gqa": tiny_llama(),
    "post_norm": tiny(norm_position="post", activation="relu"),
    "sinusoidal": tiny(positional="sinusoidal", activation="gelu"),
    "no_positions": tiny(positional="none"),
    "window": tiny_llama(window=3, n_kv_heads=1),
    "explicit_path": tiny(norm="rmsnorm", activation="silu"),  # built with fast=False
}


def build(name: str) -> TransformerLM:
    return TransformerLM(VARIANTS[name], fast=name != "explicit_path")


def ids(B=2, T=10, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_shape(name):
    model = build(name).eval()
    assert model(ids(3, 7)).shape == (3, 7, V)


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_matches_full_forward(name):
    torch.manual_seed(0)
    model = build(name).eval()
    x = ids(2, 12)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        steps = [model(x[:, :5], cache=cache)]  # prompt, then one token at a time
        steps += [model(x[:, t : t + 1], cache=cache) for t in range(5, 12)]
    assert cache[0].length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "window"])
def test_changing_token_j_changes_no_earlier_logits(name):
    model = build(name).eval()
    x = ids(1, 10)
    x2 = x.clone()
    x2[0, 6] = (x[0, 6] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_bidirectional_model_sees_the_future():
    model = TransformerLM(tiny(causal=False)).eval()
    x = ids(1, 10)
    x2 = x.clone()
    x2[0, 6] = (x[0, 6] + 1) % V
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, 0], model(x2)[:, 0])


@pytest.mark.parametrize("make", [tiny, tiny_llama])
def test_fast_and_written_out_paths_agree(make):
    torch.manual_seed(0)
    fast = TransformerLM(make()).eval()
    written = TransformerLM(make(), fast=False).eval()
    written.load_state_dict(fast.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast(ids()), written(ids()), atol=1e-5, rtol=1e-5)
        fast.set_fast(False)  # switched later: bitwise the same computation as built so
        torch.testing.assert_close(fast(ids()), written(ids()), atol=0, rtol=0)


def _kernels_called(model: TransformerLM) -> set[str]:
    """Names of the PyTorch kernels (SDPA, layer_norm, gelu...) the model's forward calls."""
    from torch.overrides import TorchFunctionMode

    seen = set()

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Spy():
        model(ids(1, 6))
    return seen


FUSED_KERNELS = {"scaled_dot_product_attention", "layer_norm", "rms_norm", "gelu", "silu"}


@pytest.mark.parametrize("make", [tiny, tiny_llama])
def test_fast_flag_chooses_the_kernels_for_the_whole_model(make):
    fast = _kernels_called(TransformerLM(make()).eval())
    assert {"scaled_dot_product_attention"} < fast and fast & {"layer_norm", "rms_norm"}
    assert fast & {"gelu", "silu"}
    written = TransformerLM(make(), fast=False).eval()
    assert not _kernels_called(written) & FUSED_KERNELS  # everything written out
    assert _kernels_called(written.set_fast(True)) == fast
    flags = {m.fast for m in written.modules() if hasattr(m, "fast")}
    assert flags == {True}
    assert "fast=True" in repr(written) and "fast=False" in repr(written.set_fast(False))


def test_fast_is_a_runtime_choice_not_saved_in_the_config():
    cfg = tiny()
    assert "fast" not in cfg.to_dict() and "use_sdpa" not in cfg.to_dict()
    with pytest.raises(TypeError, match="fast must be True or False"):
        TransformerLM(cfg, fast="no")
    with pytest.raises(TypeError, match="fast must be True or False"):
        TransformerLM(cfg).set_fast(None)


def test_old_config_json_with_retired_kernel_flags_still_loads():
    old = {**tiny().to_dict(), "use_sdpa": False, "fused_ops": True}  # written by lmkit <= 0.1
    assert ModelConfig.from_dict(old) == tiny()
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**tiny().to_dict(), "use_sdpaa": False})


def test_return_hidden_gives_embeddings_and_every_block_output():
    model = TransformerLM(tiny()).eval()
    x = ids(2, 6)
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        assert len(hidden) == 3 and all(h.shape == (2, 6, 32) for h in hidden)
        torch.testing.assert_close(hidden[0], model.tok_emb(x) + model.pos_emb.weight[:6])
        torch.testing.assert_close(hidden[1], model.blocks[0](hidden[0]))
        torch.testing.assert_close(logits, model.lm_head(model.norm_f(hidden[-1])))


def test_post_norm_block_formula_and_no_final_norm():
    cfg = tiny(norm_position="post")
    block, model = Block(cfg).eval(), TransformerLM(cfg)
    x = torch.randn(2, 5, 32)
    h = block.norm1(x + block.attn(x))
    torch.testing.assert_close(block(x), block.norm2(h + block.mlp(h)))
    assert isinstance(model.norm_f, torch.nn.Identity)


# ----------------------------------------------------------------------- weights and counts


def unique_count(model):
    seen = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def test_weight_tying_shares_storage_and_counts_once():
    tied, untied = TransformerLM(tiny()), TransformerLM(tiny(tie_embeddings=False))
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    assert tied.num_parameters() == unique_count(tied)
    assert untied.num_parameters() == unique_count(untied) == tied.num_parameters() + V * 32


@pytest.mark.parametrize("n_embd,n_layer,n_head,n_inner", [(32, 1, 2, None), (48, 3, 4, 100)])
def test_parameter_count_matches_hf_gpt2(n_embd, n_layer, n_head, n_inner):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=CTX, n_embd=n_embd,
                                    n_layer=n_layer, n_head=n_head, n_inner=n_inner))
    ours = TransformerLM(tiny(d_model=n_embd, n_layers=n_layer, n_heads=n_head, d_ff=n_inner))
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == hf.num_parameters(
        exclude_embeddings=True
    )


def test_parameter_count_matches_hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, max_position_embeddings=CTX, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=80))
    ours = TransformerLM(tiny_llama(d_ff=80))
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == hf.num_parameters(
        exclude_embeddings=True
    )


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "explicit_path"])
def test_flops_per_token_matches_torch_flop_counter(name):
    model = TransformerLM(VARIANTS[name], fast=False).eval()
    T = 16
    # not under no_grad: there torch 2.13's counter trips over the tied lm_head
    with FlopCounterMode(display=False) as counter:
        model(ids(1, T))
    assert model.flops_per_token(T) == counter.get_total_flops() / T


def test_gpt2_style_init():
    torch.manual_seed(0)
    model = TransformerLM(tiny(d_model=256, n_layers=8, n_heads=4, vocab_size=2000))
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[3].attn.o_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    down = model.blocks[3].mlp.down_proj.weight
    assert down.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.blocks[3].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert (model.blocks[0].attn.q_proj.bias == 0).all()


# ----------------------------------------------------------------------- config


def test_presets():
    g = ModelConfig.gpt2()
    assert (g.vocab_size, g.context_length, g.d_model, g.n_layers, g.n_heads) == (
        50257, 1024, 768, 12, 12
    )
    assert (g.activation, g.positional, g.norm, g.tie_embeddings, g.ffn_dim) == (
        "gelu_tanh", "learned", "layernorm", True, 3072
    )
    # Llama-2-7B's published sizes: d_model 4096 -> d_ff 11008
    llama = ModelConfig.llama(d_model=4096, n_heads=32)
    assert llama.ffn_dim == 11008 and not llama.bias and not llama.tie_embeddings
    assert (llama.norm, llama.activation, llama.positional) == ("rmsnorm", "swiglu", "rope")


def test_config_round_trips_through_json():
    cfg = tiny_llama(window=4, dropout=0.1)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['n_embd'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_embd": 3})


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"d_model": 30}, "d_model=30 is not divisible by n_heads=4"),
        ({"n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
        ({"norm": "batchnorm"}, r"unknown norm 'batchnorm'; choose one of \['layernorm'"),
        ({"norm_position": "middle"}, "unknown norm_position 'middle'"),
        ({"activation": "tanh"}, "unknown activation 'tanh'"),
        ({"positional": "alibi"}, "unknown positional 'alibi'"),
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer, got -5"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"window": 4, "causal": False}, "sliding window needs causal=True"),
        ({"positional": "rope", "d_model": 12, "n_heads": 4}, "even head_dim, got 3"),
    ],
)
def test_config_errors_are_clear(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


# ----------------------------------------------------------------------- forward errors


def test_forward_errors_are_clear():
    model = TransformerLM(tiny()).eval()
    with pytest.raises(ValueError, match=r"LongTensor of shape \(B, T\), got torch.float32 of"):
        model(ids().float())
    with pytest.raises(ValueError, match=r"got torch.int64 of shape \(10,\)"):
        model(ids()[0])
    with pytest.raises(ValueError, match=r"token id 97 is out of range for vocab_size 97"):
        model(torch.tensor([[1, 97, 2]]))
    with pytest.raises(
        ValueError,
        match=r"sequence has 25 tokens but the context window is 24; "
        r"crop the prompt to the last 24 tokens",
    ):
        model(ids(1, 25))


@pytest.mark.parametrize("positional", ["learned", "rope", "none"])
def test_cache_beyond_context_window_is_refused(positional):
    model = TransformerLM(tiny(positional=positional)).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(ids(1, 20), cache=cache)
        with pytest.raises(ValueError, match=r"sequence has 25 tokens \(20 cached \+ 5 new\)"):
            model(ids(1, 5), cache=cache)


def test_init_weights_false_skips_only_this_models_init(monkeypatch):
    """A loader that overwrites every weight asks for no random init, for its own model only
    (lmkit.pretrained.load_gguf); the default still runs GPT-2's init."""
    calls = []
    real = TransformerLM.reset_parameters
    monkeypatch.setattr(TransformerLM, "reset_parameters",
                        lambda self: calls.append(self) or real(self))
    with torch.device("meta"):
        skipped = TransformerLM(tiny(), init_weights=False)
    assert calls == [] and skipped.lm_head.weight.is_meta
    torch.manual_seed(0)
    initialised = TransformerLM(tiny())
    assert calls == [initialised]
    with pytest.raises(TypeError, match="init_weights must be True or False, got 'no'"):
        TransformerLM(tiny(), init_weights="no")
