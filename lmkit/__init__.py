"""lmkit: a transformer language model built step by step, one module per chapter.

    tokenizer    01  text <-> ids (characters, bytes, byte-level BPE)
    data         01  the Shakespeare corpus, offline; 07 splits and batches
    embeddings   02  token embeddings; learned, sinusoidal and rotary positions
    attention    03  scaled dot-product and multi-head attention, masks, KV cache
    ffn          04  the feed-forward network and its activations
    norm         05  LayerNorm and RMSNorm
    model        06  ModelConfig and TransformerLM (GPT-2 and Llama styles)
    pretrained   06  loading Hugging Face checkpoints (safetensors); 09 GGUF, SmolLM2
    train        07  the training loop, schedules, checkpoints, the course model; 12 scaling options
    distributed  12  torch.distributed set-up for torchrun (DDP, FSDP): rank, all-reduce, barrier
    generation   08  greedy, sampling, top-k, top-p, beam search, with a KV cache
    blockwise    09  attention block by block with an online softmax (FlashAttention's idea)
    gguf         09  llama.cpp's GGUF files: metadata, tensors, Q4_1/Q8_0 dequantisation
    chat         09  chat tokenizer and template, `python -m lmkit chat`
    inspect      11  named activations: run_with_cache, hooks (ablation, patching)
    io               files: one atomic writer, one safetensors reader (nothing unpickled)
    checks           the exercise checkers used by exercises/ and solutions/

`lmkit.generate(model, ids, max_new_tokens, ...)` follows Hugging Face's `generate()`.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # most often: the system Python rather than the course's .venv
    import sys

    raise ImportError(
        f"lmkit needs PyTorch, which this Python ({sys.executable}) cannot import ({e}). "
        "Use the course's environment: `.venv/bin/python -m lmkit ...`, or activate it first "
        "(`source .venv/bin/activate`); `make setup` creates it."
    ) from e

from . import (  # noqa: E402
    attention,
    blockwise,
    chat,
    data,
    distributed,
    embeddings,
    ffn,
    generation,
    gguf,
    inspect,
    io,
    model,
    norm,
    pretrained,
    tokenizer,
    train,
)
from .generation import generate, generate_stream  # noqa: E402
from .model import ModelConfig, TransformerLM  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "tokenizer", "data", "embeddings", "attention", "ffn", "norm", "model", "pretrained",
    "train", "distributed", "generation", "inspect", "io", "blockwise", "gguf", "chat", "ModelConfig",
    "TransformerLM", "generate", "generate_stream",
]
