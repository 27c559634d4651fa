"""The lmkit command line: train a small model, or generate text from one (chapters 07, 08).

    .venv/bin/python -m lmkit train --size tiny --steps 200 --out runs/tiny
    .venv/bin/python -m lmkit generate --model runs/tiny --prompt "ROMEO:"
    .venv/bin/python -m lmkit generate --prompt "To be, or not"   # the shipped course model
    .venv/bin/python -m torch.distributed.run --nproc_per_node 2 -m lmkit train --size tiny \
        --batch-size 32 --out runs/ddp              # data-parallel, = torchrun (chapter 12)

(or `source .venv/bin/activate` first, then `python -m lmkit ...`). Run
`.venv/bin/python -m lmkit train --help` or `.venv/bin/python -m lmkit generate --help`
for every option.

`generate` decodes with `lmkit.generation` only: tokens are printed as they are produced
(`generate_stream`), and the same options and seed give exactly what `lmkit.generate` gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lmkit import data, distributed, io
from lmkit.generation import generate, generate_stream
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import BPETokenizer, CharTokenizer
from lmkit.train import COURSE_MODEL, TrainConfig, Trainer, check_save_folder, load_model

# Model sizes for `train --size`: small enough for a laptop CPU.
SIZES = {
    "tiny": dict(context_length=64, d_model=64, n_layers=2, n_heads=2),  # ~0.1M, seconds
    "small": dict(context_length=128, d_model=128, n_layers=4, n_heads=4),  # ~1M, minutes
    "medium": dict(context_length=256, d_model=256, n_layers=6, n_heads=8),  # ~5M, an hour
}
CHARS_FILE = "chars.json"  # a character-level tokenizer: its characters, in id order
BPE_FILES = ("vocab.json", "merges.txt")
# Files whose presence means --out already holds a model or checkpoint.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "trainer_state.json")
DEFAULT_NEW_TOKENS = 100  # at most; fewer if the prompt leaves less room in the window
DEFAULT_TEMPERATURE = 0.8


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {v}")
    return v


def _probability(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return v


def _non_negative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def _device(s: str) -> str:
    try:
        device = torch.device(s)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {s!r}; use cpu, cuda or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"cannot run on device {s!r}; use cpu, cuda or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda was asked for but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("mps was asked for but is not available here")
    return s


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmkit",
        description="Train a small transformer language model, or generate text from one.",
        epilog="Example: .venv/bin/python -m lmkit train --size tiny --steps 200 --out "
               "runs/tiny, then .venv/bin/python -m lmkit generate --model runs/tiny "
               "--prompt 'ROMEO:'",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate,chat,doctor}")

    t = sub.add_parser(
        "train", help="train a model on Shakespeare (or your own text file)",
        description="Train a GPT-2 style model with lmkit.train and save a checkpoint folder "
                    "(weights, config, tokenizer, optimizer state) that `generate` can read.",
        epilog="Example: .venv/bin/python -m lmkit train --size tiny --steps 200 --out runs/tiny",
    )
    t.add_argument("--corpus", default="shakespeare",
                   help="'shakespeare' (all 38 plays, the default), one play's name such as "
                        "'hamlet', or the path of a UTF-8 text file")
    t.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                   help="character-level (default; fast to set up) or byte-level BPE")
    t.add_argument("--vocab-size", type=_positive_int, default=512,
                   help="BPE vocabulary size, at least 256 (default 512; ignored for char)")
    t.add_argument("--size", choices=tuple(SIZES), default="tiny",
                   help="model size preset: " + "; ".join(
                       f"{k}: d_model {v['d_model']}, {v['n_layers']} layers, context "
                       f"{v['context_length']}" for k, v in SIZES.items()) + " (default tiny)")
    t.add_argument("--steps", type=_positive_int, default=500,
                   help="optimizer steps (default 500)")
    t.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    t.add_argument("--lr", type=_positive_float, default=1e-3,
                   help="peak learning rate (default 1e-3); decays to lr/10")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda or mps (default: cuda if available, then mps, then cpu)")
    t.add_argument("--out", type=Path, required=True,
                   help="folder to write the checkpoint into (created if needed)")
    t.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out up to --steps instead of starting over")
    t.add_argument("--overwrite", action="store_true",
                   help="start over even if --out already holds a checkpoint, replacing it "
                        "(without --resume or --overwrite an existing checkpoint is refused)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_scaling_options(t)
    t.set_defaults(parser=t)

    g = sub.add_parser(
        "generate", help="continue a prompt with a trained model",
        description="Load a model folder (from `train`, or the shipped course model) and "
                    "continue the prompt one token at a time (lmkit.generate, chapter 08), "
                    "printing each token as it is produced. Prompt and new tokens must fit "
                    "in the model's context window, so the KV cache serves every step; "
                    "--slide allows longer output.",
        epilog="Example: .venv/bin/python -m lmkit generate --prompt 'ROMEO:' --top-p 0.9",
    )
    g.add_argument("--model", type=Path, default=COURSE_MODEL,
                   help="model folder (default: the course model shipped with lmkit, "
                        "lmkit/models/shakespeare, a 128-token context window), or "
                        "'smollm2' for SmolLM2-135M-Instruct (chapter 09)")
    g.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help=f"tokens to generate (default: {DEFAULT_NEW_TOKENS}, or as many as the "
                        "context window leaves after the prompt if fewer)")
    g.add_argument("--slide", action="store_true",
                   help="let prompt + new tokens outgrow the context window: each token is "
                        "then predicted from the last context-length tokens only (slower: no "
                        "KV cache once the window slides). Without it, longer output is refused")
    g.add_argument("--temperature", type=_non_negative_float, default=None,
                   help=f"0 = greedy (always the most likely token); higher = more varied "
                        f"(default {DEFAULT_TEMPERATURE})")
    g.add_argument("--top-k", type=_positive_int, default=None,
                   help="sample only among the k most likely tokens (default: all)")
    g.add_argument("--top-p", type=_probability, default=None,
                   help="nucleus sampling: only among the most likely tokens whose probability "
                        "adds up to p, in (0, 1] (default: all)")
    g.add_argument("--num-beams", type=_positive_int, default=1,
                   help="beam search with this many beams instead of sampling (default 1: no "
                        "beam search); the result is printed at the end, not streamed")
    g.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    g.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or mps")
    g.set_defaults(parser=g)

    from lmkit.chat import add_chat_parser  # chapter 09: SmolLM2-Instruct

    add_chat_parser(sub, _device)

    d = sub.add_parser(
        "doctor", help="check that this machine is ready for the course",
        description="Check Python, the pinned packages, the Jupyter kernel, the corpus and model "
                    "packages, threads, bf16 and GPU; print each problem with its fix.")
    d.set_defaults(parser=d)
    return parser


def _add_scaling_options(t: argparse.ArgumentParser) -> None:
    """`train` options of chapter 12: precision, accumulation, compilation, checkpointing,
    and the timeout of data-parallel runs started with torchrun."""
    s = t.add_argument_group(
        "scaling up (chapter 12)",
        "Under `torchrun --nproc_per_node N -m lmkit train ...` the run is data-parallel "
        "(DistributedDataParallel; gloo on CPUs, NCCL on GPUs): --batch-size is the global "
        "batch, split evenly across the N processes, and only rank 0 prints and writes.")
    s.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="fp32 (default), or bf16 autocast: matrix products in bfloat16, "
                        "weights and optimizer in float32 (fast on CPUs and GPUs with bf16)")
    s.add_argument("--grad-accum", type=_positive_int, default=1, metavar="K",
                   help="accumulate K micro-batches of --batch-size per optimizer step: the "
                        "same step as a K times larger batch (default 1)")
    s.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (slow first steps, faster later ones)")
    s.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="store only each block's input and recompute the rest in backward: "
                        "less memory, about one more forward pass of compute")
    s.add_argument("--timeout", type=_positive_float, default=distributed.DEFAULT_TIMEOUT_S,
                   metavar="SECONDS",
                   help="with torchrun: fail when the processes wait for each other longer "
                        f"than this (default {distributed.DEFAULT_TIMEOUT_S:.0f})")


def _start_distributed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bool:
    """Join torchrun's process group when there is one with more than one process."""
    world = distributed.env_world_size()
    if world < 2:
        return False
    if args.batch_size % world:
        parser.error(f"--batch-size {args.batch_size} is the global batch and must split "
                     f"evenly across the {world} processes; use a multiple of {world}")
    args.device = distributed.init_from_env(args.timeout, args.device)
    return True


