"""all-MiniLM-L6-v2 on lmkit (chapter 10) against Hugging Face `BertModel` on the same folder:
mean pooling over the real tokens and L2 normalisation, written here with torch ops."""

import pytest
import torch
from transformers import BertModel, BertTokenizer

from lmkit.pretrained import load_minilm, minilm_path, pad_batch, sentence_embeddings

SENTENCES = [
    "A man is eating food.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "To be, or not to be: that is the question.",
    "The cat sits outside",
    "Héllo wörld! 你好",
    "",
    "word " * 300,  # longer than the model's 256 tokens: cut, as sentence-transformers does
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def hf():
    folder = minilm_path()
    return BertModel.from_pretrained(folder).eval(), BertTokenizer.from_pretrained(str(folder))


def hf_embeddings(hf, sentences):
    """The reference: HF tokenizer (padding, truncation to 256) + BertModel + mean + normalise."""
    model, tok = hf
    batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state  # (B, T, C)
    m = batch["attention_mask"][:, :, None].float()  # (B, T, 1)
    pooled = (h * m).sum(1) / m.sum(1)
    return pooled / pooled.norm(dim=-1, keepdim=True)


def test_embeddings_equal_hf_one_sentence_at_a_time(minilm, hf):
    model, tok = minilm
    for s in SENTENCES[:-1]:  # the long one is in the batch test
        got = sentence_embeddings(model, tok, [s])
        assert got.shape == (1, 384)
        torch.testing.assert_close(got, hf_embeddings(hf, [s]), atol=1e-5, rtol=0)


def test_embeddings_equal_hf_in_padded_batches(minilm, hf):
    model, tok = minilm
    want = hf_embeddings(hf, SENTENCES)  # one padded batch, in HF
    for batch_size in (32, 4):
        got = sentence_embeddings(model, tok, SENTENCES, batch_size=batch_size)
        assert got.shape == (len(SENTENCES), 384)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_padded_batch_through_the_model_equals_hf_hidden_states(minilm, hf):
    model, tok = minilm
    ids, mask = pad_batch([tok.encode(s) for s in SENTENCES[:5]], tok.pad_id)
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
        want = hf[0](input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_similar_sentences_are_closer(minilm):
    model, tok = minilm
    e = sentence_embeddings(model, tok, ["A man is eating food.", "A man is eating a meal.",
                                         "The stock market fell sharply today."])
    sim = e @ e.T
    assert sim[0, 1] > 0.7 > sim[0, 2]


def test_errors(minilm):
    model, tok = minilm
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_batch([])
    from lmkit.model import ModelConfig, TransformerLM

    lm = TransformerLM(ModelConfig.bert(vocab_size=tok.vocab_size, d_model=32, n_layers=1,
                                        n_heads=2, d_ff=64))
    with pytest.raises(ValueError, match="without a head"):
        sentence_embeddings(lm, tok, ["hi"])


@pytest.mark.parametrize("bad", [0, 1, -3, 2.5, True])
def test_max_length_below_two_or_not_an_int_is_refused(minilm, bad):
    """[CLS] and [SEP] take two places: max_length=1 used to cut with [:-1] (all tokens but the
    last, longer than the limit) and 0 meant 'the default'."""
    model, tok = minilm
    with pytest.raises(ValueError, match=r"max_length must be an integer >= 2"):
        sentence_embeddings(model, tok, ["the cat sat on the mat"], max_length=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_batch_size_must_be_a_positive_integer(minilm, bad):
    model, tok = minilm
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        sentence_embeddings(model, tok, ["a", "b"], batch_size=bad)
