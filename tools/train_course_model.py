"""Train the course model shipped in lmkit/models/shakespeare/ (used by chapters 00, 08 and 11).

    python tools/train_course_model.py            # or: make course-model

Everything is seeded and runs on one CPU thread, so the same machine gives the same model.
It takes about 5 minutes of one quiet CPU core (an hour on a heavily shared 2-core machine).
What it does:

1. split the Shakespeare corpus (lmkit.data) into train (first 90% of the characters) and
   validation (the last 10%: the last plays alphabetically, text never trained on);
2. train a byte-level BPE tokenizer (vocab 4096) on the training text;
3. train a small GPT-2 style TransformerLM with lmkit.train;
4. store the weights in float16 (half the size), the config, the tokenizer, and
   training.json with the seed, both configs, the loss history and the validation loss
   measured with the stored float16 weights on a fixed slice of the validation text, and
   the share of real words in its samples (`real_word_share`, as measured in chapter 07).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

from lmkit import data
from lmkit.generation import generate
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import BPETokenizer
from lmkit.train import COURSE_MODEL, TrainConfig, Trainer, load_model, save_model, sequence_loss

SEED = 1337
VOCAB_SIZE = 4096  # most words and names one token: samples spell real words
VAL_FRACTION = 0.1
SLICE_CHARS = 20_000  # the fixed validation slice: the first 20,000 characters of validation
MODEL = dict(vocab_size=VOCAB_SIZE, context_length=128, d_model=128, n_layers=4, n_heads=4)
TRAIN = dict(steps=1000, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=100,
             weight_decay=0.1, grad_clip=1.0, eval_interval=100, eval_batches=8, seed=SEED,
             device="cpu")


def split_text() -> tuple[str, str]:
    """(train text, validation text): the corpus cut at 90% of its characters."""
    text = data.shakespeare()
    cut = int(len(text) * (1 - VAL_FRACTION))
    return text[:cut], text[cut:]


def validation_slice() -> str:
    return split_text()[1][:SLICE_CHARS]


def real_word_share(model, tokenizer, prompt: str = "ROMEO:\n", samples: int = 5,
                    n_tokens: int = 120, temperature: float = 0.8) -> tuple[float, int]:
    """(share, words): of the words in `samples` seeded samples of `n_tokens` tokens (runs of
    letters and apostrophes, lowercased), the share that occur in the corpus (chapter 07)."""
    word = re.compile(r"[a-z']+")
    known = set(word.findall(data.shakespeare().lower()))
    ids = torch.tensor([tokenizer.encode(prompt)])  # (1, T)
    hits = total = 0
    for seed in range(samples):
        out = generate(model, ids, n_tokens, do_sample=True, temperature=temperature,
                       generator=torch.Generator().manual_seed(seed))
        words = word.findall(tokenizer.decode(out[0, ids.shape[1]:].tolist()).lower())
        hits += sum(w in known for w in words)
        total += len(words)
    return hits / total, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=COURSE_MODEL, help="output folder")
    p.add_argument("--steps", type=int, default=TRAIN["steps"], help="training steps")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="BPE vocabulary size")
    p.add_argument("--d-model", type=int, default=MODEL["d_model"], help="model width")
    p.add_argument("--n-layers", type=int, default=MODEL["n_layers"], help="blocks")
    p.add_argument("--n-heads", type=int, default=MODEL["n_heads"], help="attention heads")
    p.add_argument("--lr", type=float, default=TRAIN["lr"], help="peak learning rate")
    args = p.parse_args()
    shape = dict(vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                 n_heads=args.n_heads)
    torch.set_num_threads(1)  # reproducible, and fastest for a small model on a shared CPU
    torch.manual_seed(SEED)
    t0 = time.perf_counter()

    train_text, val_text = split_text()
    tok = BPETokenizer.train(train_text, args.vocab_size)
    print(f"tokenizer: {tok} trained in {time.perf_counter() - t0:.1f} s", flush=True)
    train_ids, val_ids = data.encode(tok, train_text), data.encode(tok, val_text)
    print(f"tokens: train {len(train_ids):,}, validation {len(val_ids):,}", flush=True)

    model = TransformerLM(ModelConfig.gpt2(**{**MODEL, **shape}))
    config = TrainConfig(**{**TRAIN, "steps": args.steps, "lr": args.lr,
                            "min_lr": args.lr / 10})
    t1 = time.perf_counter()
    trainer = Trainer(model, train_ids, val_ids, config)
    history = trainer.run(progress=True)
    train_seconds = time.perf_counter() - t1

    args.out.mkdir(parents=True, exist_ok=True)
    save_model(model, args.out, dtype=torch.float16)
    tok.save(args.out)
    stored = load_model(args.out, device="cpu")
    slice_ids = data.encode(tok, validation_slice())
    slice_loss = sequence_loss(stored, slice_ids)
    share, n_words = real_word_share(stored, tok)
    record = {
        "command": " ".join(["python", "tools/train_course_model.py", *sys.argv[1:]]),
        "seed": SEED,
        "corpus": "lmkit.data.shakespeare(): 38 plays; validation = last 10% of the characters",
        "tokenizer": f"BPETokenizer.train(train_text, {args.vocab_size}) (GPT-2 split pattern)",
        "model_config": model.config.to_dict(),
        "train_config": config.to_dict(),
        "parameters": model.num_parameters(),
        "train_tokens": len(train_ids),
        "tokens_seen": config.steps * config.batch_size * model.config.context_length,
        "final_train_loss": history["train_loss"][-1],
        "final_val_loss": history["val_loss"][-1],
        "val_slice_chars": SLICE_CHARS,
        "val_slice_loss_float16": slice_loss,
        "weights_dtype": "float16",
        "real_word_share": {"share": round(share, 4), "words": n_words, "prompt": "ROMEO:\n",
                            "samples": 5, "tokens_each": 120, "temperature": 0.8,
                            "seeds": [0, 1, 2, 3, 4]},
        "train_seconds": round(train_seconds, 1),
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 CPU thread",
        "history": history,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    print(f"val loss {history['val_loss'][-1]:.4f}; fixed slice with float16 weights "
          f"{slice_loss:.4f}; real words {share:.1%} of {n_words}; trained in {train_seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
