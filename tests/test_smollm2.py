"""SmolLM2-135M-Instruct on lmkit equals Hugging Face's GGUF loader: logits, generation, tokens.

Hugging Face's loader takes about 25 s (longer on a busy machine): it is loaded once, here.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from lmkit import data, generate, pretrained  # noqa: E402

PATH = pretrained.smollm2_path()
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Quelle est la couleur du ciel ? 🌍 Réponse :",
    "In 1492, Columbus sailed 3 ships across the ocean; the voyage took  70 days.",
]


@pytest.fixture(scope="module")
def hf_model():
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(PATH.parent), gguf_file=PATH.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    """HF's tokenizer from the same file, with the pre-tokenizer of SmolLM2's own
    tokenizer.json (each digit alone, then GPT-2's byte-level regex): HF's GGUF loader drops
    the file's `tokenizer.ggml.pre = "smollm"`, which llama.cpp honours."""
    from tokenizers import pre_tokenizers

    tok = transformers.AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)
    assert isinstance(tok.backend_tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel)
    tok.as_loaded = tok.backend_tokenizer.pre_tokenizer
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return tok


@pytest.fixture(scope="module")
def ours(smollm2):
    return smollm2


def hf_ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_logits_equal_hf_in_float32(hf_model, hf_tokenizer, ours, layout):
    model = ours[0] if layout == "interleaved" else pretrained.load_smollm2(rope_layout=layout)[0]
    worst = 0.0
    for text in PROMPTS:
        ids = torch.tensor([hf_ids(hf_tokenizer, text)])
        with torch.no_grad():
            expected = hf_model(ids).logits
            got = model(ids)
        worst = max(worst, (got - expected).abs().max().item())
    assert worst < 1e-4, f"max |logit difference| {worst:.2e}"


def test_greedy_generation_with_cache_equals_hf_generate(hf_model, hf_tokenizer, ours):
    model, tok = ours
    lengths = []
    for text in PROMPTS[:2]:  # both stop at <|im_end|> (id 2), HF's generation_config's eos
        ids = torch.tensor([tok.encode(text)])
        expected = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                     do_sample=False)
        got = generate(model, ids, 32, use_cache=True, eos_token_id=tok.eos_token_id)
        lengths.append(got.shape[1] - ids.shape[1])
        assert got.tolist() == expected.tolist(), (tok.decode(got[0]), tok.decode(expected[0]))
    assert max(lengths) == 32
    assert "Paris" in tok.decode(generate(model, torch.tensor([tok.encode(PROMPTS[0])]), 4)[0])


def test_chat_template_string_is_hf_s(hf_tokenizer, ours):
    tok = ours[1]
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            expected = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                        add_generation_prompt=gen)
            assert tok.apply_chat_template(messages, add_generation_prompt=gen) == expected
            assert tok.encode(expected) == hf_ids(hf_tokenizer, expected)


VARIED = PROMPTS + [
    "", " ", "  leading spaces\tand\ttabs\n\n\nnewlines  ", "naïve café, Zürich — “quotes”",
    "日本語のテキスト、中文文本", "emoji 👍🏽👨‍👩‍👧 and \U00040000 rare planes", "x = 12345678.90e-3",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>after",
    "a\x04b\x7fc\x00d", "don't I'll we've they're", "   1  22   333",
]


def test_token_ids_equal_hf_on_varied_text(hf_tokenizer, ours):
    tok = ours[1]
    for text in VARIED:
        assert tok.encode(text) == hf_ids(hf_tokenizer, text), repr(text)


def test_without_digits_hf_s_gguf_tokenizer_agrees_as_loaded(hf_tokenizer, ours):
    """On text without digits the pre-tokenizer fix above makes no difference."""
    backend = hf_tokenizer.backend_tokenizer
    fixed, backend.pre_tokenizer = backend.pre_tokenizer, hf_tokenizer.as_loaded
    try:
        for text in [t for t in VARIED if not any(c.isdigit() for c in t)]:
            assert ours[1].encode(text) == hf_ids(hf_tokenizer, text), repr(text)
        assert ours[1].encode("  1") != hf_ids(hf_tokenizer, "  1")  # where they differ
    finally:
        backend.pre_tokenizer = fixed


def test_token_ids_equal_hf_on_the_whole_shakespeare_corpus(hf_tokenizer, ours):
    text = data.shakespeare()
    expected = hf_ids(hf_tokenizer, text)
    got = ours[1].encode(text)
    assert len(got) == len(expected) and got == expected
    assert ours[1].decode(got) == text


@given(st.text(max_size=40))
def test_token_ids_equal_hf_property(hf_tokenizer, ours, text):
    assert ours[1].encode(text) == hf_ids(hf_tokenizer, text)
