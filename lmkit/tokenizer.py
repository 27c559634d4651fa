"""Tokenizers: text <-> integer ids (chapter 01).

Three tokenizers, from simplest to the one real models use:

- `CharTokenizer`: one id per distinct character of a training text.
- `ByteTokenizer`: one id per UTF-8 byte, so any text fits in 256 ids.
- `BPETokenizer`: byte-level byte-pair encoding with GPT-2's regex pre-split and
  special tokens; saves and loads GPT-2's `vocab.json` + `merges.txt`.

The BPE algorithm is carried by two small functions, `get_stats` and `merge`.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from lmkit.io import read_json, read_text, write_atomic

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "CharTokenizer",
    "ByteTokenizer",
    "BPETokenizer",
    "get_stats",
    "merge",
    "bytes_to_unicode",
]

GPT2_EOT = "<|endoftext|>"  # GPT-2's one special token, between documents
SPECIAL_TOKENS_FILE = "special_tokens.json"  # written by save() when there are other specials
_LOOKAHEAD = 16  # characters after a pre-split piece that decide it (GPT-2's pattern needs 3)

# GPT-2's pre-split: contractions, letters, numbers, other symbols, whitespace.
# A leading space stays glued to the word after it, so " the" is one piece.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def get_stats(ids: Iterable[int], counts: dict | None = None) -> dict[tuple[int, int], int]:
    """Count each adjacent pair in `ids`, e.g. [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}."""
    counts = {} if counts is None else counts
    ids = list(ids)
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters, used in vocab.json and merges.txt.

    Printable bytes map to themselves; the others (space, control bytes...) are shifted to
    code points from 256 upwards, so that every token is a readable string with no spaces.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(
            f"token id {bad[0]} is out of range: this tokenizer has ids 0..{vocab_size - 1}"
        )
    return ids


class CharTokenizer:
    """One id per distinct character of the text it is built from (the character-level baseline)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} was not in the text this CharTokenizer was built from; "
                "build it from a text that contains every character you will encode"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in _check_ids(ids, self.vocab_size))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """One id per UTF-8 byte: 256 ids cover every possible text."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # A byte sequence cut in the middle of a character is not valid UTF-8: show U+FFFD.
        return bytes(_check_ids(ids, 256)).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class BPETokenizer:
    """Byte-level BPE with a regex pre-split and special tokens, as in GPT-2.

    `merges` maps a pair of ids to the id of the token that replaces it, in the order the
    merges were learned (earlier merges apply first). `vocab` maps every id to its bytes.
    """

    def __init__(
        self,
        merges: dict[tuple[int, int], int],
        special_tokens: dict[str, int] | None = None,
        pattern: str | None = GPT2_SPLIT_PATTERN,
        byte_ids: list[int] | None = None,
    ):
        # byte_ids[b] is the id of the single byte b: range(256) for tokenizers trained here,
        # a permutation for GPT-2's own files.
        self.byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        self.merges = dict(merges)
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self._split = regex.compile(pattern) if pattern else None  # None: no pre-split
        self.vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for (a, b), new_id in self.merges.items():
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._rank = {pair: rank for rank, pair in enumerate(self.merges)}
        self._special_split = None
        if self.special_tokens:
            self._special_split = _special_pattern(self.special_tokens)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)})"
        )

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: list[str] | None = None,
        *,
        pattern: str | None = GPT2_SPLIT_PATTERN,
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn merges from `text` until the vocabulary has `vocab_size` tokens.

        Ids 0-255 are the bytes, then one id per merge, then the special tokens. Pair counts
        are kept up to date incrementally: after a merge only the words that contained the
        merged pair are recounted, which makes training on megabytes take seconds.
        Ties between equally frequent pairs go to the smallest pair, as in chapter 01.
        `pattern=None` trains on the raw byte sequence with no pre-split.

        Special-token strings in `text` are cut out first, exactly as `encode` does: no merge
        crosses or enters a special token (encoding could never use such a merge).
        """
        special_tokens = list(special_tokens or [])
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens has duplicates: {special_tokens}")
        if any(not s for s in special_tokens):
            raise ValueError("special tokens must be non-empty strings")
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must be at least 256 (one id per "
                f"byte) + {len(special_tokens)} special tokens = {256 + len(special_tokens)}"
            )
        n_merges = vocab_size - 256 - len(special_tokens)

        # Cut out the special tokens, pre-split each part between them, then count each
        # distinct piece once: "the" may occur 20,000 times.
        parts = _special_pattern(special_tokens).split(text) if special_tokens else [text]
        pieces: Counter[str] = Counter()
        for part in parts[::2]:  # the separators (the special tokens) sit at odd positions
            if part:
                pieces.update(regex.findall(pattern, part) if pattern else [part])
        words = [list(piece.encode("utf-8")) for piece in pieces]
        freqs = list(pieces.values())

        stats: dict[tuple[int, int], int] = {}  # pair -> count over the whole text
        where: dict[tuple[int, int], set[int]] = {}  # pair -> words that contain it
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                stats[pair] = stats.get(pair, 0) + freq
                where.setdefault(pair, set()).add(w)
        # Max-heap of (-count, pair); entries whose count is stale are skipped when popped.
        heap = [(-c, p) for p, c in stats.items()]
        heapq.heapify(heap)

        merges: dict[tuple[int, int], int] = {}
        bar = _progress_bar(n_merges, progress, "BPE merges")
        for new_id in range(256, 256 + n_merges):
            pair = None
            while heap:
                neg, candidate = heapq.heappop(heap)
                if stats.get(candidate, 0) == -neg:
                    pair = candidate
                    break
            if pair is None:  # every piece is a single token: nothing left to merge
                break
            merges[pair] = new_id
            changed = set()
            for w in where.pop(pair, ()):
                word, freq = words[w], freqs[w]
                if len(word) < 2:
                    continue
                for p in zip(word, word[1:]):
                    stats[p] -= freq
                    changed.add(p)
                word = merge(word, pair, new_id)
                for p in zip(word, word[1:]):
                    stats[p] = stats.get(p, 0) + freq
                    where.setdefault(p, set()).add(w)
                    changed.add(p)
                words[w] = word
            for p in changed:
                count = stats.get(p, 0)
                if count > 0:
                    heapq.heappush(heap, (-count, p))
                else:
                    stats.pop(p, None)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        first_special = 256 + len(merges)
        specials = {s: first_special + i for i, s in enumerate(special_tokens)}
        return cls(merges, specials, pattern=pattern)

    # ------------------------------------------------------------------ encoding

    def _encode_piece(self, piece: str) -> list[int]:
        """Apply the merges to one pre-split piece, lowest rank (earliest learned) first."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        ids = self._byte_ids_of(piece)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._rank.get(p, float("inf")))
            if pair not in self._rank:
                break
            ids = merge(ids, pair, self.merges[pair])
        if len(piece) < 1000 and len(self._cache) < 100_000:
            self._cache[piece] = ids
        return ids

    def _byte_ids_of(self, piece: str) -> list[int]:
        """The ids of the piece's UTF-8 bytes, before any merge (a subclass may drop some)."""
        return [self.byte_ids[b] for b in piece.encode("utf-8")]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text`, treating special-token strings in it as ordinary text."""
        ids = []
        for piece in self._split.findall(text) if self._split else [text]:
            ids.extend(self._encode_piece(piece))
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode `text` to ids; special-token strings in it (e.g. "<|endoftext|>") become their id."""
        if self._special_split is None:
            return self.encode_ordinary(text)
        ids = []
        for i, part in enumerate(self._special_split.split(text)):
            if i % 2 == 1:  # the split keeps the separators at odd positions
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_iterable(self, chunks: Iterable[str]) -> Iterator[int]:
        """Encode a stream of text (the lines of an open file, say) lazily: exactly the ids of
        `encode("".join(chunks))`, holding only the last unfinished piece in memory.

        Chunks may end anywhere, inside a word or inside a special token. A pre-split piece is
        given out once enough text follows it to be sure it cannot grow; a special token once
        every longer special token that could start there is ruled out.

        Time is linear in the length of the text: the held text is scanned again only once
        as much new text has arrived, so each character is scanned a bounded number of times.
        Memory stays small except for one pre-split piece that is itself long (a run of
        thousands of letters or spaces), which is held whole until it ends. With
        `pattern=None` there is no pre-split: the text between two special tokens is one
        piece, so such a tokenizer cannot stream; it holds that text whole (all of it, if
        there are no special tokens) and gives its ids at the next special token or the end.
        """
        hold = max(map(len, self.special_tokens), default=1) - 1  # may start a special token
        buffer = ""  # the text scanned last time and not given out yet
        pending: list[str] = []  # chunks that arrived since, not scanned yet
        waiting = 0  # characters in `pending`
        for chunk in chunks:
            if not isinstance(chunk, str):
                raise TypeError(f"encode_iterable expects chunks of text (str), got "
                                f"{type(chunk).__name__}; open files in text mode")
            pending.append(chunk)
            waiting += len(chunk)
            if waiting < len(buffer):  # rescanning `buffer` now would cost more than is new
                continue
            buffer += "".join(pending)
            pending.clear()
            waiting = 0
            ids, buffer = self._encode_finished(buffer, hold)
            yield from ids
        yield from self.encode(buffer + "".join(pending))

    def _encode_finished(self, text: str, hold: int) -> tuple[list[int], str]:
        """(ids of the start of `text` that more text cannot change, the rest of `text`)."""
        ids: list[int] = []
        pos, end = 0, len(text)
        safe = max(0, end - hold)  # a special token starting before it lies wholly inside text
        while self._special_split is not None:
            m = self._special_split.search(text, pos)
            if m is None or m.start() >= safe:
                break
            ids.extend(self.encode_ordinary(text[pos : m.start()]))
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        # ordinary text up to `safe`: give out the pieces that the next characters cannot change
        # (GPT-2's pattern decides a piece from at most 3 characters after it; 16 is ample)
        ordinary = text[pos:safe]
        done = 0
        if self._split is not None:
            for m in self._split.finditer(ordinary):
                if m.end() + _LOOKAHEAD > len(ordinary):
                    break
                ids.extend(self._encode_piece(m.group()))
                done = m.end()
        return ids, text[pos + done :]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text. Bytes that do not form valid UTF-8 on their own become U+FFFD."""
        ids = _check_ids(ids, self.vocab_size)
        missing = [i for i in ids if i not in self.vocab]
        if missing:
            raise ValueError(f"token id {missing[0]} is not in this tokenizer's vocabulary")
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of each token separately (for showing token boundaries)."""
        return [self.vocab[i] for i in _check_ids(ids, self.vocab_size)]

    # ------------------------------------------------------------------ GPT-2 files

    def save(self, directory: str | os.PathLike) -> None:
        """Write GPT-2 format `vocab.json` and `merges.txt` into `directory` (created if needed)."""
        if self.pattern != GPT2_SPLIT_PATTERN:
            raise ValueError(
                "GPT-2's vocab.json/merges.txt format has no place for a split pattern, and this "
                "tokenizer uses a custom one; train with the default pattern to save it"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        byte_char = bytes_to_unicode()

        def name(i: int) -> str:
            return "".join(byte_char[b] for b in self.vocab[i])

        vocab = {name(i): i for i in sorted(self.vocab) if i not in self.special_tokens.values()}
        vocab.update(self.special_tokens)
        if len(vocab) != len(self.vocab):
            raise ValueError("two tokens have the same bytes; GPT-2 files cannot represent that")
        lines = ["#version: 0.2"] + [f"{name(a)} {name(b)}" for a, b in self.merges]
        write_atomic(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=1))
        write_atomic(directory / "merges.txt", "\n".join(lines) + "\n")
        specials = directory / SPECIAL_TOKENS_FILE
        if set(self.special_tokens) - {GPT2_EOT}:  # more than GPT-2's convention: list them
            write_atomic(specials, json.dumps(list(self.special_tokens), ensure_ascii=False))
        elif specials.exists():
            specials.unlink()  # a stale list from an earlier save would add wrong specials

    @classmethod
    def load(
        cls, directory: str | os.PathLike, special_tokens: list[str] | None = None
    ) -> BPETokenizer:
        """Read GPT-2 format `vocab.json` and `merges.txt` (ours, or OpenAI's GPT-2 files).

        Special tokens are never guessed: they are `special_tokens` if given, else the list
        `save` wrote to special_tokens.json, else GPT-2's convention (`<|endoftext|>`, if the
        vocabulary has it). Every other vocab entry must be a byte or made by a line of
        merges.txt: a truncated merges.txt is a ValueError naming the first token it lacks.
        """
        if isinstance(special_tokens, (str, bytes)):  # a str would be iterated per character
            raise TypeError(f"special_tokens must be a list of strings, got the "
                            f"{type(special_tokens).__name__} {special_tokens!r}; write "
                            f"special_tokens=[{special_tokens!r}]")
        directory = Path(directory)
        vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
        for path in (vocab_path, merges_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: a GPT-2 tokenizer folder holds vocab.json and merges.txt"
                )
        vocab = read_json(vocab_path)
        if not isinstance(vocab, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in vocab.items()
        ):
            raise ValueError(f"{vocab_path} must map token strings to non-negative integer ids")
        if len(set(vocab.values())) != len(vocab):
            raise ValueError(f"{vocab_path} gives the same id to two tokens")

        char_byte = {c: b for b, c in bytes_to_unicode().items()}
        missing = [c for c in char_byte if c not in vocab]
        if missing:
            raise ValueError(
                f"{vocab_path} has no token for the single byte {char_byte[missing[0]]} "
                f"(written {missing[0]!r}); a byte-level vocabulary needs all 256"
            )
        byte_ids = [0] * 256
        for c, b in char_byte.items():
            byte_ids[b] = vocab[c]

        if special_tokens is None:
            special_tokens = _saved_special_tokens(directory)
        gpt2_convention = special_tokens is None  # decided once the merges are known
        special_tokens = [] if special_tokens is None else list(special_tokens)
        unknown = [s for s in special_tokens if s not in vocab]
        if unknown:
            raise ValueError(f"special token {unknown[0]!r} is not in {vocab_path}")
        specials = {s: vocab[s] for s in special_tokens}
        special_ids = set(specials.values())

        both = f"{vocab_path} and {merges_path} do not match"
        merges: dict[tuple[int, int], int] = {}
        made = set(byte_ids)  # ids that are bytes or made by an earlier merge
        for n, line in enumerate(read_text(merges_path).splitlines(), start=1):
            if not line or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(
                    f"{merges_path} line {n}: expected two tokens separated by one space, "
                    f"got {line!r}"
                )
            a, b = parts
            for tok in (a, b, a + b):
                if tok not in vocab:
                    raise ValueError(f"{both}: {merges_path} line {n}: token {tok!r} is not "
                                     f"in vocab.json")
            for tok in (a, b):
                if vocab[tok] not in made:
                    raise ValueError(f"{both}: {merges_path} line {n} merges {tok!r}, which is "
                                     "not a byte and no earlier line makes")
            if vocab[a + b] in special_ids:
                raise ValueError(f"{both}: {merges_path} line {n} makes {a + b!r}, which is "
                                 "listed as a special token")
            merges[(vocab[a], vocab[b])] = vocab[a + b]
            made.add(vocab[a + b])

        if gpt2_convention and GPT2_EOT in vocab and vocab[GPT2_EOT] not in made:
            specials[GPT2_EOT] = vocab[GPT2_EOT]
            special_ids.add(vocab[GPT2_EOT])
        for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            if i not in made and i not in special_ids:
                raise ValueError(
                    f"{both}: vocab.json has token {tok!r} (id {i}), which is not a byte, "
                    f"not made by any line of merges.txt and not a special token. Is "
                    f"merges.txt truncated? If {tok!r} is a special token, pass "
                    f"special_tokens=[...] to BPETokenizer.load"
                )
        return cls(merges, specials, byte_ids=byte_ids)


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


def _special_pattern(special_tokens: Iterable[str]) -> regex.Pattern:
    """A regex that finds the special tokens, the longest first, and keeps them when splitting."""
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")


def _saved_special_tokens(directory: Path) -> list[str] | None:
    """The special tokens `save` listed in special_tokens.json; None if there is no such file."""
    path = directory / SPECIAL_TOKENS_FILE
    if not path.is_file():
        return None
    specials = read_json(path)
    if not isinstance(specials, list) or not all(isinstance(s, str) and s for s in specials):
        raise ValueError(f"{path} must hold a list of special-token strings, got {specials!r}")
    return specials


from lmkit.wordpiece import WordPieceTokenizer  # noqa: E402, F401  (chapter 10's tokenizer)
