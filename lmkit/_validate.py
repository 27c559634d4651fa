"""Argument checks shared by several lmkit modules."""

from __future__ import annotations


def check_fast(fast: bool) -> None:
    """`fast` picks the code path; a truthy string such as "no" must not pick the kernel."""
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be True or False (True: PyTorch's kernels, False: the "
                        f"written-out code of the chapters), got {fast!r}")
