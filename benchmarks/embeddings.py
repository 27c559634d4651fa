"""Sentence-embedding throughput: lmkit vs Hugging Face `BertModel`, all-MiniLM-L6-v2, same batches.

The sentences are lines of Shakespeare, cut into batches of `--batch-size` (32) in corpus
order and padded to the longest line of each batch: both sides get the very same (ids,
attention_mask) tensors and compute mean pooling + L2 normalisation the same way, so only the
encoder differs. The embeddings are checked to agree (max |difference| printed). Each timing is
the best of `--repeats` interleaved passes over all batches, float32, on the CPU unless
`--device` says otherwise. On a machine shared with other work, expect noise: run it twice.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import BertModel

from lmkit.data import play
from lmkit.model import mean_pool
from lmkit.pretrained import load_minilm, minilm_path, pad_batch


def batches(tokenizer, n_sentences: int, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    lines = [line.strip() for line in play("hamlet").split("\n") if len(line.strip()) > 10]
    lines = lines[:n_sentences]
    encoded = [tokenizer.encode(s)[:256] for s in lines]
    return [pad_batch(encoded[i : i + batch_size], tokenizer.pad_id)
            for i in range(0, len(encoded), batch_size)]


@torch.inference_mode()
def embed_lmkit(model, data, device):
    return torch.cat([F.normalize(mean_pool(model(ids.to(device), attention_mask=m.to(device)),
                                            m.to(device)), dim=-1).cpu() for ids, m in data])


@torch.inference_mode()
def embed_hf(model, data, device):
    out = []
    for ids, m in data:
        h = model(input_ids=ids.to(device), attention_mask=m.to(device)).last_hidden_state
        out.append(F.normalize(mean_pool(h, m.to(device)), dim=-1).cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ours, tokenizer = load_minilm()
    ours = ours.to(args.device)
    theirs = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False).eval()
    theirs = theirs.to(args.device)
    data = batches(tokenizer, args.sentences, args.batch_size)
    n = sum(len(ids) for ids, _ in data)
    tokens = sum(int(m.sum()) for _, m in data)
    diff = (embed_lmkit(ours, data, args.device) - embed_hf(theirs, data, args.device)).abs().max()

    best = {"lmkit": float("inf"), "hf": float("inf")}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for name, fn, model in (("lmkit", embed_lmkit, ours), ("hf", embed_hf, theirs)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(model, data, args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)

    print(f"all-MiniLM-L6-v2 sentence embeddings: {n} lines of Hamlet, {len(data)} padded "
          f"batches of {args.batch_size}, {tokens} real tokens, {args.device}, "
          f"{torch.get_num_threads()} threads; max |lmkit - HF| = {diff:.1e}")
    print(f"{'':24}{'time':>10}{'sentences/s':>14}")
    for name, label in (("lmkit", "lmkit"), ("hf", "Hugging Face BertModel")):
        print(f"{label:24}{best[name]:>8.2f} s{n / best[name]:>14.1f}")
    print(f"lmkit / Hugging Face throughput: {best['hf'] / best['lmkit']:.2f}x")


if __name__ == "__main__":
    main()
