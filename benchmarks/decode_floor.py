"""How close can eager PyTorch get to the memory-bandwidth ceiling on SmolLM2? (issue 11)

`smollm2.py` measures lmkit's greedy decoding against the ceiling (bandwidth / bytes of weights
per token). This script measures what bounds it, all taking turns in one `race` so a neighbour's
load on a shared machine lowers every row alike:

- products: the model's matrix-vector products alone, back to back (`F.linear` on each weight
  matrix once), nothing else: no decoder can beat it.
- hand-fused step: one decoding step written as tight as eager PyTorch allows, outside lmkit:
  q/k/v stacked into one product, gate/up into one, RMSNorm with its weight in one call, RoPE
  as one complex multiplication of q and k together, the cache written in place, one SDPA call,
  the residual adds fused into the products (`addmm`). It must produce lmkit's tokens (checked).
- lmkit: `lmkit.generate`, as `smollm2.py` times it.
- with --compile also the hand-fused step under `torch.compile` (a static 256-position cache,
  so the shapes never change, and RoPE written out, as inductor generates no code for complex
  numbers; compiling takes 25-60 s on 2 cores and needs a C++ compiler).

Per-token times exclude the prompt (its tokens are fed to the hand-fused step one at a time and
are timed separately, then subtracted).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_throughput import bandwidth_racers, model_bytes, race  # noqa: E402
from smollm2 import products  # noqa: E402

from lmkit.generation import generate  # noqa: E402
from lmkit.pretrained import load_smollm2  # noqa: E402

CAPACITY = 256  # positions in the hand-fused step's cache


def fused_decoder(model, static: bool = False):
    """step(token (1,), position (), k_cache, v_cache) -> logits (1, V), and a cache maker.

    static=False attends to the positions written so far (a slice: its length changes every
    step); static=True to all CAPACITY positions with a mask, so that torch.compile sees the
    same shapes at every step."""
    c = model.config
    H, Hk, D, C = c.n_heads, c.num_kv_heads, c.head_dim, c.d_model
    layers = []
    for b in model.blocks:
        a, f = b.attn, b.mlp
        layers.append((b.norm1.weight, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                       a.o_proj.weight.t(), b.norm2.weight,
                       torch.cat([f.gate_proj.weight, f.up_proj.weight]), f.down_proj.weight.t()))
    angles = torch.outer(torch.arange(c.context_length, dtype=torch.float32),
                         1.0 / c.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    cos, sin = angles.cos(), angles.sin()  # (context, D/2); the file's layout is interleaved
    emb, head = model.tok_emb.weight, model.lm_head.weight  # one matrix when tied
    norm_f, eps, ff = model.norm_f.weight, c.norm_eps, c.ffn_dim

    def step(token, pos, kc, vc):
        x = emb.index_select(0, token)  # (1, C)
        p = pos.view(1)
        if static:
            mask = (torch.arange(CAPACITY) <= pos).view(1, CAPACITY)  # the positions written
        else:
            length, mask = int(pos) + 1, None
        c0, s0 = cos.index_select(0, p), sin.index_select(0, p)  # (1, D/2)
        turn = torch.complex(c0, s0)  # (1, D/2): turning pair i is multiplying by cos + i sin
        for i, (n1, w_qkv, w_o, n2, w_gu, w_down) in enumerate(layers):
            qkv = F.linear(F.rms_norm(x, (C,), n1, eps), w_qkv)  # (1, (H + 2 Hk) D)
            pairs = qkv[:, : (H + Hk) * D].view(H + Hk, D // 2, 2)  # q and k rotated together
            if static:  # written out: inductor generates no code for complex numbers
                a, b = pairs[..., 0], pairs[..., 1]  # (H + Hk, D/2)
                qk = torch.stack((a * c0 - b * s0, a * s0 + b * c0), dim=-1).view(H + Hk, D)
            else:
                qk = torch.view_as_real(torch.view_as_complex(pairs) * turn).view(H + Hk, D)
            kc[i].index_copy_(2, p, qk[H:].view(1, Hk, 1, D))
            vc[i].index_copy_(2, p, qkv[:, (H + Hk) * D :].view(1, Hk, 1, D))
            k, v = (kc[i], vc[i]) if static else (kc[i][:, :, :length], vc[i][:, :, :length])
            y = F.scaled_dot_product_attention(qk[:H].view(1, Hk, H // Hk, D), k, v,
                                               attn_mask=mask)  # (1, Hk, G, D)
            x = torch.addmm(x, y.view(1, C), w_o)
            gate, up = F.linear(F.rms_norm(x, (C,), n2, eps), w_gu).split(ff, dim=-1)
            x = torch.addmm(x, F.silu(gate) * up, w_down)
        return F.linear(F.rms_norm(x, (C,), norm_f, eps), head)  # (1, V)

    def new_cache():
        return ([torch.zeros(1, Hk, CAPACITY, D) for _ in layers],
                [torch.zeros(1, Hk, CAPACITY, D) for _ in layers])

    return step, new_cache


def decode(step, new_cache, prompt: list[int], n: int) -> list[int]:
    kc, vc = new_cache()
    for pos, token in enumerate(prompt[:-1]):
        step(torch.tensor([token]), torch.tensor(pos), kc, vc)
    out, token = [], prompt[-1]
    for pos in range(len(prompt) - 1, len(prompt) - 1 + n):
        token = int(step(torch.tensor([token]), torch.tensor(pos), kc, vc).argmax())
        out.append(token)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_smollm2()
    prompt = tok.encode("The capital of France is")
    ids, n = torch.tensor([prompt]), args.new_tokens
    if len(prompt) + n > CAPACITY:
        raise SystemExit(f"--new-tokens must leave the prompt room in {CAPACITY} positions")
    step, new_cache = fused_decoder(model)
    bandwidth_fns, bandwidth_of = bandwidth_racers()
    fns = {**bandwidth_fns, "products": products(model),
           "lmkit": lambda: generate(model, ids, n),
           "fused": lambda: decode(step, new_cache, prompt, n),
           "fused prompt": lambda: decode(step, new_cache, prompt, 1)}
    with torch.inference_mode():
        want = generate(model, ids, n)[0, len(prompt) :].tolist()
        if decode(step, new_cache, prompt, n) != want:
            raise SystemExit("the hand-fused step does not reproduce lmkit's tokens")
        if args.compile:
            compiled = torch.compile(fused_decoder(model, static=True)[0], fullgraph=True)
            start = time.perf_counter()
            got = decode(compiled, new_cache, prompt, n)
            print(f"torch.compile: first run (compiling) {time.perf_counter() - start:.0f} s, "
                  f"same tokens: {got == want}")
            fns["compiled"] = lambda: decode(compiled, new_cache, prompt, n)
            fns["compiled prompt"] = lambda: decode(compiled, new_cache, prompt, 1)
        best = race(fns, args.repeats)
    bw = bandwidth_of(best)
    nbytes = model_bytes(model)
    ceiling = bw / nbytes
    print(f"SmolLM2 float32, {torch.get_num_threads()} threads: bandwidth {bw / 1e9:.1f} GB/s, "
          f"{nbytes / 1e6:.0f} MB per token, ceiling {ceiling:.1f} tokens/s")
    per_token = {"products": best["products"], "lmkit": best["lmkit"] / n,
                 "hand-fused step": (best["fused"] - best["fused prompt"]) / (n - 1)}
    if args.compile:
        per_token["compiled step"] = (best["compiled"] - best["compiled prompt"]) / (n - 1)
    for name, s in per_token.items():
        print(f"  {name:16} {s * 1e3:6.2f} ms/token = {100 / s / ceiling:4.0f}% of the ceiling "
              f"({s / per_token['products']:.2f}x the products alone)")


if __name__ == "__main__":
    main()
