"""The transformer language model: config, block, stack and LM head (chapter 06).

GPT-2 style and Llama style are the same classes with different `ModelConfig` settings
(chapter 09); `causal=False` gives a bidirectional encoder (chapter 10).

A model is a trunk (embeddings, blocks, final norm: ids (B, T) -> H (B, T, C), `trunk`) plus a
head (chapter 10): `head="lm"` the LM head of chapter 06, `head="mlm"` BERT's masked-LM head
(dense, activation, LayerNorm, then the same tied decoder with a bias), `head="none"` no head
(the model returns H; `mean_pool` turns H into one vector per sequence).

Weight names, and the Hugging Face names they load from (`lmkit.pretrained`):

    lmkit                         HF GPT-2 (`transformer.`)      HF Llama (`model.`)
    tok_emb.weight                wte.weight                     embed_tokens.weight
    pos_emb.weight                wpe.weight                     (RoPE: no weights)
    blocks.{i}.norm1              h.{i}.ln_1                     layers.{i}.input_layernorm
    blocks.{i}.attn.{q,k,v}_proj  h.{i}.attn.c_attn (split, .T)  layers.{i}.self_attn.{q,k,v}_proj
    blocks.{i}.attn.o_proj        h.{i}.attn.c_proj (.T)         layers.{i}.self_attn.o_proj
    blocks.{i}.norm2              h.{i}.ln_2                     layers.{i}.post_attention_layernorm
    blocks.{i}.mlp.gate_proj      -                              layers.{i}.mlp.gate_proj
    blocks.{i}.mlp.up_proj        h.{i}.mlp.c_fc (.T)            layers.{i}.mlp.up_proj
    blocks.{i}.mlp.down_proj      h.{i}.mlp.c_proj (.T)          layers.{i}.mlp.down_proj
    norm_f                        ln_f                           norm
    lm_head.weight                (tied to wte)                  lm_head.weight

BERT (`bert.`, chapter 10): tok_emb, pos_emb, type_emb, emb_norm = embeddings.{word,position,
token_type}_embeddings, embeddings.LayerNorm; blocks.{i}.attn.{q,k,v}_proj =
encoder.layer.{i}.attention.self.{query,key,value}, o_proj and norm1 = attention.output.{dense,
LayerNorm}, mlp.up_proj = intermediate.dense, mlp.down_proj and norm2 = output.{dense,LayerNorm};
mlm_transform.{dense,norm} = cls.predictions.transform.{dense,LayerNorm}, lm_head.bias =
cls.predictions.bias.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from lmkit._validate import check_fast
from lmkit.attention import KVCache, MultiHeadAttention, RollingKVCache
from lmkit.embeddings import (
    ROPE_LAYOUTS,
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)
from lmkit.ffn import ACTIVATIONS, FeedForward, get_activation
from lmkit.inspect import HookPoint
from lmkit.norm import NORMS, make_norm

__all__ = ["ModelConfig", "Block", "TransformerLM", "MaskedLMTransform", "mean_pool"]

POSITIONALS = ("learned", "sinusoidal", "rope", "none")
NORM_POSITIONS = ("pre", "post")
HEADS = ("lm", "mlm", "none")
# Kernel choices older lmkit saved in config.json; now the runtime flag `fast`, not the model's.
RETIRED_FIELDS = ("use_sdpa", "fused_ops")


@dataclass
class ModelConfig:
    """Every size and design choice of a model; the defaults are GPT-2 small (chapter 06).

    `n_kv_heads=None` means n_heads (plain multi-head attention), `d_ff=None` means 4 * d_model;
    `num_kv_heads` and `ffn_dim` give the resolved values. Which kernels run (PyTorch's or the
    written-out ones) is not part of the model: see `TransformerLM(config, fast=...)`.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    d_ff: int | None = None
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_position: str = "pre"  # "pre" (GPT-2, Llama) | "post" (original Transformer, BERT)
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # "gelu" | "gelu_tanh" | "relu" | "silu" | "swiglu"
    positional: str = "learned"  # "learned" | "sinusoidal" | "rope" | "none"
    rope_theta: float = 10000.0
    rope_layout: str = "half"  # "half" (HF, GPT-NeoX) | "interleaved" (Meta, GGUF) (chapter 09)
    bias: bool = True  # biases in every Linear and LayerNorm
    tie_embeddings: bool = True  # lm_head.weight is tok_emb.weight
    dropout: float = 0.0
    causal: bool = True  # False: bidirectional encoder (chapter 10)
    window: int | None = None  # sliding-window attention span (chapter 09)
    type_vocab_size: int = 0  # > 0: token-type (segment) embeddings, as BERT (chapter 10)
    embed_norm: bool = False  # a norm right after the embeddings, as BERT (chapter 10)
    head: str = "lm"  # "lm" (chapter 06) | "mlm" (BERT's masked-LM head) | "none" (returns H)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            _check_positive(name, getattr(self, name))
        for name in ("n_kv_heads", "d_ff", "window"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        _check_choice("norm", self.norm, NORMS)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("activation", self.activation, tuple(ACTIVATIONS))
        _check_choice("positional", self.positional, POSITIONALS)
        _check_choice("head", self.head, HEADS)
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}")
        _check_choice("rope_layout", self.rope_layout, ROPE_LAYOUTS)
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}"
            )
        if self.positional == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.positional == "sinusoidal" and self.d_model % 2 != 0:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.window is not None and not self.causal:
            raise ValueError("a sliding window needs causal=True")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(f"norm_eps and rope_theta must be > 0, got {self.norm_eps}, "
                             f"{self.rope_theta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @classmethod
    def gpt2(cls, **overrides) -> ModelConfig:
        """GPT-2 small (124M): learned positions, pre-LayerNorm, tanh-GELU, biases, tied head."""
        base = dict(
            vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12,
            norm="layernorm", norm_position="pre", norm_eps=1e-5, activation="gelu_tanh",
            positional="learned", bias=True, tie_embeddings=True,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def llama(cls, **overrides) -> ModelConfig:
        """Llama's design at GPT-2-small size: RMSNorm, SwiGLU, RoPE, no biases, untied head.

        Unless given, d_ff follows Llama: 2/3 of 4 * d_model, rounded up to a multiple of 256.
        """
        d_model = overrides.get("d_model", 768)
        d_ff = 256 * math.ceil(int(8 * d_model / 3) / 256)
        base = dict(
            vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12,
            d_ff=d_ff, norm="rmsnorm", norm_position="pre", norm_eps=1e-6, activation="swiglu",
            positional="rope", rope_theta=10000.0, bias=False, tie_embeddings=False,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def bert(cls, **overrides) -> ModelConfig:
        """BERT-base (chapter 10): bidirectional, post-LayerNorm, LayerNorm after the embeddings,
        token types, exact GELU, learned positions, biases, masked-LM head tied to the embeddings.
        """
        base = dict(
            vocab_size=30522, context_length=512, d_model=768, n_layers=12, n_heads=12,
            d_ff=3072, norm="layernorm", norm_position="post", norm_eps=1e-12, activation="gelu",
            positional="learned", bias=True, tie_embeddings=True, causal=False,
            type_vocab_size=2, embed_norm=True, head="mlm",
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The config saved by `to_dict`; the retired runtime flags `use_sdpa` and `fused_ops`
        (now `TransformerLM(config, fast=...)`) of older config.json files are ignored."""
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}")
        return cls(**d)


def _token_types(ids: Tensor, token_type_ids: Tensor | None, n_types: int) -> Tensor:
    if token_type_ids is None:
        return torch.zeros_like(ids)  # (B, T): every token in segment 0
    if token_type_ids.shape != ids.shape:
        raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)} but ids have "
                         f"{tuple(ids.shape)}")
    if token_type_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"token_type_ids must be integers (segment numbers), got "
                         f"{token_type_ids.dtype}")
    bad = token_type_ids[(token_type_ids < 0) | (token_type_ids >= n_types)]
    if bad.numel():
        raise ValueError(f"token_type_ids must be in [0, {n_types - 1}] (type_vocab_size="
                         f"{n_types}), got {bad[0].item()}")
    return token_type_ids


def _padding_mask(attention_mask: Tensor, B: int, Tk: int, mask: Tensor | None) -> Tensor:
    """(B, Tk) of 1 (real) / 0 (padding) -> boolean (B, 1, 1, Tk): no query sees a padding key."""
    if attention_mask.shape != (B, Tk):
        raise ValueError(f"attention_mask must have shape (B, Tk) = {(B, Tk)} (one entry per "
                         f"token, cached ones included), got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        if bad.numel():
            raise ValueError(
                "attention_mask holds 1 for a real token and 0 for padding (or True/False), "
                f"got {bad[0].item()}; pass the tokenizer's mask itself, not Hugging Face's "
                "'extended' additive mask (0 / -10000)")
    pad = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
    return pad if mask is None else mask & pad


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


class Block(nn.Module):
    """Attention then feed-forward, each added to the residual stream (chapters 05, 06).

    pre-norm:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    post-norm: x = norm1(x + attn(x));  x = norm2(x + mlp(x))

    `fast=True` (the default): PyTorch's kernels; `fast=False`: the written-out code.
    """

    def __init__(self, config: ModelConfig, fast: bool = True):
        super().__init__()
        c = config
        self.norm_position = c.norm_position
        self.norm1 = make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias, fast=fast)
        self.attn = MultiHeadAttention(
            c.d_model, c.n_heads, c.num_kv_heads, bias=c.bias, causal=c.causal,
            dropout=c.dropout, window=c.window, fast=fast,
            rope_theta=c.rope_theta if c.positional == "rope" else None,
            context_length=c.context_length, rope_layout=c.rope_layout,
        )
        self.norm2 = make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias, fast=fast)
        self.mlp = FeedForward(
            c.d_model, c.ffn_dim, c.activation, bias=c.bias, dropout=c.dropout, fast=fast
        )
        self.hook_resid_mid = HookPoint()  # names the stream after attention (chapter 11)

    def forward(
        self, x: Tensor, cache: KVCache | None = None, mask: Tensor | None = None
    ) -> Tensor:
        if self.norm_position == "pre":
            x = x + self.attn(self.norm1(x), cache=cache, mask=mask)  # (B, T, C)
            x = self.hook_resid_mid(x)
            x = x + self.mlp(self.norm2(x))  # (B, T, C)
        else:
            x = self.norm1(x + self.attn(x, cache=cache, mask=mask))  # (B, T, C)
            x = self.hook_resid_mid(x)
            x = self.norm2(x + self.mlp(x))  # (B, T, C)
        return x


class MaskedLMTransform(nn.Module):
    """BERT's masked-LM head before the decoder: norm(act(dense(h))), (B, T, C) -> (B, T, C)."""

    def __init__(self, config: ModelConfig, fast: bool = True):
        super().__init__()
        c = config
        self.activation, self.fast = c.activation, fast
        self.dense = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias, fast=fast)

    def forward(self, h: Tensor) -> Tensor:
        act = get_activation(self.activation, self.fast)
        return self.norm(act(self.dense(h)))  # (B, T, C)


def mean_pool(h: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The mean of H (B, T, C) over the real tokens (attention_mask (B, T) is 1 or True there,
    0 at padding) -> (B, C): the pooling head of sentence encoders (chapter 10)."""
    if attention_mask is None:
        return h.mean(dim=1)  # (B, C)
    if attention_mask.shape != h.shape[:2]:
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} does not match "
                         f"H's (B, T) = {tuple(h.shape[:2])}")
    m = attention_mask.to(h.dtype)[:, :, None]  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (B, C)


class TransformerLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, V): embed, n_layers blocks, final norm, LM head (ch. 06).

    Post-norm blocks already end in a norm, so with norm_position="post" `norm_f` is an
    Identity, as in the original Transformer and BERT. The trunk (everything before the
    head) is `trunk`; `config.head` picks the head (chapter 10).

    `fast=True` (the default) runs PyTorch's kernels (`F.scaled_dot_product_attention`,
    `F.layer_norm`, `F.rms_norm`, `F.gelu`, ...); `fast=False` the written-out code of the
    chapters. Same weights, same results up to float rounding; `set_fast` switches later.
    `init_weights=False` skips GPT-2's random init (`reset_parameters`): for loaders that
    overwrite every weight at once, such as `lmkit.pretrained.load_gguf` (chapter 09).
    """

    def __init__(self, config: ModelConfig, fast: bool = True, *, init_weights: bool = True):
        super().__init__()
        if not isinstance(init_weights, bool):
            raise TypeError(f"init_weights must be True or False, got {init_weights!r}")
        check_fast(fast)
        c = self.config = config
        self.fast = fast
        self.tok_emb = TokenEmbedding(c.vocab_size, c.d_model)
        if c.positional == "learned":
            self.pos_emb = LearnedPositionalEmbedding(c.context_length, c.d_model)
        elif c.positional == "sinusoidal":
            self.pos_emb = SinusoidalPositionalEncoding(c.context_length, c.d_model)
        else:  # "rope" rotates q and k inside attention; "none" has no positions at all
            self.pos_emb = None
        self.type_emb = nn.Embedding(c.type_vocab_size, c.d_model) if c.type_vocab_size else None
        self.emb_norm = (make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias, fast=fast)
                         if c.embed_norm else None)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, fast=fast) for _ in range(c.n_layers))
        if c.norm_position == "pre":
            self.norm_f = make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias, fast=fast)
        else:
            self.norm_f = nn.Identity()
        self.mlm_transform = MaskedLMTransform(c, fast) if c.head == "mlm" else None
        self.lm_head = (None if c.head == "none"
                        else nn.Linear(c.d_model, c.vocab_size, bias=c.head == "mlm"))
        if init_weights:
            self.reset_parameters()
        if c.tie_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.tok_emb.weight  # one matrix, used twice

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), zero biases; residual projections / sqrt(2 * n_layers)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (TokenEmbedding, LearnedPositionalEmbedding, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith(("attn.o_proj.weight", "mlp.down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.n_layers))

    def set_fast(self, fast: bool) -> TransformerLM:
        """Switch every module to PyTorch's kernels (True) or the written-out code (False)."""
        check_fast(fast)
        for module in self.modules():
            if hasattr(module, "fast"):
                module.fast = fast
        return self

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache: one `KVCache` per block (chapter 08); with a sliding window a
        `RollingKVCache` that keeps only the last window - 1 positions (chapter 09)."""
        if self.config.window is not None:
            return [RollingKVCache(self.config.window) for _ in self.blocks]
        return [KVCache() for _ in self.blocks]

    def forward(
        self,
        ids: Tensor,
        cache: list[KVCache] | None = None,
        return_hidden: bool = False,
        mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        with_head: bool = True,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, V); with `return_hidden` also the L + 1 hidden states (B, T, C).

        hidden[0] is the embedding output, hidden[i] the output of block i (before norm_f).
        With `cache`, ids are the next tokens after the cached ones (chapter 08).
        `attention_mask` (B, Tk), Hugging Face's meaning: 1 for a real token, 0 for padding,
        which no query may attend to (chapter 10). `token_type_ids` (B, T): BERT's segment ids,
        0 if not given. `with_head=False` (or `head="none"`) returns H (B, T, C) instead of
        logits: the trunk's output.
        """
        c = self.config
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else ids
            raise ValueError(f"expected ids as a LongTensor of shape (B, T), got {got}")
        if cache is not None and len(cache) != c.n_layers:
            raise ValueError(f"cache has {len(cache)} layers but the model has {c.n_layers}")
        B, T = ids.shape
        start = 0 if cache is None else cache[0].length  # tokens already in the cache
        if start + T > c.context_length:
            seen = f"{start + T} tokens" + (f" ({start} cached + {T} new)" if start else "")
            raise ValueError(
                f"sequence has {seen} but the context window is {c.context_length}; "
                f"crop the prompt to the last {c.context_length} tokens"
            )

        x = self.tok_emb(ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(T, start)  # (B, T, C) + (T, C)
        if self.type_emb is not None:  # segment A = 0, B = 1 (BERT)
            x = x + self.type_emb(_token_types(ids, token_type_ids, c.type_vocab_size))  # (B, T, C)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the model has no token-type embeddings "
                             "(ModelConfig.type_vocab_size=0)")
        if self.emb_norm is not None:
            x = self.emb_norm(x)  # (B, T, C)
        x = self.drop(x)
        if attention_mask is not None:
            mask = _padding_mask(attention_mask, B, start + T, mask)  # (B, 1, 1, Tk)
        hidden = [x]
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if cache is None else cache[i], mask=mask)  # (B, T, C)
            hidden.append(x)
        h = self.norm_f(x)  # (B, T, C): H, the trunk's output
        out = self.head(h) if with_head and self.lm_head is not None else h  # (B, T, V)
        return (out, hidden) if return_hidden else out

    def head(self, h: Tensor) -> Tensor:
        """Logits (..., V) from the trunk's output H (..., C): lm_head(H), or for a masked LM
        (chapter 10) lm_head(mlm_transform(H)). `lmkit.inspect.logit_lens` reads through it."""
        if self.lm_head is None:
            raise ValueError('the model has no head (ModelConfig head="none"): it returns the '
                             "trunk's vectors H, not logits; use head=\"lm\" or head=\"mlm\"")
        if self.mlm_transform is not None:
            h = self.mlm_transform(h)  # (..., C)
        return self.lm_head(h)  # (..., V)

    def trunk(
        self,
        ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """H = (h_1 ... h_T) of shape (B, T, C): embeddings, blocks, final norm (chapter 10)."""
        return self(ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    with_head=False)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, a tied matrix counted once (chapter 06).

        `exclude_embeddings` leaves out the token and position tables (as Hugging Face does);
        an untied lm_head stays in.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() skips shared duplicates
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if isinstance(self.pos_emb, LearnedPositionalEmbedding):
                n -= self.pos_emb.weight.numel()
            if self.type_emb is not None:
                n -= self.type_emb.weight.numel()
        return n

    def flops_per_token(self, T: int | None = None) -> int:
        """Forward-pass FLOPs per token for a sequence of T tokens (default: context_length).

        2 * (weights of every Linear, lm_head included) for the matrix products, plus
        4 * n_layers * T * d_model for q k^T and weights @ v over all T keys (masked scores
        are computed too). Multiply-add = 2 FLOPs; norms, softmax, adds are ignored.
        Training (forward + backward) costs about 3 times this, the familiar ~6N.
        """
        c = self.config
        T = c.context_length if T is None else T
        n_linear = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 2 * n_linear + 4 * c.n_layers * T * c.d_model

    def extra_repr(self) -> str:
        return f"n_params={self.num_parameters() / 1e6:.2f}M, fast={self.fast}"