def _read_corpus(parser: argparse.ArgumentParser, corpus: str) -> str:
    if corpus == "shakespeare":
        return data.shakespeare()
    if corpus in data.plays():
        return data.play(corpus)
    path = Path(corpus)
    if not path.is_file():
        parser.error(f"--corpus {corpus!r} is neither 'shakespeare', a play name (see "
                     "lmkit.data.plays()), nor an existing text file")
    try:
        return io.read_text(path)
    except ValueError as e:
        parser.error(f"--corpus: {e}")


def _save_tokenizer(tok, folder: Path) -> None:
    """Write the tokenizer and remove the other kind's files (left by an overwritten run)."""
    if isinstance(tok, CharTokenizer):
        io.write_atomic(folder / CHARS_FILE, json.dumps(tok.chars, ensure_ascii=False))
        stale = BPE_FILES
    else:
        tok.save(folder)
        stale = (CHARS_FILE,)
    for name in stale:
        (folder / name).unlink(missing_ok=True)


def load_tokenizer(folder: Path):
    """The tokenizer saved beside a model: chars.json (character-level) or vocab.json+merges.txt."""
    path = folder / CHARS_FILE
    if path.is_file():
        try:
            chars = json.loads(io.read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); retrain the model or restore "
                             "the file") from None
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise ValueError(f"{path} should hold a JSON list of characters")
        return CharTokenizer("".join(chars))
    return BPETokenizer.load(folder)


def cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not _start_distributed(parser, args):
        return _train(parser, args)
    try:
        _train(parser, args)
    finally:
        distributed.shutdown()


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    main_rank = distributed.is_main()
    if args.no_progress or not main_rank:
        args.no_progress = True  # one progress bar, rank 0's
    if args.tokenizer == "bpe" and args.vocab_size < 256:
        parser.error(f"--vocab-size must be at least 256 for byte-level BPE, got {args.vocab_size}")
    if args.resume and args.overwrite:
        parser.error("--resume continues the checkpoint in --out, --overwrite replaces it: "
                     "choose one")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder")
    try:
        check_save_folder(args.out)  # refused now rather than after training
    except ValueError as e:
        parser.error(f"--out: {e}")
    if args.resume and not (args.out / "trainer_state.json").is_file():
        parser.error(f"--resume: {args.out} holds no checkpoint to resume (no trainer_state.json)")
    found = [name for name in CHECKPOINT_FILES if (args.out / name).exists()]
    if found and not (args.resume or args.overwrite):
        parser.error(f"--out {args.out} already holds a checkpoint ({', '.join(found)}); add "
                     "--resume to continue it, --overwrite to replace it, or choose another "
                     "folder")
    text = _read_corpus(parser, args.corpus)
    torch.manual_seed(args.seed)
    if args.resume:
        tok = load_tokenizer(args.out)
    elif args.tokenizer == "char":
        tok = CharTokenizer(text)
    else:
        tok = BPETokenizer.train(text, args.vocab_size, progress=not args.no_progress)
    train_ids, val_ids = data.split(data.encode(tok, text), 0.1)
    size = SIZES[args.size]
    if len(val_ids) < size["context_length"] + 1:
        parser.error(f"--corpus is too short: its validation tenth has {len(val_ids)} tokens, "
                     f"fewer than one window of {size['context_length'] + 1}")
    how = {k: getattr(args, k) for k in ("precision", "compile", "activation_checkpointing")
           if getattr(args, k) is not None}  # given on the command line
    if args.resume:
        trainer = Trainer.load(args.out, train_ids, val_ids, device=args.device, **how)
        if args.steps < trainer.step:
            parser.error(f"--steps {args.steps} is below the checkpoint's step {trainer.step}")
        trainer.config.steps = args.steps
    else:
        model = TransformerLM(ModelConfig.gpt2(vocab_size=tok.vocab_size, **size))
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             min_lr=args.lr / 10, warmup_steps=min(100, args.steps // 10),
                             eval_interval=max(1, args.steps // 10), seed=args.seed,
                             device=args.device, grad_accum=args.grad_accum, **how)
        trainer = Trainer(model, train_ids, val_ids, config)
    history = trainer.run(progress=not args.no_progress)
    # only rank 0 writes; the tokenizer goes into the new checkpoint folder before it is
    # swapped in, so an interrupted save never pairs new weights with an old tokenizer
    trainer.save(args.out, extra=lambda folder: _save_tokenizer(tok, folder))
    if not main_rank:
        return
    print(f"step {trainer.step}: train loss {history['train_loss'][-1]:.3f}, "
          f"validation loss {history['val_loss'][-1]:.3f}; saved to {args.out}")
    print(f"try: .venv/bin/python -m lmkit generate --model {args.out} --prompt 'ROMEO:'")


def _sampling_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """lmkit.generate's keywords from the command line; options that would be ignored are errors."""
    if args.num_beams > 1:
        given = [name for name, v in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                      ("--top-p", args.top_p)) if v is not None]
        if given:
            parser.error(f"--num-beams {args.num_beams} is beam search, which does not sample: "
                         f"drop {', '.join(given)}")
        return dict(num_beams=args.num_beams)
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    if temperature == 0:
        given = [name for name, v in (("--top-k", args.top_k), ("--top-p", args.top_p))
                 if v is not None]
        if given:
            parser.error(f"--temperature 0 is greedy decoding, which does not sample: drop "
                         f"{', '.join(given)} or give a temperature above 0")
        return dict(do_sample=False)
    return dict(do_sample=True, temperature=temperature, top_k=args.top_k, top_p=args.top_p)


