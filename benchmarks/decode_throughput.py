"""Decoding speed: lmkit with and without the KV cache vs Hugging Face `generate`, same weights.

Greedy, batch 1, float32, on the CPU. Models: the course model in lmkit/models/shakespeare/ when that
folder exists, and GPT-2 small's configuration with random weights; Hugging Face's
GPT2LMHeadModel gets the same weights (checked: identical greedy tokens). Batch-1 decoding reads
every weight once per token, so its ceiling is memory bandwidth / model bytes: the bandwidth is
measured in the same run (best of several copies and sums of a large tensor) and every result is also
given as a share of that ceiling. Each timing is the best of `--repeats` interleaved runs; all
numbers come from one run. On a machine shared with other work, expect noise: run it twice.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmkit.generation import generate
from lmkit.model import ModelConfig, TransformerLM
from lmkit.train import COURSE_MODEL, load_course_model


def to_hf(model: TransformerLM) -> GPT2LMHeadModel:
    """The same weights in Hugging Face's GPT2LMHeadModel (the inverse of lmkit.pretrained)."""
    c = model.config
    assert c.positional == "learned" and c.norm == "layernorm" and c.tie_embeddings
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.d_model,
        n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.ffn_dim, layer_norm_epsilon=c.norm_eps,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=c.vocab_size - 1, eos_token_id=c.vocab_size - 1,
    ))
    sd = model.state_dict()
    state = {"transformer.wte.weight": sd["tok_emb.weight"],
             "transformer.wpe.weight": sd["pos_emb.weight"],
             "transformer.ln_f.weight": sd["norm_f.weight"],
             "transformer.ln_f.bias": sd["norm_f.bias"],
             "lm_head.weight": sd["tok_emb.weight"]}
    for i in range(c.n_layers):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = [f"{b}attn.{n}_proj" for n in "qkv"]
        state[f"{h}attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv]).t()
        state[f"{h}attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv])
        for ours, theirs in [("norm1", "ln_1"), ("norm2", "ln_2")]:
            for p in ("weight", "bias"):
                state[f"{h}{theirs}.{p}"] = sd[f"{b}{ours}.{p}"]
        for ours, theirs in [("attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                             ("mlp.down_proj", "mlp.c_proj")]:
            state[f"{h}{theirs}.weight"] = sd[f"{b}{ours}.weight"].t()  # Conv1D: (in, out)
            state[f"{h}{theirs}.bias"] = sd[f"{b}{ours}.bias"]
    hf.load_state_dict(state, strict=False)  # attention mask buffers are not weights
    return hf.eval()


def bandwidth_racers(mb: int = 512) -> tuple[dict, Callable[[dict], float]]:
    """Two contenders for `race` that measure memory traffic, and the bytes per second from
    their best times: the faster of a large copy (reads mb and writes mb) and a large sum
    (reads mb), since decoding mostly reads weights. Racing them beside the decoders lets a
    neighbour's load on a shared machine lower the bandwidth and the decoders alike."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    nbytes = src.numel() * 4
    fns = {"copy": lambda: dst.copy_(src), "sum": lambda: src.sum()}

    def from_best(best: dict) -> float:
        return max(2 * nbytes / best["copy"], nbytes / best["sum"])
    return fns, from_best


def bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes per second of memory traffic, best of `repeats` (see `bandwidth_racers`)."""
    fns, from_best = bandwidth_racers(mb)
    return from_best(race(fns, repeats))


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once


def race(fns: dict, repeats: int) -> dict[str, float]:
    """Best time of each function over `repeats` rounds, the functions taking turns.

    Interleaving gives every contender the same share of a busy machine's good and bad
    moments; the best time is the one least disturbed by other work.
    """
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, lazy initialisation
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench(name: str, ours: TransformerLM, new: int, lengths: list[int], repeats: int,
          bw: float, prompt_len: int = 16) -> None:
    ours.eval()
    hf = to_hf(ours)
    c = ours.config
    ids = torch.randint(0, c.vocab_size, (1, prompt_len),
                        generator=torch.Generator().manual_seed(0))
    size = model_bytes(ours)
    ceiling = bw / size  # tokens/s if each token costs one read of every weight
    print(f"\n{name}: {ours.num_parameters() / 1e6:.2f}M parameters, {size / 1e6:.1f} MB "
          f"(float32); ceiling {ceiling:,.1f} tokens/s at the measured bandwidth")
    print(f"  greedy, batch 1, prompt {prompt_len} tokens, {new} new tokens, best of {repeats}")

    def hf_run(n=new):
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0,
                               eos_token_id=None)

    assert torch.equal(generate(ours, ids, new), hf_run()), "lmkit and HF disagree on tokens"
    runs = {
        "lmkit, KV cache": lambda: generate(ours, ids, new),
        "lmkit, no cache": lambda: generate(ours, ids, new, use_cache=False),
        "HF generate (cache)": hf_run,
    }
    rate = {k: new / t for k, t in race(runs, repeats).items()}
    for k, r in rate.items():
        print(f"  {k:22s} {r:9,.1f} tokens/s  {r / rate['HF generate (cache)']:5.2f}x HF  "
              f"{100 * r / ceiling:5.1f}% of the bandwidth ceiling")

    print("  KV-cache speed-up as the output grows (tokens/s with / without the cache):")
    for n in lengths:
        t = race({"cache": lambda n=n: generate(ours, ids, n),
                  "none": lambda n=n: generate(ours, ids, n, use_cache=False)}, repeats)
        with_cache, without = n / t["cache"], n / t["none"]
        print(f"    {n:5d} new tokens: {with_cache:9,.1f} vs {without:9,.1f} tokens/s  "
              f"= {with_cache / without:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads; 0 keeps torch's default (see below)")
    parser.add_argument("--skip-gpt2", action="store_true", help="only the course model")
    args = parser.parse_args()
    # One thread by default: batch-1 decoding is bound by memory, not arithmetic, and on a
    # small shared machine torch's thread pool waits on busy cores at every one of the
    # thousands of small ops per token (measured: 2 threads up to 4x slower than 1 under load).
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    bw = bandwidth()
    print(f"memory bandwidth (512 MB copy or sum, best of 5): {bw / 1e9:.1f} GB/s; "
          f"torch threads: {torch.get_num_threads()}")

    if (COURSE_MODEL / "model.safetensors").is_file():
        model, _ = load_course_model()
        bench("course model (lmkit/models/shakespeare)", model, 100, [16, 48, 112 - 16],
              args.repeats, bw)
    else:
        print(f"\n{COURSE_MODEL} not found: skipping the course model")

    if not args.skip_gpt2:
        gpt2 = TransformerLM(ModelConfig.gpt2())  # GPT-2 small's shape, random weights
        bench("GPT-2 small configuration, random weights", gpt2, 32, [8, 32, 64],
              args.repeats, bw)


if __name__ == "__main__":
    main()
