"""lmkit: a transformer language model built step by step, one module per chapter.

    tokenizer   01  text <-> ids (characters, bytes, byte-level BPE)
    data        01  the Shakespeare corpus, offline
    checks          the exercise checkers used by exercises/ and solutions/
"""

from . import data, tokenizer

__version__ = "0.1.0"
__all__ = ["data", "tokenizer"]
