"""JSON from files a user hands us, read with bounded nesting and number size.

Python's ``json`` recurses once per nesting level, so a file of 100,000 ``[`` raises
RecursionError rather than ValueError, and it turns an integer literal of any length into an int
that numpy later refuses with OverflowError. Every reader of such JSON (boxes files, jobs lines,
batch results, cache entry headers) goes through :func:`load_json_text`, which refuses both, and
NaN/Infinity, with one :class:`JsonInputError` that says on which line.
"""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 32  # the deepest document we read (a boxes file) nests 3 levels
INT64_MAX = 2**63 - 1

# Outside strings, the tokens that can break a reader: brackets (depth), integers of 19 or more
# digits (int64 holds 18 digits safely), exponents of 3 or more digits (may overflow a float), and
# NaN/Infinity. Strings are matched whole so that nothing inside one counts.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]'
                     r"|(?<![\w.+-])-?\d{19,}(?:\.\d*)?(?:[eE][+-]?\d+)?"
                     r"|(?<![\w.+-])-?\d+(?:\.\d*)?[eE][+-]?\d{3,}"
                     r"|(?<![\w.+-])(?:NaN|-?Infinity)")


class JsonInputError(ValueError):
    """A JSON text we will not read; ``line`` is 1-based, counted from the text's first line."""

    def __init__(self, problem: str, line: int) -> None:
        super().__init__(f"line {line}: {problem}")
        self.problem, self.line = problem, line


def load_json_text(text: str, *, max_depth: int = MAX_DEPTH) -> object:
    """``json.loads(text)``, refusing nesting deeper than ``max_depth``, integers outside int64, floats that
    overflow, and NaN/Infinity; every refusal (and a syntax error) is a :class:`JsonInputError`."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonInputError(f"nested more than {max_depth} levels deep", _line(text, match.start()))
        elif token in "]}":
            depth -= 1
        else:
            problem = _number_problem(token)
            if problem is not None:
                raise JsonInputError(problem, _line(text, match.start()))
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not valid JSON ({exc.msg} at column {exc.colno})", exc.lineno) from None
    except ValueError as exc:  # a constant the scan could not place (it never should)
        raise JsonInputError(str(exc), 1) from None


def _number_problem(token: str) -> str | None:
    shown = token if len(token) <= 24 else f"{token[:20]}... ({len(token)} characters)"
    if token.lstrip("-") in ("NaN", "Infinity"):
        return f"{token} is not a JSON number"
    if re.fullmatch(r"-?\d+", token):
        if len(token) > 20 or not -INT64_MAX - 1 <= int(token) <= INT64_MAX:
            return f"the number {shown} is too large (at most {INT64_MAX} in magnitude)"
        return None
    if len(token) > 4300 or not math.isfinite(float(token)):
        return f"the number {shown} is too large for a float"
    return None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1
