"""`-Q/--filter EXPR`: libsmartcols filter expressions (util-linux 2.40+, scols-filter(5)), the same
language `lsns -Q`, `lsblk -Q` and `findmnt -Q` take.

Grammar (libsmartcols/src/filter-parser.y and filter-scanner.l of 2.42)::

    expr    := operand ((AND | OR) operand)*          left-associative; AND and OR bind equally
    operand := unary ((EQ|NE|LT|LE|GT|GE|REG|NREG) unary)*    left-associative
    unary   := NOT unary | '(' expr ')' | param
    param   := integer [KMGTPEZY](iB)? | float | "string" | 'string' | true | false | HOLDER
    AND: && and AND   OR: || or OR   NOT: ! not NOT   EQ: == eq EQ   NE: != ne NE
    LT: < lt LT   LE: <= le LE   GT: > gt GT   GE: >= ge GE   REG: =~   NREG: !~
    HOLDER  := [a-zA-Z][a-zA-Z_.%:/-0-9]*      a column name (any case)

As in libsmartcols: `NOT` binds to what follows it (`!A == B` is `(!A) == B`); a comparison is
done in the type of its literal operand (a holder takes its column's JSON type: number columns
compare as unsigned integers, others as strings; a float literal makes it a float comparison); a
bare holder or literal is true when it is not empty and not zero; `=~` and `!~` take a regular
expression literal on the right and search the left side for it (POSIX ERE there, Python's re
here: the same for the expressions lsns users write). A holder whose value cannot be read in the
comparison's type (`NETNSID > 0` on `unassigned`) makes that comparison false (lsns stops with
"failed to apply filter"). Pure: compile_filter() turns an expression into a predicate over rows,
given a function that maps a column name to its getter and whether it is a number column.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, NamedTuple

#: What a compiled filter is given for each holder: row -> the column's value (None when empty).
Getter = Callable[[Any], Any]
Predicate = Callable[[Any], bool]

_KEYWORDS = {
    "and": "AND", "AND": "AND", "&&": "AND",
    "or": "OR", "OR": "OR", "||": "OR",
    "not": "NOT", "NOT": "NOT", "!": "NOT",
    "eq": "EQ", "EQ": "EQ", "==": "EQ", "ne": "NE", "NE": "NE", "!=": "NE",
    "le": "LE", "LE": "LE", "<=": "LE", "lt": "LT", "LT": "LT", "<": "LT",
    "ge": "GE", "GE": "GE", ">=": "GE", "gt": "GT", "GT": "GT", ">": "GT",
    "=~": "REG", "!~": "NREG", "true": "TRUE", "TRUE": "TRUE", "false": "FALSE", "FALSE": "FALSE",
}
_COMPARISONS = frozenset({"EQ", "NE", "LT", "LE", "GT", "GE", "REG", "NREG"})
_SUFFIX = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6, "Z": 7, "Y": 8}
_DIGITS = frozenset("0123456789")  # ASCII only, as flex's [0-9] (not other scripts' digits)
_HOLDER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.%:/-0123456789")
_OPERATORS = ("&&", "||", "==", "!=", "<=", ">=", "=~", "!~", "!", "<", ">", "(", ")")  # longest first


class FilterError(ValueError):
    """A filter expression that cannot be parsed or names an unknown column; str() says why."""


class Token(NamedTuple):
    kind: str  # AND OR NOT EQ ... TRUE FALSE NUMBER FLOAT STRING HOLDER ( )
    value: Any
    at: int  # offset in the expression, for the error message


def tokenize(text: str) -> list[Token]:
    """The tokens of an expression, as filter-scanner.l reads them (the longest match first). By
    hand rather than with a regular expression: compiling one would cost every `-Q` ~3 ms."""
    tokens: list[Token] = []
    pos, end = 0, len(text)
    while pos < end:
        c = text[pos]
        if c in " \t\n":
            pos += 1
        elif c in _DIGITS:
            pos = _number(text, pos, tokens)
        elif c.isalpha() and c.isascii():
            stop = pos + 1
            while stop < end and text[stop] in _HOLDER_CHARS:
                stop += 1
            word = text[pos:stop]
            tokens.append(Token(_KEYWORDS.get(word, "HOLDER"), word, pos))
            pos = stop
        elif c in "\"'":
            close = text.find(c, pos + 1)
            if close < 0 or "\n" in text[pos:close]:
                raise FilterError(f"unterminated string at offset {pos}")
            tokens.append(Token("STRING", text[pos + 1:close], pos))
            pos = close + 1
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, pos)), None)
            if op is None:
                raise FilterError(f"unexpected {c!r} at offset {pos}")
            tokens.append(Token(_KEYWORDS.get(op, op), op, pos))
            pos += len(op)
    return tokens


def _number(text: str, pos: int, tokens: list[Token]) -> int:
    """An integer (with an optional K, M, ... or KiB, MiB, ... suffix) or a float at pos."""
    stop = pos
    while stop < len(text) and text[stop] in _DIGITS:
        stop += 1
    if text[stop:stop + 1] == "." and text[stop + 1:stop + 2] in _DIGITS:
        frac = stop + 1
        while frac < len(text) and text[frac] in _DIGITS:
            frac += 1
        tokens.append(Token("FLOAT", float(text[pos:frac]), pos))
        return frac
    digits = int(text[pos:stop])
    suffix = text[stop:stop + 1]
    if suffix and suffix in _SUFFIX:
        unit = 3 if text.startswith("iB", stop + 1) else 1
        tokens.append(Token("NUMBER", digits * 1024 ** _SUFFIX[suffix], pos))
        return stop + unit
    tokens.append(Token("NUMBER", digits, pos))
    return stop


# --- the tree: a node is ("param", type, value) | ("holder", name) | (OP, left, right) ---------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise FilterError("unexpected end of the expression")
        self.pos += 1
        return token

    def parse(self) -> tuple[Any, ...]:
        if not self.tokens:
            raise FilterError("an empty expression")
        node = self.expr()
        if (extra := self.peek()) is not None:
            raise FilterError(f"unexpected {extra.value!r} at offset {extra.at}")
        return node

    def expr(self) -> tuple[Any, ...]:
        node = self.operand()
        while (t := self.peek()) is not None and t.kind in ("AND", "OR"):
            self.take()
            node = (t.kind, node, self.operand())
        return node

    def operand(self) -> tuple[Any, ...]:
        node = self.unary()
        while (t := self.peek()) is not None and t.kind in _COMPARISONS:
            self.take()
            right = self.unary()
            if t.kind in ("REG", "NREG"):
                if right[0] != "param" or right[1] != "string":
                    raise FilterError(f"the right side of {t.value} must be a string (a regular expression)")
                try:
                    right = ("param", "regex", re.compile(right[2]))
                except re.error as e:
                    raise FilterError(f"bad regular expression {right[2]!r}: {e}") from None
            node = (t.kind, node, right)
        return node

    def unary(self) -> tuple[Any, ...]:
        t = self.take()
        if t.kind == "NOT":
            return ("NOT", None, self.unary())
        if t.kind == "(":
            node = self.expr()
            close = self.take()
            if close.kind != ")":
                raise FilterError(f"expected ')' at offset {close.at}")
            return node
        if t.kind == "NUMBER":
            return ("param", "number", t.value)
        if t.kind == "FLOAT":
            return ("param", "float", t.value)
        if t.kind == "STRING":
            return ("param", "string", t.value)
        if t.kind in ("TRUE", "FALSE"):
            return ("param", "boolean", t.kind == "TRUE")
        if t.kind == "HOLDER":
            return ("holder", t.value.upper())
        raise FilterError(f"unexpected {t.value!r} at offset {t.at}")


def holders(node: tuple[Any, ...]) -> set[str]:
    """The column names an expression reads."""
    if node[0] == "holder":
        return {node[1]}
    if node[0] == "param":
        return set()
    return (holders(node[1]) if node[1] is not None else set()) | holders(node[2])


class _Unreadable(Exception):
    """A value that cannot be had in the comparison's type."""


