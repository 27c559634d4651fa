"""Chapter 10's encoder: trunk + heads, the BERT layout, padding masks, BERT checkpoints.

References are independent of lmkit: Hugging Face `BertForMaskedLM` / `BertModel` built from a
config with random weights and saved with `save_pretrained`, and torch ops.
"""

import json

import pytest
import torch
from reference import perturbed
from transformers import BertConfig, BertForMaskedLM, BertModel

from lmkit.model import ModelConfig, TransformerLM, mean_pool
from lmkit.pretrained import config_from_hf, load_hf
from lmkit.train import load_model, save_model

V, CTX = 101, 32


def tiny_bert(**overrides):
    base = dict(vocab_size=V, context_length=CTX, d_model=32, n_layers=2, n_heads=4, d_ff=48)
    return ModelConfig.bert(**{**base, **overrides})



def ids(B=2, T=10, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def padding(lengths, T):
    """attention_mask (B, T): 1 for the first `length` tokens of each row, 0 after."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


# ----------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("fast", [True, False])
def test_bidirectional_output_at_i_depends_on_later_tokens(fast):
    torch.manual_seed(0)
    model = TransformerLM(tiny_bert(), fast=fast).eval()
    x = ids(1, 8)
    y = x.clone()
    y[0, 6] = (y[0, 6] + 1) % V  # change a late token
    with torch.no_grad():
        hx, hy = model.trunk(x), model.trunk(y)
    changed = (hx - hy).abs().amax(dim=-1)[0]  # (T,)
    assert (changed[:6] > 1e-4).all(), "earlier positions must see the later token"


def test_causal_output_at_i_ignores_later_tokens_but_bidirectional_does_not():
    torch.manual_seed(0)
    causal = TransformerLM(tiny_bert(causal=True)).eval()
    bidir = TransformerLM(tiny_bert()).eval()
    bidir.load_state_dict(causal.state_dict())  # same weights, only the mask differs
    x = ids(1, 8)
    y = x.clone()
    y[0, 5] = (y[0, 5] + 3) % V
    with torch.no_grad():
        assert torch.equal(causal.trunk(x)[:, :5], causal.trunk(y)[:, :5])
        assert not torch.allclose(bidir.trunk(x)[:, :5], bidir.trunk(y)[:, :5])


@pytest.mark.parametrize("fast", [True, False])
def test_padded_batch_gives_the_same_vectors_as_each_sentence_alone(fast):
    torch.manual_seed(0)
    model = perturbed(TransformerLM(tiny_bert(head="none"), fast=fast))
    lengths = [10, 4, 7, 1]
    x = ids(4, 10, seed=3)
    am = padding(lengths, 10)
    x = x * am  # pad id 0 after the end, as a tokenizer would
    with torch.no_grad():
        batch = model(x, attention_mask=am)
        for b, n in enumerate(lengths):
            alone = model(x[b : b + 1, :n])
            torch.testing.assert_close(batch[b : b + 1, :n], alone, atol=1e-5, rtol=1e-5)
    # without the mask the padding leaks into the real tokens' vectors
    with torch.no_grad():
        leaky = model(x)
    assert not torch.allclose(leaky[1, :4], batch[1, :4], atol=1e-3)


def test_padding_mask_errors_name_the_shapes():
    model = TransformerLM(tiny_bert()).eval()
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, Tk\) = \(2, 10\)"):
        model(ids(2, 10), attention_mask=torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(ids(2, 10), token_type_ids=torch.zeros(2, 9, dtype=torch.long))
    gpt = TransformerLM(ModelConfig.gpt2(vocab_size=V, context_length=CTX, d_model=32,
                                         n_layers=1, n_heads=4))
    with pytest.raises(ValueError, match="no token-type embeddings"):
        gpt(ids(2, 10), token_type_ids=torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown head 'pool'"):
        tiny_bert(head="pool")


def test_attention_mask_must_hold_ones_and_zeros():
    """Hugging Face's "extended" mask (0 for real, -10000 for padding) read as 1/0 would mark
    the padding real and the real tokens padding: refuse anything but 0/1 or booleans."""
    model = TransformerLM(tiny_bert()).eval()
    x = ids(2, 6)
    extended = torch.tensor([[0.0] * 6, [0.0] * 4 + [-10000.0] * 2])
    with pytest.raises(ValueError, match=r"1 for a real token and 0 for padding.*-10000"):
        model(x, attention_mask=extended)
    with pytest.raises(ValueError, match=r"got 2"):
        model(x, attention_mask=torch.full((2, 6), 2))
    ones = torch.ones(2, 6)
    for ok in (ones, ones.long(), ones.bool()):
        torch.testing.assert_close(model(x, attention_mask=ok), model(x))


def test_token_type_ids_out_of_range_or_not_integers_are_named():
    model = TransformerLM(tiny_bert()).eval()  # type_vocab_size 2: segments 0 and 1
    x = ids(2, 6)
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, 1\].*got 2"):
        model(x, token_type_ids=torch.full_like(x, 2))
    with pytest.raises(ValueError, match=r"token_type_ids must be integers.*float32"):
        model(x, token_type_ids=torch.zeros(2, 6))


# ----------------------------------------------------------------------------- heads


def test_trunk_plus_head_is_the_whole_model():
    torch.manual_seed(0)
    for config in (tiny_bert(), ModelConfig.gpt2(vocab_size=V, context_length=CTX, d_model=32,
                                                  n_layers=2, n_heads=4)):
        model = perturbed(TransformerLM(config))
        x = ids(2, 9)
        with torch.no_grad():
            h = model.trunk(x)  # (B, T, C)
            if model.mlm_transform is not None:
                d, n = model.mlm_transform.dense, model.mlm_transform.norm
                h_mlm = torch.nn.functional.layer_norm(
                    torch.nn.functional.gelu(h @ d.weight.T + d.bias), (32,), n.weight, n.bias,
                    eps=config.norm_eps)
                want = h_mlm @ model.tok_emb.weight.T + model.lm_head.bias
            else:
                want = h @ model.tok_emb.weight.T  # the tied LM head of chapter 06
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
        assert h.shape == (2, 9, 32)


def test_head_none_returns_H_and_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = perturbed(TransformerLM(tiny_bert(head="none")))
    assert model.lm_head is None and model.mlm_transform is None
    x = ids(2, 6)
    with torch.no_grad():
        assert model(x).shape == (2, 6, 32)
    save_model(model, tmp_path)
    again = load_model(tmp_path, device="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_mlm_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = perturbed(TransformerLM(tiny_bert()))
    save_model(model, tmp_path)
    again = load_model(tmp_path, device="cpu").eval()
    assert again.lm_head.weight is again.tok_emb.weight  # still tied after loading
    with torch.no_grad():
        torch.testing.assert_close(again(ids()), model(ids()))


def test_old_config_json_without_the_new_fields_still_loads(tmp_path):
    """Checkpoints saved before chapter 10 have no type_vocab_size / embed_norm / head keys."""
    config = ModelConfig.gpt2(vocab_size=V, context_length=CTX, d_model=32, n_layers=1, n_heads=4)
    model = perturbed(TransformerLM(config))
    save_model(model, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    for key in ("type_vocab_size", "embed_norm", "head"):
        d.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(d))
    again = load_model(tmp_path, device="cpu").eval()
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        torch.testing.assert_close(again(ids()), model(ids()))


def test_mean_pool_against_a_loop():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    am = padding([5, 2, 3], 5)
    want = torch.stack([h[b, :n].mean(dim=0) for b, n in enumerate([5, 2, 3])])
    torch.testing.assert_close(mean_pool(h, am), want)
    torch.testing.assert_close(mean_pool(h, am.bool()), want)
    torch.testing.assert_close(mean_pool(h), h.mean(dim=1))
    with pytest.raises(ValueError, match="does not match"):
        mean_pool(h, am[:, :4])


# ----------------------------------------------------------------------------- BERT checkpoints


def bert_config(**kw):
    base = dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=80, max_position_embeddings=CTX, type_vocab_size=2)
    return BertConfig(**{**base, **kw})


@pytest.mark.parametrize("extra", [{}, {"hidden_act": "gelu_new", "layer_norm_eps": 1e-6}])
def test_bert_mlm_logits_match_hf(tmp_path, extra):
    torch.manual_seed(0)
    hf = perturbed(BertForMaskedLM(bert_config(**extra)))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.head == "mlm" and not ours.config.causal
    x, tt = ids(3, 12), torch.randint(0, 2, (3, 12), generator=torch.Generator().manual_seed(1))
    am = padding([12, 5, 9], 12)
    with torch.no_grad():
        want = hf(input_ids=x, attention_mask=am, token_type_ids=tt).logits
        got = ours(x, attention_mask=am, token_type_ids=tt)
    real = am.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # no mask, no token types: everything in segment 0
        torch.testing.assert_close(ours(x), hf(input_ids=x).logits, atol=1e-5, rtol=1e-5)


def test_bert_model_hidden_states_match_hf(tmp_path):
    torch.manual_seed(0)
    hf = perturbed(BertModel(bert_config()))  # with a pooler, which lmkit ignores
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.head == "none"
    x, am = ids(2, 10), padding([10, 6], 10)
    with torch.no_grad():
        want = hf(input_ids=x, attention_mask=am).last_hidden_state
        got = ours(x, attention_mask=am)
    torch.testing.assert_close(got[am.bool()], want[am.bool()], atol=1e-5, rtol=1e-5)


def test_config_from_hf_bert_and_its_errors():
    c = config_from_hf({**bert_config().to_dict(), "architectures": ["BertForMaskedLM"]})
    assert (c.norm_position, c.activation, c.causal, c.embed_norm, c.type_vocab_size, c.head) == (
        "post", "gelu", False, True, 2, "mlm")
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        config_from_hf({**bert_config().to_dict(), "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="hidden_act 'tanh'"):
        config_from_hf({**bert_config().to_dict(), "hidden_act": "tanh"})


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("head", ["mlm", "none"])
def test_generate_refuses_an_encoder(head):
    from lmkit.generation import generate

    model = TransformerLM(tiny_bert(head=head)).eval()
    with pytest.raises(ValueError, match="(?i)encoder|causal|bidirectional"):
        generate(model, ids(1, 3), max_new_tokens=2)
