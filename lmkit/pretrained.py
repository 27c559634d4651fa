"""Load Hugging Face checkpoints into lmkit models (chapters 06 and 09).

A checkpoint is a folder with `config.json` and `model.safetensors` (what `save_pretrained`
writes). We read the config into a `ModelConfig`, build a `TransformerLM`, and copy each
tensor through a name table: (lmkit name, checkpoint name, transform). Supporting another
layout means one config function and one name table in `LAYOUTS`.

Safetensors only: no pickle is ever loaded. Nothing is downloaded unless the caller asks with
`allow_download=True` (then a name that is not a local folder is fetched from the Hugging Face
Hub, if `huggingface_hub` is installed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from lmkit.io import read_safetensors, read_text
from lmkit.model import ModelConfig, TransformerLM

__all__ = ["load_hf", "config_from_hf", "LAYOUTS"]

Transform = Callable[[Tensor], Tensor] | None
NameTable = list[tuple[str, str, Transform]]

# Hugging Face activation names -> lmkit's
_HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
    "relu": "relu", "silu": "silu", "swish": "silu",
}


# ----------------------------------------------------------------------------- GPT-2


def _gpt2_config(hf: dict) -> ModelConfig:
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise ValueError("GPT-2 attention without 1/sqrt(d) scaling, or with per-layer "
                         "scaling, is not supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(f"activation_function {act!r} is not supported; "
                         f"lmkit knows {sorted(_HF_ACTIVATIONS)}")
    return ModelConfig.gpt2(
        vocab_size=hf["vocab_size"], context_length=hf["n_positions"], d_model=hf["n_embd"],
        n_layers=hf["n_layer"], n_heads=hf["n_head"], d_ff=hf.get("n_inner"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_HF_ACTIVATIONS[act],
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _conv1d(w: Tensor) -> Tensor:
    """GPT-2's Conv1D stores weights as (in, out); nn.Linear wants (out, in). Biases pass."""
    return w.t() if w.dim() == 2 else w


def _qkv_part(i: int) -> Callable[[Tensor], Tensor]:
    """c_attn computes [q | k | v] at once: take part i (0 = q, 1 = k, 2 = v)."""
    return lambda w: _conv1d(w).chunk(3, dim=0)[i]


def _gpt2_names(c: ModelConfig) -> NameTable:
    names: NameTable = [("tok_emb.weight", "wte.weight", None)]
    names += [("pos_emb.weight", "wpe.weight", None)]
    for i in range(c.n_layers):
        b, h = f"blocks.{i}.", f"h.{i}."
        for p in ("weight", "bias"):
            names += [
                (f"{b}norm1.{p}", f"{h}ln_1.{p}", None),
                (f"{b}attn.q_proj.{p}", f"{h}attn.c_attn.{p}", _qkv_part(0)),
                (f"{b}attn.k_proj.{p}", f"{h}attn.c_attn.{p}", _qkv_part(1)),
                (f"{b}attn.v_proj.{p}", f"{h}attn.c_attn.{p}", _qkv_part(2)),
                (f"{b}attn.o_proj.{p}", f"{h}attn.c_proj.{p}", _conv1d),
                (f"{b}norm2.{p}", f"{h}ln_2.{p}", None),
                (f"{b}mlp.up_proj.{p}", f"{h}mlp.c_fc.{p}", _conv1d),
                (f"{b}mlp.down_proj.{p}", f"{h}mlp.c_proj.{p}", _conv1d),
            ]
    names += [("norm_f.weight", "ln_f.weight", None), ("norm_f.bias", "ln_f.bias", None)]
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight", None))
    return names


# ----------------------------------------------------------------------------- Llama


def _llama_config(hf: dict) -> ModelConfig:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"RoPE scaling {rope_type!r} is not supported, only plain RoPE")
    C, H = hf["hidden_size"], hf["num_attention_heads"]
    if (hf.get("head_dim") or C // H) != C // H:
        raise ValueError(f"head_dim={hf['head_dim']} != hidden_size / num_attention_heads "
                         f"= {C // H} is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported, only 'silu'")
    bias = hf.get("attention_bias", False)
    if hf.get("mlp_bias", False) != bias:
        raise ValueError("attention_bias and mlp_bias must agree (lmkit has one `bias` switch)")
    return ModelConfig.llama(
        vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], d_model=C,
        n_layers=hf["num_hidden_layers"], n_heads=H, n_kv_heads=hf.get("num_key_value_heads"),
        d_ff=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)), bias=bias,
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def _llama_names(c: ModelConfig) -> NameTable:
    names: NameTable = [("tok_emb.weight", "embed_tokens.weight", None)]
    params = ("weight", "bias") if c.bias else ("weight",)
    for i in range(c.n_layers):
        b, h = f"blocks.{i}.", f"layers.{i}."
        names += [(f"{b}norm1.weight", f"{h}input_layernorm.weight", None)]
        names += [(f"{b}norm2.weight", f"{h}post_attention_layernorm.weight", None)]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names += [(f"{b}attn.{proj}.{p}", f"{h}self_attn.{proj}.{p}", None) for p in params]
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names += [(f"{b}mlp.{proj}.{p}", f"{h}mlp.{proj}.{p}", None) for p in params]
    names.append(("norm_f.weight", "norm.weight", None))
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight", None))
    return names