def _cast(value: Any, kind: str) -> Any:
    """A value (None, int, float, bool or str) in the comparison's type, as libsmartcols casts."""
    if kind == "string":
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if kind == "boolean":
        if isinstance(value, str):
            return value == "1" or value.lower() in ("true", "y", "yes")
        return bool(value)
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        try:
            return int(value, 10) if kind == "number" else float(value)
        except ValueError:
            raise _Unreadable(value) from None
    return int(value) if kind == "number" else float(value)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": operator.eq, "NE": operator.ne, "LT": operator.lt, "LE": operator.le, "GT": operator.gt, "GE": operator.ge,
}
#: the Python type a value already has when no cast is needed, per comparison type
_NATIVE = {"string": str, "number": int, "float": float, "boolean": bool}


def compile_filter(text: str, column: Callable[[str], tuple[Getter, bool] | None]) -> Predicate:
    """A predicate over rows for the expression `text`. column(NAME) gives the getter of a column
    and whether it is a number column, or None for no such column (a FilterError names all)."""
    tree = _Parser(text).parse()
    getters: dict[str, tuple[Getter, bool]] = {}
    unknown = []
    for name in sorted(holders(tree)):
        found = column(name)
        if found is None:
            unknown.append(name)
        else:
            getters[name] = found
    if unknown:
        raise FilterError(f"unknown column{'s' if len(unknown) > 1 else ''} in the filter: {', '.join(unknown)}")
    return _truth(tree, getters)


