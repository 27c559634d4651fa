"""What lmkit.inspect costs: run_with_cache vs a plain forward, and the unused hook points.

1. `run_with_cache` (every name, patterns included; and every name but the patterns) against
   a plain forward without gradients, same input. Target: at most 1.3x.
2. The two `HookPoint`s per block (the stream after attention, the attention pattern) when
   nothing is hooked: a training step and cached greedy decoding of the same model with its
   hook points and with them swapped for bare functions (`no hook points`), and the same model
   after a `run_with_cache` (its hooks removed again). Target: unchanged within noise.

Models: the course model (models/shakespeare) and GPT-2 small's configuration with random
weights. Each timing is the best of `--repeats` interleaved runs (see `race`), one thread by
default. On a machine shared with other work, expect noise: run it twice.
"""

from __future__ import annotations

import argparse
import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from decode_throughput import race  # the same interleaved best-of-N timing (benchmarks/)

from lmkit.generation import generate
from lmkit.inspect import hook_names, run_with_cache
from lmkit.model import ModelConfig, TransformerLM
from lmkit.train import COURSE_MODEL, load_course_model


def without_hook_points(model: TransformerLM) -> TransformerLM:
    """A copy whose hook points are bare functions: the model as it was before lmkit.inspect."""
    bare = copy.deepcopy(model)
    for block in bare.blocks:
        del block.hook_resid_mid
        block.hook_resid_mid = lambda x: x
        del block.attn.hook_pattern
        block.attn.hook_pattern = SimpleNamespace(active=False)
    return bare


def bench(name: str, model: TransformerLM, T: int, B: int, new: int, repeats: int) -> None:
    model.eval()
    c = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (B, T), generator=g)
    print(f"\n{name}: {model.num_parameters() / 1e6:.2f}M parameters, batch {B} x {T} tokens, "
          f"best of {repeats}")

    no_patterns = [n for n in hook_names(model) if not n.endswith("pattern")]

    def plain():
        with torch.no_grad():
            return model(ids)

    t = race({"plain": plain,
              "all": lambda: run_with_cache(model, ids),
              "no_patterns": lambda: run_with_cache(model, ids, names=no_patterns)}, repeats)
    print(f"  plain forward (no grad)                {1e3 * t['plain']:8.2f} ms")
    print(f"  run_with_cache, all {len(hook_names(model)):3d} names           "
          f"{1e3 * t['all']:8.2f} ms  {t['all'] / t['plain']:5.2f}x")
    print(f"  run_with_cache, all but the patterns   {1e3 * t['no_patterns']:8.2f} ms  "
          f"{t['no_patterns'] / t['plain']:5.2f}x")

    bare = without_hook_points(model)
    used = copy.deepcopy(model)
    run_with_cache(used, ids)  # hooks added and removed again
    prompt = ids[:1, :16]
    targets = torch.roll(ids, -1, dims=1)

    def train_step(m):
        def step():
            m.zero_grad(set_to_none=True)
            logits = m(ids)
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        return step

    models = {"hook points (unused)": model, "no hook points": bare,
              "after run_with_cache": used}
    t_train = race({k: train_step(m) for k, m in models.items()}, repeats)
    t_dec = race({k: (lambda m=m: generate(m, prompt, new)) for k, m in models.items()}, repeats)
    ref_train, ref_dec = t_train["no hook points"], t_dec["no hook points"]
    print(f"  {'':22s} {'train step':>12s} {'decoding':>16s}")
    for k in models:
        print(f"  {k:22s} {1e3 * t_train[k]:9.2f} ms {t_train[k] / ref_train:5.3f}x "
              f"{new / t_dec[k]:9,.1f} tok/s {ref_dec / t_dec[k]:5.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--skip-gpt2", action="store_true", help="only the course model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}")
    if (COURSE_MODEL / "model.safetensors").is_file():
        model, _ = load_course_model()
        bench("course model (models/shakespeare)", model, T=128, B=8, new=100,
              repeats=args.repeats)
    else:
        print(f"\n{COURSE_MODEL} not found: skipping the course model")
    if not args.skip_gpt2:
        gpt2 = TransformerLM(ModelConfig.gpt2())  # GPT-2 small's shape, random weights
        bench("GPT-2 small configuration, random weights", gpt2, T=128, B=1, new=16,
              repeats=args.repeats)


if __name__ == "__main__":
    main()