# model_type -> (config function, name table, checkpoint prefix to drop, names to ignore)
LAYOUTS: dict[str, tuple[Callable, Callable, str, str]] = {
    "gpt2": (_gpt2_config, _gpt2_names, "transformer.", r"attn\.(masked_)?bias$|^lm_head\."),
    "llama": (_llama_config, _llama_names, "model.", r"rotary_emb\.inv_freq$"),
}


# ----------------------------------------------------------------------------- loading


def config_from_hf(hf: dict) -> ModelConfig:
    """The `ModelConfig` for a Hugging Face `config.json` (as a dict) of a supported type."""
    kind = hf.get("model_type")
    if kind not in LAYOUTS:
        raise ValueError(f"model_type {kind!r} is not supported; lmkit loads {sorted(LAYOUTS)}")
    return LAYOUTS[kind][0](hf)


def load_hf(
    path_or_name: str | Path,
    dtype: torch.dtype = torch.float32,
    *,
    allow_download: bool = False,
) -> TransformerLM:
    """A `TransformerLM` in eval mode with the weights of a Hugging Face checkpoint (ch. 06).

    `path_or_name`: a folder with config.json + model.safetensors. A Hub name such as
    "gpt2" is downloaded (or taken from the HF cache) only with `allow_download=True`;
    otherwise a missing folder is a FileNotFoundError, never a silent trip to the Hub.
    """
    folder = _resolve(path_or_name, allow_download)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    hf = json.loads(read_text(folder / "config.json"))
    config = config_from_hf(hf)
    _, names_fn, prefix, ignore = LAYOUTS[hf["model_type"]]
    state, original = {}, {}  # checkpoint tensors by name without prefix; their full names
    for name, t in _read_safetensors(folder).items():
        state[name.removeprefix(prefix)], original[name.removeprefix(prefix)] = t, name

    model = TransformerLM(config)
    ours = model.state_dict()  # a tied lm_head.weight shares storage with tok_emb.weight
    table = names_fn(config)
    missing = set(ours) - {name for name, _, _ in table} - {"lm_head.weight"}
    assert not missing, f"name table misses lmkit weights {sorted(missing)}"  # a bug in lmkit
    used = set()
    for our_name, their_name, transform in table:
        if their_name not in state:
            raise ValueError(f"checkpoint has no tensor {their_name!r} (prefix {prefix!r} "
                             f"optional), needed for lmkit's {our_name!r}")
        src = state[their_name]
        t = src if transform is None else transform(src)
        if t.shape != ours[our_name].shape:
            got = f"{tuple(src.shape)}" + ("" if transform is None else f" (-> {tuple(t.shape)})")
            raise ValueError(
                f"checkpoint tensor {original[their_name]!r} has shape {got} but lmkit's "
                f"{our_name!r} has shape {tuple(ours[our_name].shape)}; does config.json match "
                "the weights?"
            )
        with torch.no_grad():
            ours[our_name].copy_(t)
        used.add(their_name)
    unused = [original[k] for k in state if k not in used and not re.search(ignore, k)]
    if unused:
        raise ValueError(f"checkpoint has {len(unused)} tensors lmkit does not use, e.g. "
                         f"{unused[:3]}; is model_type {hf['model_type']!r} right?")
    return model.to(dtype).eval()


def _read_safetensors(folder: Path) -> dict[str, Tensor]:
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")[0]
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: weight_map says which file holds each tensor
        state = {}
        for shard in sorted(set(json.loads(read_text(index))["weight_map"].values())):
            state.update(read_safetensors(folder / shard)[0])
        return state
    raise FileNotFoundError(f"{folder} has no model.safetensors (lmkit reads safetensors only, "
                            "never pickled pytorch_model.bin files)")


def _resolve(path_or_name: str | Path, allow_download: bool) -> Path:
    """A local folder as is; a Hub name downloaded (or taken from the HF cache) only if allowed."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_name)
    looks_local = (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
                   or path.exists())
    if not allow_download or looks_local:
        hint = ("" if looks_local else
                f"; if {name!r} is a Hugging Face Hub name, pass allow_download=True to "
                "download it (or load it from the HF cache)")
        raise FileNotFoundError(
            f"{name!r} is not a folder with config.json and model.safetensors: no such folder "
            f"{str(path.absolute())!r}{hint}"
        )
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        raise OSError(
            f"{name!r} is not a local folder, and getting it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {e}). Offline, pass the path of a folder with config.json "
            "and model.safetensors (e.g. one written by `save_pretrained`), or download the "
            "model once while online: with HF_HUB_OFFLINE=1 it then loads from the cache."
        ) from e
