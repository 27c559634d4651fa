"""Exercise checkers, one module per chapter (`lmkit.checks.ch01`, ...).

Each checker runs a student's function on several cases and compares it with lmkit's own
answer. A wrong answer raises `AssertionError` with a hint to act on; a right one prints a
single line saying how many cases passed.
"""

from . import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch12

__all__ = ["ch01", "ch02", "ch03", "ch04", "ch05", "ch06", "ch07", "ch08", "ch12"]
