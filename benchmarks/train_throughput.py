"""Training throughput of lmkit next to Hugging Face GPT2LMHeadModel (make bench).

A third line runs lmkit with `fast=False`: the written-out attention, LayerNorm and GELU of
chapters 03-05 instead of PyTorch's kernels (same weights, same numbers), to show their cost.

Both models get the same GPT-2 configuration, the same batches, the same AdamW settings and
the same loss; steps of the two are interleaved so that a busy machine slows both alike. Each
is reported in tokens/s, as a ratio, and as a share of the machine's float32 matmul peak
measured in the same run (a large torch.matmul), counting 3 x forward FLOPs per token
(TransformerLM.flops_per_token: 6 N plus attention).

    python benchmarks/train_throughput.py [--d-model 256 --layers 4 --steps 10 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmkit.model import ModelConfig, TransformerLM  # noqa: E402
from lmkit.train import configure_optimizer, lm_loss  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n float32 matmul on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def hf_model(c: ModelConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.d_model,
                     n_layer=c.n_layers, n_head=c.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=0,
                     eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = ModelConfig.gpt2(vocab_size=args.vocab, context_length=args.context,
                              d_model=args.d_model, n_layers=args.layers, n_heads=args.heads)
    ours = TransformerLM(config)
    theirs = hf_model(config)
    written = TransformerLM(config, fast=False)
    written.load_state_dict(ours.state_dict())
    probe = torch.randint(args.vocab, (2, 16))
    torch.testing.assert_close(written(probe), ours(probe), rtol=1e-4, atol=1e-4)
    models = {"lmkit": ours, "HF GPT2LMHeadModel": theirs, "lmkit, fast=False (as taught)": written}
    n_ours = ours.num_parameters()
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs, (n_ours, n_theirs)

    B, T = args.batch, args.context
    x = torch.randint(args.vocab, (B, T))
    y = torch.randint(args.vocab, (B, T))

    def step_fn(name, model, opt):
        def step():
            if name.startswith("lmkit"):
                loss = lm_loss(model(x), y)
            else:
                logits = model(x).logits
                loss = F.cross_entropy(logits.reshape(B * T, -1), y.reshape(B * T))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return step

    steps = {name: step_fn(name, m, configure_optimizer(m, 1e-3, 0.1)) for name, m in
             models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for s in steps.values():  # warm-up
        s()
        s()
    for _ in range(args.steps):  # interleaved, so load from others hits both alike
        for name, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[name].append(time.perf_counter() - t0)

    peak = matmul_peak()
    flops_per_token = 3 * ours.flops_per_token(T)
    print(f"config: d_model {args.d_model}, {args.layers} layers, {args.heads} heads, context "
          f"{T}, vocab {args.vocab}, {n_ours / 1e6:.2f}M parameters; batch {B}; AdamW; "
          f"{args.threads} thread(s); torch {torch.__version__}")
    print(f"float32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    rates = {}
    for name, ts in times.items():
        sec = statistics.median(ts)
        rates[name] = B * T / sec
        print(f"{name:>22}: {rates[name]:>9,.0f} tokens/s  ({sec * 1000:.0f} ms/step, "
              f"{100 * rates[name] * flops_per_token / peak:.1f}% of matmul peak)")
    hf = rates["HF GPT2LMHeadModel"]
    print(f"lmkit / HF throughput: {rates['lmkit'] / hf:.2f}x; with the written-out LayerNorm and "
          f"GELU {rates['lmkit, written-out ops'] / hf:.2f}x (medians of {args.steps} "
          "interleaved steps)")


if __name__ == "__main__":
    main()
