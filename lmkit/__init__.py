"""lmkit: a transformer language model built step by step, one module per chapter.

    tokenizer    01  text <-> ids (characters, bytes, byte-level BPE)
    data         01  the Shakespeare corpus, offline
    embeddings   02  token embeddings; learned, sinusoidal and rotary positions
    attention    03  scaled dot-product and multi-head attention, masks, KV cache
    ffn          04  the feed-forward network and its activations
    norm         05  LayerNorm and RMSNorm
    model        06  ModelConfig and TransformerLM (GPT-2 and Llama styles)
    pretrained   06  loading Hugging Face checkpoints (safetensors)
    checks           the exercise checkers used by exercises/ and solutions/
"""

from . import attention, data, embeddings, ffn, model, norm, pretrained, tokenizer
from .model import ModelConfig, TransformerLM

__version__ = "0.1.0"
__all__ = [
    "tokenizer", "data", "embeddings", "attention", "ffn", "norm", "model", "pretrained",
    "ModelConfig", "TransformerLM",
]
