"""Decoding speed: lmkit with and without the KV cache vs Hugging Face `generate`, same weights.

Greedy, batch 1, float32, on the CPU. Models: GPT-2 small's configuration with random weights,
and the course model in models/shakespeare/ when that folder exists. Batch-1 decoding reads
every weight once per token, so its ceiling is memory bandwidth / model bytes: the bandwidth is
measured in the same run (best of several copies of a large tensor) and every result is also
given as a share of that ceiling. Each timing is the best of `--repeats` runs; all numbers come
from one run. On a machine shared with other work, expect noise: run it twice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmkit.generation import generate
from lmkit.pretrained import load_hf

COURSE_MODEL = Path(__file__).resolve().parent.parent / "models" / "shakespeare"


def bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by a large copy (it reads mb and writes mb), best of `repeats`."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy initialisation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, folder: Path, prompt_len: int, new: int, lengths: list[int],
          repeats: int, bw: float) -> None:
    ours = load_hf(folder)
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    c = ours.config
    prompt_len = min(prompt_len, c.context_length - new)
    ids = torch.randint(0, c.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    size = model_bytes(ours)
    ceiling = bw / size  # tokens/s if each token costs one read of every weight
    print(f"\n{name}: {ours.num_parameters() / 1e6:.1f}M parameters, {size / 1e6:.0f} MB "
          f"(float32); ceiling {ceiling:,.1f} tokens/s at the measured bandwidth")
    print(f"  greedy, batch 1, prompt {prompt_len} tokens, {new} new tokens, "
          f"best of {repeats}")

    ref = generate(ours, ids, new)
    want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ref, want), "lmkit and HF disagree on the greedy tokens"

    def hf_run():
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                        min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)

    runs = {
        "lmkit, KV cache": lambda: generate(ours, ids, new),
        "lmkit, no cache": lambda: generate(ours, ids, new, use_cache=False),
        "HF generate (cache)": hf_run,
    }
    rate = {k: new / best_time(fn, repeats) for k, fn in runs.items()}
    for k, r in rate.items():
        print(f"  {k:22s} {r:9,.1f} tokens/s  {r / rate['HF generate (cache)']:5.2f}x HF  "
              f"{100 * r / ceiling:5.1f}% of the bandwidth ceiling")

    print("  KV-cache speed-up as the output grows (tokens/s with / without the cache):")
    for n in lengths:
        n = min(n, c.context_length - prompt_len)
        with_cache = n / best_time(lambda n=n: generate(ours, ids, n), max(1, repeats - 1))
        without = n / best_time(lambda n=n: generate(ours, ids, n, use_cache=False),
                                max(1, repeats - 1))
        print(f"    {n:5d} new tokens: {with_cache:9,.1f} vs {without:9,.1f} tokens/s  "
              f"= {with_cache / without:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="fewer tokens (a smoke test)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    bw = bandwidth()
    print(f"memory bandwidth (copy of 512 MB, best of 5): {bw / 1e9:.1f} GB/s; "
          f"torch threads: {torch.get_num_threads()}")

    if COURSE_MODEL.is_dir() and (COURSE_MODEL / "config.json").is_file():
        bench("course model (models/shakespeare)", COURSE_MODEL, 16, 64 if args.quick else 200,
              [32, 128] if args.quick else [32, 128, 256], args.repeats, bw)
    else:
        print(f"\n{COURSE_MODEL} not found (or has no config.json): skipping the course model")

    with tempfile.TemporaryDirectory() as tmp:
        hf = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape, random weights
        hf.save_pretrained(tmp)
        del hf
        bench("GPT-2 small configuration, random weights", Path(tmp), 16,
              8 if args.quick else 32, [8, 32] if args.quick else [16, 64, 128],
              args.repeats, bw)


if __name__ == "__main__":
    main()
