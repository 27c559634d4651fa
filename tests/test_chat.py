"""lmkit.chat.ChatTokenizer on small tokenizers built here (chapter 09); SmolLM2's own tokenizer
is compared with Hugging Face's in test_smollm2.py."""

import pytest

import lmkit.tokenizer
from lmkit import data
from lmkit.chat import ChatTokenizer
from lmkit.tokenizer import BPETokenizer, merge

TEXTS = ["hello world", "naïve café 2024", "the the the\n\nthen", "emoji 🤗 and ÿ", ""]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(data.shakespeare()[:20_000], 300)


def _chat(bpe, **kwargs):
    return ChatTokenizer(bpe.merges, bpe.special_tokens, byte_ids=bpe.byte_ids, **kwargs)


def _every_merge_in_order(bpe, ids):
    """Reference BPE: apply each merge once, in the order learned (equal to the lowest rank
    first, since a pair's parts are made by earlier merges)."""
    for pair, new_id in bpe.merges.items():
        ids = merge(ids, pair, new_id)
    return ids


@pytest.mark.parametrize("text", TEXTS)
def test_missing_bytes_are_left_out_and_the_rest_merges_as_bpe(bpe, text):
    """A byte without a token of its own is dropped (as Hugging Face does) and the remaining
    bytes of each pre-split piece merge as BPE merges them."""
    missing = {0xC3, 0xFF}  # the first byte of é, ï, ÿ
    chat = _chat(bpe, missing_bytes=missing)
    want = []
    for piece in bpe._split.findall(text):
        kept = [bpe.byte_ids[b] for b in piece.encode("utf-8") if b not in missing]
        want += _every_merge_in_order(bpe, kept)
    assert chat.encode(text) == want
    assert _chat(bpe).encode(text) == bpe.encode(text)  # no missing bytes: plain BPE


def test_chat_tokenizer_merges_with_bpe_tokenizers_merge_loop(bpe, monkeypatch):
    """One implementation of BPE: the chat tokenizer (with missing bytes, as SmolLM2's) applies
    its merges through lmkit.tokenizer's merge loop, not a copy of it."""
    calls, loops = [], []
    real_merge, real_loop = lmkit.tokenizer.merge, BPETokenizer._encode_piece

    def spy(ids, pair, new_id):
        calls.append(pair)
        return real_merge(ids, pair, new_id)

    def loop_spy(self, piece):  # a copy of the loop in ChatTokenizer would bypass this
        loops.append(piece)
        return real_loop(self, piece)

    monkeypatch.setattr(lmkit.tokenizer, "merge", spy)
    monkeypatch.setattr(BPETokenizer, "_encode_piece", loop_spy)
    chat = _chat(bpe, missing_bytes={0xFF})
    ids = chat.encode("the other thing")
    assert calls and len(ids) < len("the other thing")
    assert loops == ["the", " other", " thing"]  # every piece went through BPETokenizer's loop


def test_chat_tokenizer_neither_saves_nor_loads_gpt2_files(bpe, tmp_path):
    """GPT-2's vocab.json/merges.txt cannot hold the chat template, the digit split or the
    missing bytes: saving refuses, and so does ChatTokenizer.load, which would otherwise
    hand back a tokenizer without them as if it were the chat tokenizer. Both say where a
    chat tokenizer comes from."""
    chat = _chat(bpe, chat_template="{{ messages[0]['content'] }}", eos_token=None,
                 split_digits=True, missing_bytes={0xFF})
    with pytest.raises(NotImplementedError, match=r"load_gguf"):
        chat.save(tmp_path / "chat")
    assert not (tmp_path / "chat").exists()
    bpe.save(tmp_path / "bpe")  # a plain BPE folder loads as a BPETokenizer, not a chat one
    with pytest.raises(NotImplementedError, match=r"BPETokenizer\.load.*load_gguf"):
        ChatTokenizer.load(tmp_path / "bpe")
    assert BPETokenizer.load(tmp_path / "bpe").encode("the 2024") == bpe.encode("the 2024")
