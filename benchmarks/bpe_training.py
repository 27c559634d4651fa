"""BPE training speed: lmkit's incremental trainer vs recounting every merge vs `tokenizers`.

All three train a byte-level BPE with the GPT-2 pre-split on the same 1 MB of Shakespeare to a
1,024-token vocabulary. The recount-every-merge trainer is timed on the first few merges and
extrapolated (it would take minutes); pass --full to run it to the end.
"""

from __future__ import annotations

import argparse
import time

import regex

from lmkit import data
from lmkit.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer, get_stats, merge

VOCAB = 1024


def recount_every_merge(text: str, n_merges: int) -> dict:
    """The textbook trainer: recount all pairs of all pieces after every merge."""
    pieces = [list(p.encode("utf-8")) for p in regex.findall(GPT2_SPLIT_PATTERN, text)]
    merges = {}
    for new_id in range(256, 256 + n_merges):
        stats: dict = {}
        for piece in pieces:
            get_stats(piece, stats)
        pair = min(stats, key=lambda p: (-stats[p], p))
        merges[pair] = new_id
        pieces = [merge(piece, pair, new_id) for piece in pieces]
    return merges


def hf_tokenizers(text: str) -> float:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    start = time.perf_counter()
    tok.train_from_iterator([text], trainer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="run the slow trainer to the end")
    args = parser.parse_args()

    text = data.shakespeare().encode("utf-8")[:1_000_000].decode("utf-8", errors="ignore")
    n_merges = VOCAB - 256
    print(f"BPE training on {len(text.encode()):,} bytes of Shakespeare to {VOCAB} tokens")

    start = time.perf_counter()
    ours = BPETokenizer.train(text, VOCAB)
    t_ours = time.perf_counter() - start

    k = n_merges if args.full else 20
    start = time.perf_counter()
    slow = recount_every_merge(text, k)
    t_slow = (time.perf_counter() - start) * n_merges / k
    assert slow == dict(list(ours.merges.items())[:k]), "the two trainers disagree"

    t_hf = hf_tokenizers(text)
    how = "measured" if args.full else f"extrapolated from the first {k} merges, an overestimate"
    print(f"  lmkit (incremental counts) {t_ours:8.2f} s")
    print(f"  recount every merge        {t_slow:8.2f} s  ({how}; {t_slow / t_ours:.0f}x lmkit)")
    print(f"  HF tokenizers (Rust)       {t_hf:8.2f} s  (lmkit takes {t_ours / t_hf:.1f}x as long)")


if __name__ == "__main__":
    main()
