"""SmolLM2-135M-Instruct on lmkit vs Hugging Face, same GGUF file (chapter 09).

1. Load time: `lmkit.pretrained.load_smollm2` vs `AutoModelForCausalLM.from_pretrained(...,
   gguf_file=...)` (both dequantise the 4-bit file to float32).
2. Greedy batch-1 decoding with the KV cache, tokens/s: lmkit `generate` vs HF `generate` on
   the same weights (checked: the same tokens), float32 and bfloat16.
3. Share of the memory-bandwidth ceiling: batch-1 decoding reads every weight once per token
   (bytes of weights per token: the tied embedding counted once, as the LM head; the embedding
   lookup itself reads one row), so tokens/s cannot beat bandwidth / weight bytes. Bandwidth is
   measured in the same run, taking turns with the decoders (`race`), so that a neighbour's
   load on a shared machine lowers both alike: the faster of a large copy and a large sum.
4. For scale, the same ceiling share of the model's matrix-vector products alone: `F.linear`
   on every weight matrix once, back to back, nothing else. No eager decoder can beat it; the
   gap between it and a decoder is the cost of everything else a token needs (norms, RoPE,
   attention, the cache, Python between the kernels).

All figures come from one run; on a machine shared with other work expect noise: run twice.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_throughput import bandwidth_racers, model_bytes, race  # noqa: E402

from lmkit.generation import generate  # noqa: E402
from lmkit.pretrained import load_smollm2, smollm2_path  # noqa: E402


def products(model: torch.nn.Module):
    """A function running the model's matrix-vector products alone: each weight matrix once."""
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights.values()}

    def run() -> None:
        for w in weights.values():
            F.linear(xs[w.shape[1]], w)  # (1, in) -> (1, out)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    path = smollm2_path()
    print(f"SmolLM2-135M-Instruct ({path.name}), {torch.get_num_threads()} threads")

    start = time.perf_counter()
    ours, tok = load_smollm2()
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF loader's own progress bar
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    t_hf = time.perf_counter() - start
    print(f"load: lmkit {t_ours:.2f} s, Hugging Face {t_hf:.2f} s ({t_hf / t_ours:.1f}x faster)")

    bandwidth_fns, bandwidth_of = bandwidth_racers()  # 512 MB: far larger than any cache
    ids = torch.tensor([tok.encode("The capital of France is")])
    n = args.new_tokens
    for dtype in (torch.float32, torch.bfloat16):
        ours_d, hf_d = ours.to(dtype), hf.to(dtype)
        a = generate(ours_d, ids, n)
        b = hf_d.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, eos_token_id=None)
        new = a[0, ids.shape[1] :].tolist()  # HF was kept from stopping at <|im_end|> (2):
        cut = ids.shape[1] + (new.index(2) if 2 in new else len(new))  # compare up to it
        same = a[0, :cut].tolist() == b[0, :cut].tolist()
        with torch.inference_mode():
            best = race({
                **bandwidth_fns,
                "products": products(ours_d),
                "lmkit": lambda m=ours_d: generate(m, ids, n),
                "hf": lambda m=hf_d: m.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                    min_new_tokens=n, do_sample=False),
            }, args.repeats)
        bw = bandwidth_of(best)
        s_ours, s_hf = best["lmkit"], best["hf"]
        nbytes = model_bytes(ours_d)
        ceiling = bw / nbytes
        name = str(dtype).removeprefix("torch.")
        print(f"{name:8} memory bandwidth {bw / 1e9:.1f} GB/s, {nbytes / 1e6:.0f} MB of weights "
              f"per token: ceiling {ceiling:.1f} tokens/s; the matrix-vector products alone: "
              f"{1 / best['products']:.1f} tokens/s ({100 / best['products'] / ceiling:.0f}%)")
        print(f"{name:8} greedy decode, {n} tokens: lmkit {n / s_ours:6.1f} tokens/s, HF "
              f"{n / s_hf:6.1f} tokens/s ({s_hf / s_ours:.2f}x): lmkit at "
              f"{100 * n / s_ours / ceiling:.0f}% of the ceiling, HF at "
              f"{100 * n / s_hf / ceiling:.0f}%; same tokens: {same}")


if __name__ == "__main__":
    main()