def _print_stream(tok, ids: list[int], steps) -> list[int]:
    """Print the prompt, then each new token as it comes; return all the ids.

    A byte-level token can end inside a multi-byte character: text is held back while it
    ends in U+FFFD, so what is printed is exactly tok.decode(all ids).
    """
    out, shown = list(ids), tok.decode(ids)
    sys.stdout.write(shown)
    sys.stdout.flush()
    for nxt in steps:
        out.append(int(nxt[0]))
        text = tok.decode(out)
        if not text.endswith("\ufffd") and text.startswith(shown):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    text = tok.decode(out)
    sys.stdout.write((text[len(shown):] if text.startswith(shown) else "\n" + text) + "\n")
    sys.stdout.flush()
    return out


def _new_token_count(parser: argparse.ArgumentParser, args: argparse.Namespace, T: int,
                     M: int) -> int:
    """--max-new-tokens, checked against the context window M for a T-token prompt; if not
    given, DEFAULT_NEW_TOKENS or the room the prompt leaves, whichever is fewer."""
    n = args.max_new_tokens
    if n is None:
        n = DEFAULT_NEW_TOKENS if args.slide else min(DEFAULT_NEW_TOKENS, M - T)
        if n < 1:
            parser.error(f"--prompt has {T} tokens, which fill the model's context window of "
                         f"{M}; shorten it, or add --slide and --max-new-tokens")
    elif T + n > M and not args.slide:
        parser.error(f"--max-new-tokens {n} with a {T}-token prompt needs {T + n} positions "
                     f"but the model's context window is {M}: ask for at most "
                     f"{max(M - T, 0)} new tokens, or add --slide to slide the window (each "
                     f"token then sees only the last {M} tokens)")
    return n


def _generate_smollm2(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`generate --model smollm2`: continue the prompt with SmolLM2-135M-Instruct (ch. 09),
    stopping at its end-of-turn token."""
    from lmkit.chat import stream_reply
    from lmkit.pretrained import load_smollm2

    if args.num_beams > 1 or args.slide:
        parser.error("--model smollm2 streams greedy or sampled text: drop --num-beams "
                     "and --slide")
    options = _sampling_options(parser, args)
    model, tok = load_smollm2()
    model.to(args.device)
    ids = tok.encode(args.prompt)
    if not ids:
        parser.error("--prompt is empty; give at least one character")
    n = _new_token_count(parser, args, len(ids), model.config.context_length)
    sys.stdout.write(args.prompt)
    stream_reply(model, tok, ids, n, options, args.seed, sys.stdout, args.device)


def cmd_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    folder = args.model
    if str(folder) == "smollm2" and not folder.is_dir():  # the pretrained model of chapter 09
        return _generate_smollm2(parser, args)
    if not folder.is_dir():
        parser.error(f"--model {folder}: no such folder (train one with `.venv/bin/python -m "
                     "lmkit train --out FOLDER`, or leave --model out to use the course model)")
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        parser.error(f"--model {folder}: not a model folder (it needs config.json and "
                     "model.safetensors)")
    options = _sampling_options(parser, args)
    try:
        tok = load_tokenizer(folder)
    except FileNotFoundError:
        parser.error(f"--model {folder}: no tokenizer found (chars.json, or vocab.json and "
                     "merges.txt)")
    except ValueError as e:
        parser.error(f"--model {folder}: {e}")
    try:
        ids = tok.encode(args.prompt)
    except ValueError as e:
        parser.error(f"--prompt: {e}")
    if not ids:
        parser.error("--prompt is empty; give at least one character")
    model = load_model(folder, device=args.device).eval()
    M, T = model.config.context_length, len(ids)
    n = _new_token_count(parser, args, T, M)
    if args.slide and options.get("num_beams", 1) > 1 and T + n > M:
        parser.error("--slide works with sampling and greedy decoding, not with --num-beams")
    x = torch.tensor([ids], device=args.device)  # (1, T)
    if "num_beams" in options:  # the best beam is only known at the end: print it whole
        out = generate(model, x, n, **options)[0].tolist()
        print(tok.decode(out))
        return
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    _print_stream(tok, ids, generate_stream(model, x, n, generator=g, slide=args.slide,
                                            **options))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # errors found after parsing are reported with the sub-command's usage line
    if args.command == "train":
        cmd_train(args.parser, args)
    elif args.command == "chat":
        from lmkit.chat import cmd_chat

        cmd_chat(args.parser, args)
    elif args.command == "doctor":
        from lmkit import doctor

        raise SystemExit(doctor.main())
    else:
        cmd_generate(args.parser, args)


if __name__ == "__main__":
    main()
