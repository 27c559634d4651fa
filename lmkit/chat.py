"""Chat models: the tokenizer of a pretrained chat model, its chat template, a chat loop (ch. 09).

An instruct model was fine-tuned on conversations written in one fixed format, its *chat
template*: SmolLM2's wraps each message as `<|im_start|>role\\ncontent<|im_end|>\\n` and ends
with `<|im_start|>assistant\\n` to ask for the reply. The template ships with the model as a
Jinja template; `ChatTokenizer.apply_chat_template` renders it exactly as Hugging Face does.

`chat` and `generate_text` are the `python -m lmkit chat` and `generate --model` commands.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

import regex
import torch

from lmkit.tokenizer import BPETokenizer, merge

__all__ = ["ChatTokenizer", "chat", "generate_text", "add_chat_arguments"]

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

    def _encode_piece(self, piece: str) -> list[int]:
        if not self.missing_bytes:
            return super()._encode_piece(piece)
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        ids = [self.byte_ids[b] for b in piece.encode("utf-8") if b not in self.missing_bytes]
        while len(ids) >= 2:  # the merge loop of BPETokenizer._encode_piece
            pair = min(zip(ids, ids[1:]), key=lambda p: self._rank.get(p, float("inf")))
            if pair not in self._rank:
                break
            ids = merge(ids, pair, self.merges[pair])
        if len(piece) < 1000 and len(self._cache) < 100_000:
            self._cache[piece] = ids
        return ids

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


def add_chat_arguments(parser, prompt: bool) -> None:
    """The options of `python -m lmkit chat` (and of `generate --model smollm2`)."""
    if prompt:
        parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (the default) = greedy, the most likely token every step")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights")
    parser.add_argument("--seed", type=int, default=0)


def _stream(model, tokenizer, ids: list[int], args, out: TextIO, cache=None) -> list[int]:
    """Generate after `ids`, printing text as soon as it is whole UTF-8; returns the new ids."""
    from lmkit.generation import generate_stream

    sample = args.temperature > 0
    new: list[int] = []
    printed = 0
    eos = tokenizer.eos_token_id
    stream = generate_stream(
        model, torch.tensor([ids]), args.max_new_tokens, do_sample=sample,
        temperature=args.temperature if sample else 1.0,
        top_p=args.top_p if sample else None, eos_token_id=eos,
    )
    for step in stream:
        tok = int(step.reshape(-1)[0])
        if tok == eos:
            break
        new.append(tok)
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[printed:])
            out.flush()
            printed = len(text)
    out.write(tokenizer.decode(new)[printed:] + "\n")
    out.flush()
    return new


def generate_text(args, out: TextIO = sys.stdout) -> None:
    """`python -m lmkit generate --model smollm2 --prompt ...`: continue the prompt."""
    from lmkit.pretrained import load_smollm2

    torch.manual_seed(args.seed)
    model, tok = load_smollm2(torch.bfloat16 if args.bf16 else torch.float32)
    out.write(args.prompt)
    _stream(model, tok, tok.encode(args.prompt), args, out)


def chat(args, inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    """`python -m lmkit chat`: talk to SmolLM2-Instruct; an empty line or Ctrl-D ends."""
    from lmkit.pretrained import load_smollm2

    torch.manual_seed(args.seed)
    model, tok = load_smollm2(torch.bfloat16 if args.bf16 else torch.float32)
    messages: list[dict[str, str]] = []
    out.write("Chat with SmolLM2-135M-Instruct (an empty line or Ctrl-D ends).\n")
    for line in _lines(inp, out):
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
        if len(ids) + args.max_new_tokens > model.config.context_length:
            out.write("(the conversation no longer fits in the context window: ending)\n")
            break
        out.write("assistant: ")
        reply = _stream(model, tok, ids, args, out)
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