def _kind(node: tuple[Any, ...], getters: dict[str, tuple[Getter, bool]]) -> str:
    if node[0] == "param":
        return "string" if node[1] == "regex" else node[1]
    if node[0] == "holder":
        return "number" if getters[node[1]][1] else "string"
    return "boolean"


def _comparison_kind(left: tuple[Any, ...], right: tuple[Any, ...], getters: dict[str, tuple[Getter, bool]]) -> str:
    """guess_expr_datatype(): the literal's type wins over a holder's; float wins over number."""
    lk, rk = _kind(left, getters), _kind(right, getters)
    if lk == rk:
        return lk
    kind = rk if left[0] == "holder" and right[0] != "holder" else lk
    return "float" if kind == "number" and "float" in (lk, rk) else kind


def _value(node: tuple[Any, ...], kind: str, getters: dict[str, tuple[Getter, bool]]) -> Callable[[Any], Any]:
    """The node's value for a row, in type `kind` (a column's value is cast only when it is not
    already of that type: the common case costs one type check per row)."""
    if node[0] == "param":
        constant = node[2] if node[1] == "regex" else _cast(node[2], kind)
        return lambda _row: constant
    if node[0] == "holder":
        get, native = getters[node[1]][0], _NATIVE[kind]

        def value(row: Any) -> Any:
            v = get(row)
            return v if type(v) is native else _cast(v, kind)

        return value
    truth = _truth(node, getters)
    return lambda row: _cast(truth(row), kind)


def _truth(node: tuple[Any, ...], getters: dict[str, tuple[Getter, bool]]) -> Predicate:
    op = node[0]
    if op in ("param", "holder"):
        value = _value(node, _kind(node, getters), getters)
        return lambda row: bool(value(row))
    if op == "NOT":
        inner = _truth(node[2], getters)
        return lambda row: not inner(row)
    if op in ("AND", "OR"):
        left, right = _truth(node[1], getters), _truth(node[2], getters)
        if op == "AND":
            return lambda row: left(row) and right(row)
        return lambda row: left(row) or right(row)
    if op in ("REG", "NREG"):
        text = _value(node[1], "string", getters)
        pattern: re.Pattern[str] = node[2][2]
        want = op == "REG"
        return lambda row: (pattern.search(text(row)) is not None) == want
    kind = _comparison_kind(node[1], node[2], getters)
    a, compare = _value(node[1], kind, getters), _OPS[op]
    if node[2][0] == "param":  # the usual `COLUMN > 1`: the literal once, not per row
        constant = _cast(node[2][2], kind)

        def against_literal(row: Any) -> bool:
            try:
                return compare(a(row), constant)
            except _Unreadable:
                return False

        return against_literal
    b = _value(node[2], kind, getters)

    def test(row: Any) -> bool:
        try:
            return compare(a(row), b(row))
        except _Unreadable:
            return False

    return test
