import json

import pytest
import torch
from reference import perturbed
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig, LlamaForCausalLM

from lmkit.pretrained import config_from_hf, load_hf

V = 211



def ids(B=2, T=12):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def gpt2_config(n_embd, n_layer, n_head, **kw):
    return GPT2Config(vocab_size=V, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                      bos_token_id=0, eos_token_id=0, **kw)


@pytest.mark.parametrize(
    "n_embd,n_layer,n_head,extra",
    [
        (32, 1, 2, {}),
        (64, 2, 4, {"n_inner": 100}),
        (96, 3, 6, {"activation_function": "gelu", "layer_norm_epsilon": 1e-6}),
    ],
)
def test_gpt2_logits_match_hf(tmp_path, n_embd, n_layer, n_head, extra):
    torch.manual_seed(0)
    hf = perturbed(GPT2LMHeadModel(gpt2_config(n_embd, n_layer, n_head, **extra)))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert not ours.training
    assert ours.lm_head.weight.data_ptr() == ours.tok_emb.weight.data_ptr()
    x = ids()
    with torch.no_grad():
        expected = hf(x, output_hidden_states=True)
        logits, hidden = ours(x, return_hidden=True)
    assert (logits - expected.logits).abs().max().item() < 1e-5
    # HF's last hidden state is after ln_f; ours are all block outputs
    for h_ours, h_hf in zip(hidden[:-1], expected.hidden_states[:-1], strict=True):
        torch.testing.assert_close(h_ours, h_hf, atol=1e-5, rtol=1e-5)


def test_gpt2_keys_without_transformer_prefix(tmp_path):
    torch.manual_seed(0)
    hf = perturbed(GPT2Model(gpt2_config(32, 2, 4)))  # saved as "h.0...", not "transformer.h.0..."
    hf.save_pretrained(tmp_path)
    assert not any(k.startswith("transformer.") for k in load_file(tmp_path / "model.safetensors"))
    ours = load_hf(str(tmp_path))
    x = ids()
    with torch.no_grad():
        _, hidden = ours(x, return_hidden=True)
        torch.testing.assert_close(ours.norm_f(hidden[-1]), hf(x).last_hidden_state)


@pytest.mark.parametrize(
    "sizes",
    [
        dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=64),
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=96, rope_theta=500000.0, rms_norm_eps=1e-5),
        dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
             intermediate_size=80, tie_word_embeddings=True),
    ],
)
def test_llama_logits_match_hf(tmp_path, sizes):
    torch.manual_seed(0)
    hf_config = LlamaConfig(vocab_size=V, max_position_embeddings=32, bos_token_id=0,
                            eos_token_id=0, **sizes)
    hf = perturbed(LlamaForCausalLM(hf_config))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.num_kv_heads == sizes["num_key_value_heads"]
    x = ids()
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff < 1e-5


def test_mismatching_checkpoint_names_the_tensor_and_both_shapes(tmp_path):
    GPT2LMHeadModel(gpt2_config(32, 1, 2)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_positions": 16}))
    with pytest.raises(
        ValueError,
        match=r"'transformer.wpe.weight' has shape \(32, 32\) but lmkit's 'pos_emb.weight' "
        r"has shape \(16, 32\)",
    ):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    with pytest.raises(ValueError, match=r"'transformer.h.0.mlp.c_fc.weight' has shape \(32, 128"):
        load_hf(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    GPT2LMHeadModel(gpt2_config(32, 1, 2)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["transformer.h.0.ln_2.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"no tensor 'h.0.ln_2.bias' \(prefix 'transformer.' opt"):
        load_hf(tmp_path)


def test_unsupported_folders_and_names(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"model_type 't5' is not supported"):
        config_from_hf({"model_type": "t5"})
    (tmp_path / "config.json").write_text(json.dumps(gpt2_config(32, 1, 2).to_dict()))
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder with config.json"):
        load_hf(tmp_path / "nowhere")

    import huggingface_hub

    def offline(*args, **kwargs):
        raise RuntimeError("no network in this test")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match=r"no network in this test.*Offline, pass the path"):
        load_hf("someone/some-model", allow_download=True)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"config.json is not valid JSON \(Expecting property name"),
    ("[]", r"config.json should hold a JSON object \(model_type, vocab_size, ...\), not a list"),
    ('{"model_type": "gpt2"}', r"config.json has no 'vocab_size', which a model_type 'gpt2' "),
    ('{"model_type": "t5"}', r"config.json: model_type 't5' is not supported"),
    ('{"model_type": "bert"}', r"config.json has no 'vocab_size', which a model_type 'bert' "),
])
def test_a_broken_config_json_is_named_with_its_problem(tmp_path, content, message):
    GPT2LMHeadModel(gpt2_config(32, 1, 2)).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        load_hf(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


def test_a_file_instead_of_a_folder_says_not_a_folder(tmp_path):
    GPT2LMHeadModel(gpt2_config(32, 1, 2)).save_pretrained(tmp_path)
    with pytest.raises(NotADirectoryError, match=r"model.safetensors' is a file, not a folder.*"
                                                 r"holds config.json"):
        load_hf(tmp_path / "model.safetensors")


def test_a_path_typo_never_tries_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    tried = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: tried.append(a))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "shakespeare").mkdir(parents=True)
    for typo in ("models/shakespear", "shakespear", "gpt2"):
        with pytest.raises(FileNotFoundError, match=rf"'{typo}' is not a folder.*no such folder "
                                                    rf"'{tmp_path / typo}'.*allow_download=True"):
            load_hf(typo)
    assert tried == []


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "the file is empty"),
        (None, "looks like a PyTorch pickle"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}", "not a safetensors header"),
    ],
)
def test_a_file_that_is_not_safetensors_is_named_with_the_likely_cause(tmp_path, content, cause):
    GPT2LMHeadModel(gpt2_config(32, 1, 2)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    if content is None:
        torch.save({"w": torch.zeros(3)}, weights)  # a pickle named model.safetensors
    else:
        weights.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{weights} is not a valid safetensors file: .*{cause}"):
        load_hf(tmp_path)
