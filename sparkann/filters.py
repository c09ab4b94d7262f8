"""Spark SQL filter predicates over item columns, evaluated with pyarrow.

A predicate such as ``category = 'shoes' AND price < 20.5`` is parsed with sqlglot's
Spark dialect and translated into a ``pyarrow.compute.Expression`` that gives, row by
row, what Spark SQL gives with its defaults (ANSI mode, case-insensitive names): the
same type coercions, three-valued logic and NaN ordering (NaN equals NaN and is greater
than any other value). What cannot be reproduced exactly is refused with a
``ValueError`` naming the problem. Pure pyarrow + numpy, for Spark tasks.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from .storage.items import ITEM_TYPES

ItemTypes = Sequence[tuple[str, str]]  # (column name, Spark simpleString type)

SUPPORTED = ("comparisons (=, ==, <>, !=, <, <=, >, >=, <=>, IS [NOT] DISTINCT FROM), IN, "
             "BETWEEN, IS [NOT] NULL, IS [NOT] TRUE/FALSE, LIKE [ESCAPE], AND, OR, NOT, "
             "parentheses, item columns and literals (numbers, strings, TRUE, FALSE, NULL, "
             "DATE 'yyyy-mm-dd')")

INTEGRAL = ("tinyint", "smallint", "int", "bigint")
# numeric literals: "decimal" for exact ones (1, 1.5), "double" for 1e3
NUMERIC = (*INTEGRAL, "float", "double", "decimal")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_DECIMAL_DIGITS = 38

_NULL = pc.scalar(pa.scalar(None, pa.bool_()))
_MIRRORED = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<=", "<=>": "<=>"}
_COMPARISONS: dict[type, str] = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=",
                                 exp.GT: ">", exp.GTE: ">=", exp.NullSafeEQ: "<=>"}
_CONDITIONS = (*_COMPARISONS, exp.NullSafeNEQ, exp.In, exp.Between, exp.Like, exp.Escape, exp.Is,
               exp.Not, exp.And, exp.Or)
_PLAIN = {"=": pc.equal, "<>": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
          ">": pc.greater, ">=": pc.greater_equal}
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
# Spark's string literal tokens: quoted with ' or " (backslash escapes, the quote doubled
# inside), or raw (r'...')
_SPARK_STRING = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|[rR]'[^']*'|"
                           r"[rR]\"[^\"]*\"", re.DOTALL)
_BACKSLASH_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a",
                      "%": "\\%", "_": "\\_"}
_STRING_TOKENS = (TokenType.STRING, TokenType.RAW_STRING)


# ---------------------------------------------------------------------------- API


def compiled(text: str, item_types: ItemTypes) -> pc.Expression:
    """The predicate as a pyarrow expression over the item columns (true, false or null
    per row); ``ValueError`` naming the problem (an unsupported construct, an unknown
    column with the available ones, a type clash naming the column and the literal)."""
    return _translated(text, _types_key(item_types)).expression


def passing(table: pa.Table, text: str, item_types: ItemTypes) -> np.ndarray:
    """Bool mask (one value per row of ``table``): the rows where the predicate is TRUE;
    null and false both fail, as in a SQL WHERE clause."""
    types = _types_key(item_types)
    translation = _translated(text, types)
    inputs = _input_table(table, translation.columns, dict(types))
    plan = acero.Declaration.from_sequence([
        acero.Declaration("table_source", acero.TableSourceNodeOptions(inputs)),
        acero.Declaration("project", acero.ProjectNodeOptions([translation.expression],
                                                               ["passes"]))])
    result = plan.to_table(use_threads=False).column("passes").combine_chunks()
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def referenced_columns(text: str, item_types: ItemTypes) -> list[str]:
    """The item columns (stored names) the predicate reads, after checking it."""
    return list(_translated(text, _types_key(item_types)).columns)


# ---------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Translation:
    expression: pc.Expression
    columns: tuple[str, ...]


def _types_key(item_types: ItemTypes) -> tuple[tuple[str, str], ...]:
    key = tuple((str(name), str(kind)) for name, kind in item_types)
    for name, kind in key:
        if kind not in ITEM_TYPES:
            raise ValueError(f"item column {name!r} has the unsupported type {kind!r}")
    return key


@functools.lru_cache(maxsize=256)
def _translated(text: str, item_types: tuple[tuple[str, str], ...]) -> _Translation:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"filter {text!r}: give a boolean Spark SQL expression, such as "
                         "\"price < 20 AND category = 'shoes'\"")
    tokens = _tokens(text)
    source, strings = _with_string_placeholders(text, tokens)
    try:
        tree = sqlglot.parse_one(source, read="spark")
    except (ParseError, TokenError) as error:
        raise ValueError(f"filter {text!r} is not valid Spark SQL: "
                         f"{str(error).splitlines()[0]}") from None
    if any(token.token_type == TokenType.PLUS for token in tokens) and not tree.find(exp.Add):
        raise ValueError(f"filter {text!r}: unary + is not supported; supported: {SUPPORTED}")
    translator = _Translator(text, item_types, strings)
    return _Translation(translator.condition(tree, top=True), tuple(translator.columns))


def _input_table(table: pa.Table, columns: Sequence[str], types: dict[str, str]) -> pa.Table:
    """The columns the predicate reads, in their Arrow item types (a placeholder column
    when it reads none, so that constants still get one value per row)."""
    if not columns:
        return pa.table({"_": pa.nulls(table.num_rows)})
    arrays = {}
    for name in columns:
        if name not in table.column_names:
            raise ValueError(f"filter: the item table has no column {name!r}; it has "
                             f"{table.column_names}")
        column = table.column(name)
        wanted = ITEM_TYPES[types[name]]
        arrays[name] = column if column.type == wanted else column.cast(wanted)
    return pa.table(arrays)


# ------------------------------------------------------------------ string literals


def _tokens(text: str) -> list[Token]:
    try:
        return sqlglot.Dialect.get_or_raise("spark").tokenize(text)
    except (TokenError, ParseError) as error:
        raise ValueError(f"filter {text!r} is not valid Spark SQL: "
                         f"{str(error).splitlines()[0]}") from None


def _with_string_placeholders(text: str, tokens: list[Token]) -> tuple[str, list[str]]:
    """``text`` with each string literal replaced by ``'<n>'``, and the n-th literal's
    value as Spark reads it: the quote doubled inside stands for itself ('it''s'),
    adjacent literals are concatenated ('a' 'b'), backslash escapes as Spark's parser
    reads them."""
    pieces: list[str] = []
    strings: list[str] = []
    position = 0
    for run in _string_runs(tokens):
        pieces += [text[position:run[0].start], f"'{len(strings)}'"]
        strings.append("".join(_spark_string(text, raw) for raw in _spark_tokens(text, run)))
        position = run[-1].end + 1
    pieces.append(text[position:])
    return "".join(pieces), strings


def _string_runs(tokens: list[Token]) -> list[list[Token]]:
    """Consecutive string tokens: one literal for Spark."""
    runs: list[list[Token]] = []
    previous = None
    for token in tokens:
        if token.token_type in _STRING_TOKENS:
            if previous is not None and previous.token_type in _STRING_TOKENS:
                runs[-1].append(token)
            else:
                runs.append([token])
        previous = token
    return runs


def _spark_tokens(text: str, run: list[Token]) -> list[str]:
    """The raw Spark tokens of a run: a quote doubled inside a literal splits it into
    two adjacent tokens for sqlglot, one for Spark."""
    raws: list[str] = []
    end = -2
    for token in run:
        raw = text[token.start:token.end + 1]
        if raws and token.start == end + 1 and raws[-1][0] in "'\"" and raw[0] == raws[-1][0]:
            raws[-1] += raw
        else:
            raws.append(raw)
        end = token.end
    return raws


def _spark_string(text: str, raw: str) -> str:
    """The value of one Spark string literal token (as Spark's ``unescapeSQLString``)."""
    if not _SPARK_STRING.fullmatch(raw):
        raise ValueError(f"filter {text!r}: the string literal {raw} is not supported")
    try:
        value = raw[2:-1] if raw[0] in "rR" else _unescaped(raw[1:-1], raw[0])
    except ValueError as error:
        raise ValueError(f"filter {text!r}: in the string literal {raw}, {error}") from None
    try:  # Java strings are UTF-16: \uD83D\uDE00 is one character
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeError:
        raise ValueError(f"filter {text!r}: the string literal {raw} holds an unpaired "
                         "surrogate") from None


def _unescaped(body: str, quote: str) -> str:
    out, i, n = [], 0, len(body)
    while i < n:
        char = body[i]
        if char == quote:  # the doubled quote (the lexer admits no single one)
            out.append(quote)
            i += 2
        elif char != "\\" or i + 1 == n:
            out.append(char)
            i += 1
        else:
            code, width = _escape(body, i + 1)
            out.append(code)
            i += 1 + width
    return "".join(out)


def _escape(body: str, i: int) -> tuple[str, int]:
    """The character(s) a backslash escape starting at ``body[i]`` stands for, and how
    many characters after the backslash it uses."""
    char = body[i]
    if char == "u" and _is_hex(body[i + 1:i + 5], 4):
        return chr(int(body[i + 1:i + 5], 16)), 5
    if char == "U" and _is_hex(body[i + 1:i + 9], 8):
        code = int(body[i + 1:i + 9], 16)
        if code > 0x10FFFF:
            raise ValueError(f"\\U{body[i + 1:i + 9]} is beyond Unicode")
        return chr(code), 9
    octal = body[i:i + 3]
    if len(octal) == 3 and octal[0] in "01" and all(c in "01234567" for c in octal[1:]):
        return chr(int(octal, 8)), 3
    return _BACKSLASH_ESCAPES.get(char, char), 1


def _is_hex(digits: str, count: int) -> bool:
    return len(digits) == count and all(c in "0123456789abcdefABCDEF" for c in digits)


# ----------------------------------------------------------------------- operands


@dataclass(frozen=True)
class _Operand:
    """A typed value of the predicate: a column, a literal or a condition."""

    kind: str  # a Spark type; "decimal"/"double" for numeric literals; "void" for NULL
    label: str  # how messages name it
    expression: Any = None  # pc.Expression; None for exact numeric literals
    value: Any = None  # a literal's value: Fraction, float, str, bool, date or None
    literal: bool = False
    plain: bool = False  # a number Spark's parser reads as one literal (1.5, -1.5, not -(1.5))


def _condition(expression: Any, label: str) -> _Operand:
    return _Operand("boolean", label, expression)


class _Translator:
    """Translates one parsed predicate, collecting the columns it reads."""

    def __init__(self, text: str, item_types: tuple[tuple[str, str], ...],
                 strings: list[str]):
        self.text, self.strings = text, strings
        self.types = dict(item_types)
        self.by_folded_name: dict[str, list[str]] = {}
        for name, _ in item_types:
            self.by_folded_name.setdefault(_folded(name), []).append(name)
        self.columns: list[str] = []

    def fail(self, message: str) -> ValueError:
        return ValueError(f"filter {self.text!r}: {message}")

    def unsupported(self, node: exp.Expr) -> ValueError:
        return self.fail(f"{_construct(node)} ({self.snippet(node)}) is not supported; "
                         f"supported: {SUPPORTED}")

    # --- dispatch

    def condition(self, node: exp.Expr, top: bool = False) -> Any:
        """A boolean operand's expression; NULL counts as boolean except as the whole
        predicate (Spark refuses a NULL filter)."""
        operand = self.operand(node)
        if operand.kind == "void":
            if top:
                raise self.fail("NULL is not a boolean condition")
            return _NULL
        if operand.kind != "boolean":
            raise self.fail(f"{operand.label} is {operand.kind}, not a boolean condition")
        return operand.expression

    def operand(self, node: exp.Expr) -> _Operand:
        if isinstance(node, exp.Paren):
            return self.operand(node.this)
        if isinstance(node, exp.Column):
            return self.column(node)
        if isinstance(node, (exp.Literal, exp.Neg, exp.Boolean, exp.Null, exp.Cast)):
            return self.literal(node)
        if isinstance(node, (exp.And, exp.Or)):
            join = pc.and_kleene if isinstance(node, exp.And) else pc.or_kleene
            return _condition(join(self.condition(node.this), self.condition(node.expression)),
                              self.label(node))
        if isinstance(node, exp.Not):
            return _condition(pc.invert(self.condition(node.this)), self.label(node))
        if type(node) in _COMPARISONS:
            return _condition(self.comparison(_COMPARISONS[type(node)], node.this,
                                              node.expression), self.label(node))
        if isinstance(node, exp.NullSafeNEQ):
            return _condition(pc.invert(self.comparison("<=>", node.this, node.expression)),
                              self.label(node))
        if isinstance(node, exp.Between) and not node.args.get("symmetric"):
            return _condition(pc.and_kleene(
                self.comparison(">=", node.this, node.args["low"], between=True),
                self.comparison("<=", node.this, node.args["high"], between=True)),
                self.label(node))
        if isinstance(node, exp.In):
            return _condition(self.membership(node), self.label(node))
        if isinstance(node, exp.Is):
            return _condition(self.is_test(node), self.label(node))
        if isinstance(node, exp.Like):
            return _condition(self.like(node, "\\"), self.label(node))
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            return _condition(self.like(node.this, self.escape_char(node.expression)),
                              self.label(node))
        raise self.unsupported(node)

    def value(self, node: exp.Expr) -> _Operand:
        """An operand of a comparison, IN, BETWEEN, LIKE or IS: a condition there must be
        in parentheses, as Spark's grammar groups such chains differently from sqlglot's
        (``a = b < c`` is ``(a = b) < c`` for Spark)."""
        if isinstance(node, _CONDITIONS):
            raise self.fail(f"add parentheses around {self.snippet(node)}: a comparison, IN, "
                            "BETWEEN, LIKE or IS inside another one needs them")
        return self.operand(node)

    def label(self, node: exp.Expr) -> str:
        return f"the condition {self.snippet(node)}"

    def snippet(self, node: exp.Expr) -> str:
        """``node`` as SQL, its string literals shown with their values."""
        def restored(part: exp.Expr) -> exp.Expr:
            if isinstance(part, exp.Literal) and part.is_string and str(part.this).isdigit() \
                    and int(part.this) < len(self.strings):
                return exp.Literal.string(self.strings[int(part.this)])
            return part

        try:
            text = node.transform(restored).sql(dialect="spark")
        except Exception:  # a construct sqlglot cannot print back
            text = type(node).__name__
        return text if len(text) <= 80 else text[:77] + "..."

    # --- columns

    def column(self, node: exp.Column) -> _Operand:
        if node.table or not isinstance(node.this, exp.Identifier):
            raise self.unsupported(node)
        stored = self.resolved(node.name)
        if stored not in self.columns:
            self.columns.append(stored)
        return _Operand(self.types[stored], f"column {stored!r}", pc.field(stored))

    def resolved(self, name: str) -> str:
        """The stored column ``name`` refers to, names compared case-insensitively."""
        found = self.by_folded_name.get(_folded(name), [])
        if not found:
            available = ", ".join(repr(n) for n in self.types) or "none"
            raise self.fail(f"unknown column {name!r}; the item columns are: {available}")
        if len(found) > 1:
            raise self.fail(f"column {name!r} is ambiguous: the item columns "
                            f"{' and '.join(repr(n) for n in found)} differ only by case")
        return found[0]

    # --- literals

    def literal(self, node: exp.Expr) -> _Operand:
        label = f"the literal {self.snippet(node)}"
        if isinstance(node, exp.Null):
            return _Operand("void", label, _NULL, None, True)
        if isinstance(node, exp.Boolean):
            truth = bool(node.this)
            return _Operand("boolean", label, pc.scalar(truth), truth, True)
        if isinstance(node, exp.Literal) and node.is_string:
            text = self.string_value(node)
            return _Operand("string", label, pc.scalar(pa.scalar(text, pa.string())), text,
                            True)
        if isinstance(node, exp.Cast) and node.to.this == exp.DataType.Type.DATE and \
                isinstance(node.this, exp.Literal) and node.this.is_string:
            day = self.date_value(self.string_value(node.this))
            return _Operand("date", f"the literal DATE '{day.isoformat()}'",
                            pc.scalar(pa.scalar(day, pa.date32())), day, True)
        if isinstance(node, exp.Literal):
            return self.number(node.this, label)
        if isinstance(node, exp.Neg):
            inner = self.operand(node.this)
            if inner.literal and inner.kind in ("decimal", "double"):
                plain = isinstance(node.this, exp.Literal)
                return self.number_operand(inner.kind, -inner.value, label, plain)
            raise self.unsupported(node)
        raise self.unsupported(node)

    def string_value(self, node: exp.Literal) -> str:
        index = str(node.this)
        if not index.isdigit() or int(index) >= len(self.strings):
            raise self.unsupported(node)
        return self.strings[int(index)]

    def number(self, text: str, label: str) -> _Operand:
        """A numeric literal as Spark types it: exact (int, bigint, decimal) unless it has
        an exponent (double)."""
        if not _NUMBER.fullmatch(text):
            raise self.fail(f"the number {text} is not supported")
        if "e" in text.lower():
            value = float(text)
            if not math.isfinite(value):
                raise self.fail(f"the number {text} is out of the range of double")
            return self.number_operand("double", value, label, True)
        decimal = Decimal(text)
        digits, exponent = len(decimal.as_tuple().digits), int(decimal.as_tuple().exponent)
        if max(digits, -exponent) > MAX_DECIMAL_DIGITS:
            raise self.fail(f"the number {text} has more than {MAX_DECIMAL_DIGITS} digits; "
                            "write it with an exponent (1.5e40) to make it a double")
        return self.number_operand("decimal", Fraction(decimal), label, True)

    @staticmethod
    def number_operand(kind: str, value: Any, label: str, plain: bool) -> _Operand:
        expression = pc.scalar(float(value)) if kind == "double" else None
        return _Operand(kind, label, expression, value, True, plain)

    def date_value(self, text: str) -> datetime.date:
        match = _DATE.fullmatch(text)
        try:
            if match:
                return datetime.date(*(int(part) for part in match.groups()))
        except ValueError:
            pass
        raise self.fail(f"{text!r} is not a date; write dates as 'yyyy-mm-dd'")

    # --- comparisons

    def comparison(self, op: str, left_node: exp.Expr, right_node: exp.Expr,
                   between: bool = False) -> Any:
        left, right = self.value(left_node), self.value(right_node)
        if left.literal and right.literal:
            raise self.fail(f"{op} compares two literals ({left.label}, {right.label}); "
                            "compare a column")
        if left.literal:
            left, right, op = right, left, _MIRRORED[op]
        if op == "<=>":
            return pc.coalesce(self.compared("=", left, right),
                               pc.and_kleene(pc.is_null(left.expression), _is_null(right)))
        if not between and _beyond_long(op, left, right):
            # Spark's analyzer turns these into constants, whatever the column holds
            return pc.scalar((right.value > INT64_MAX) == (op in ("<", "<=")))
        return self.compared(op, left, right)

    def compared(self, op: str, left: _Operand, right: _Operand) -> Any:
        """``left op right`` in Spark's common type of the two (left is not a literal)."""
        if right.kind == "void":
            return _NULL
        domain = self.domain(left, [right])
        if domain == "exact" and right.literal:
            return _integral_vs_exact(op, left.expression.cast(pa.int64()), right.value)
        a, b = self.in_domain(domain, left), self.in_domain(domain, right)
        if domain in ("float", "double"):
            return _floating_comparison(op, a, b)
        return _PLAIN[op](a, b)

    def domain(self, value: _Operand, others: list[_Operand]) -> str:
        """The type Spark (ANSI) compares ``value`` with ``others`` in: "exact"
        (integers and decimals), "float", "double", or the shared non-numeric type."""
        kinds = {value.kind}
        for other in others:
            if not _comparable(value, other):
                raise self.clash(value, other)
            kinds.add(other.kind)
        if value.kind not in NUMERIC:
            return value.kind
        if "double" in kinds or ("float" in kinds and kinds != {"float"}):
            return "double"  # ANSI: an integer or decimal with a float widens to double
        return "float" if kinds == {"float"} else "exact"

    def clash(self, value: _Operand, other: _Operand) -> ValueError:
        if not other.literal:
            return self.fail(f"{value.label} ({value.kind}) and {other.label} ({other.kind}) "
                             "have types that cannot be compared")
        wanted = {"string": "a string literal", "boolean": "TRUE or FALSE",
                  "date": "a DATE 'yyyy-mm-dd' literal or a 'yyyy-mm-dd' string"}
        return self.fail(f"{value.label} is {value.kind}; compare it with "
                         f"{wanted.get(value.kind, 'a numeric literal')}, not {other.label}")

    def in_domain(self, domain: str, operand: _Operand) -> Any:
        if domain == "double":
            if operand.literal:
                return pc.scalar(float(operand.value))
            return operand.expression.cast(pa.float64(), safe=False)
        if domain == "exact":
            return operand.expression.cast(pa.int64())
        if domain == "date" and operand.literal and operand.kind == "string":
            return pc.scalar(pa.scalar(self.date_value(operand.value), pa.date32()))
        return operand.expression

    # --- IN, IS, LIKE

    def membership(self, node: exp.In) -> Any:
        """``x IN (...)``: true when found, else null if the list holds NULL (or x is
        null), else false."""
        if any(node.args.get(arg) for arg in ("query", "unnest", "field")) or \
                not node.expressions:
            raise self.unsupported(node)
        value = self.value(node.this)
        if value.literal:
            raise self.fail(f"IN needs a column on its left, not {value.label}")
        items = [self.value(item) for item in node.expressions]
        for item in items:
            if not item.literal:
                raise self.fail(f"IN lists literals only; {item.label} is not a literal")
        present = [item for item in items if item.kind != "void"]
        if not present:
            return _NULL
        domain = self.domain(value, present)
        expression, value_set = self.member_values(domain, value, present)
        found = pc.is_in(expression, value_set=value_set, skip_nulls=True)
        if len(present) < len(items):
            return pc.if_else(found, pc.scalar(True), _NULL)
        return pc.if_else(pc.is_null(value.expression), _NULL, found)

    def member_values(self, domain: str, value: _Operand,
                      items: list[_Operand]) -> tuple[Any, pa.Array]:
        """The value and the list in the comparison type, as ``is_in`` takes them."""
        if domain == "exact":
            whole = sorted({int(item.value) for item in items if item.value.denominator == 1
                            and INT64_MIN <= item.value <= INT64_MAX})
            return value.expression.cast(pa.int64()), pa.array(whole, pa.int64())
        if domain == "double":  # + 0.0 turns -0.0 into 0.0: hashing tells them apart
            doubles = sorted({float(item.value) + 0.0 for item in items})
            expression = pc.add(value.expression.cast(pa.float64(), safe=False),
                                pc.scalar(0.0))
            return expression, pa.array(doubles, pa.float64())
        if domain == "date":
            dates = [item.value if item.kind == "date" else self.date_value(item.value)
                     for item in items]
            return value.expression, pa.array(dates, pa.date32())
        return value.expression, pa.array([item.value for item in items], ITEM_TYPES[domain])

    def is_test(self, node: exp.Is) -> Any:
        value = self.value(node.this)
        if isinstance(node.expression, exp.Null):
            return _is_null(value)
        if isinstance(node.expression, exp.Boolean):
            if value.kind not in ("boolean", "void"):
                raise self.fail(f"IS TRUE/FALSE needs a boolean, not {value.label} "
                                f"({value.kind})")
            if value.literal:
                return pc.scalar(value.value is bool(node.expression.this))
            return pc.coalesce(pc.equal(value.expression, pc.scalar(bool(node.expression.this))),
                               pc.scalar(False))
        raise self.unsupported(node)

    def like(self, node: exp.Like, escape: str) -> Any:
        value, pattern = self.value(node.this), self.value(node.expression)
        if value.literal or value.kind != "string":
            raise self.fail(f"LIKE needs a string column on its left, not {value.label} "
                            f"({value.kind})")
        if pattern.kind == "void":
            return _NULL
        if not (pattern.literal and pattern.kind == "string"):
            raise self.fail(f"LIKE needs a string literal pattern, not {pattern.label}")
        regex = self.like_regex(pattern.value, escape)
        matched = pc.match_substring_regex(value.expression, pattern=regex)
        return pc.invert(matched) if node.args.get("negate") else matched

    def escape_char(self, node: exp.Expr) -> str:
        escape = self.value(node)
        if not (escape.literal and escape.kind == "string" and len(escape.value) == 1
                and ord(escape.value) <= 0xFFFF):
            raise self.fail(f"ESCAPE needs a one-character string, not {escape.label}")
        return escape.value

    def like_regex(self, pattern: str, escape: str) -> str:
        """An RE2 regex matching what Spark's LIKE ``pattern`` matches: % any text, _ any
        one character, the escape character before %, _ or itself for that character."""
        parts, i = [r"(?s)\A"], 0
        while i < len(pattern):
            char = pattern[i]
            if char == escape:
                if i + 1 == len(pattern):
                    raise self.fail(f"the LIKE pattern {pattern!r} ends with the escape "
                                    f"character {escape!r}")
                char = pattern[i + 1]
                if char not in ("%", "_", escape):
                    raise self.fail(f"in the LIKE pattern {pattern!r} the escape character "
                                    f"{escape!r} may only precede %, _ or itself, not {char!r}")
                parts.append(_regex_literal(char))
                i += 2
                continue
            parts.append(".*" if char == "%" else "." if char == "_" else _regex_literal(char))
            i += 1
        parts.append(r"\z")
        return "".join(parts)


# ------------------------------------------------------------------ comparisons


def _comparable(value: _Operand, other: _Operand) -> bool:
    if value.kind in NUMERIC:
        return other.kind in NUMERIC
    if value.kind == "date" and other.kind == "string" and other.literal:
        return True  # Spark casts the string to a date
    return other.kind == value.kind


def _beyond_long(op: str, value: _Operand, number: _Operand) -> bool:
    """An integral column ordered against a decimal literal out of the long range: Spark
    answers true or false for every row, null ones included (its DecimalPrecision rule)."""
    return op in ("<", "<=", ">", ">=") and value.kind in INTEGRAL and number.plain and \
        number.kind == "decimal" and not INT64_MIN <= number.value <= INT64_MAX


def _is_null(operand: _Operand) -> Any:
    if operand.literal:
        return pc.scalar(operand.kind == "void")
    return pc.is_null(operand.expression)


def _unless_null(value: Any, result: bool) -> Any:
    """``result`` where ``value`` is not null, null where it is."""
    return pc.if_else(pc.is_null(value), _NULL, pc.scalar(result))


def _integral_vs_exact(op: str, value: Any, bound: Fraction) -> Any:
    """An int64 column against an exact number, compared exactly (as Spark does, in a
    decimal wide enough for both)."""
    if op in ("=", "<>"):
        if bound.denominator != 1:
            return _unless_null(value, op == "<>")
        return _integral_vs_integer(op, value, int(bound))
    rounded = math.ceil(bound) if op in ("<", ">=") else math.floor(bound)
    return _integral_vs_integer(op, value, rounded)


def _integral_vs_integer(op: str, value: Any, bound: int) -> Any:
    if bound > INT64_MAX:
        return _unless_null(value, op in ("<", "<=", "<>"))
    if bound < INT64_MIN:
        return _unless_null(value, op in (">", ">=", "<>"))
    return _PLAIN[op](value, pc.scalar(pa.scalar(bound, pa.int64())))


def _floating_comparison(op: str, a: Any, b: Any) -> Any:
    """Spark's order of floating-point values: NaN equals NaN and is above all others."""
    if op == "=":
        return _nan_equal(a, b)
    if op == "<>":
        return pc.invert(_nan_equal(a, b))
    if op in (">", ">="):
        a, b = b, a
    if op in ("<", ">"):
        return _nan_less(a, b)
    return pc.or_kleene(_nan_less(a, b), _nan_equal(a, b))


def _nan_equal(a: Any, b: Any) -> Any:
    return pc.or_kleene(pc.equal(a, b), pc.and_kleene(pc.is_nan(a), pc.is_nan(b)))


def _nan_less(a: Any, b: Any) -> Any:
    return pc.or_kleene(pc.less(a, b), pc.and_kleene(pc.invert(pc.is_nan(a)), pc.is_nan(b)))


# ------------------------------------------------------------------------ helpers


def _folded(name: str) -> str:
    """``name`` for a case-insensitive comparison, char by char as Java's
    ``equalsIgnoreCase`` (no ß -> SS expansion)."""
    folded = []
    for char in name:
        upper = char.upper()
        folded.append(upper.lower() if len(upper) == 1 and len(upper.lower()) == 1 else char)
    return "".join(folded)


def _regex_literal(char: str) -> str:
    if char.isascii() and char.isalnum():
        return char
    return f"\\x{{{ord(char):x}}}"


def _construct(node: exp.Expr) -> str:
    """A name for an unsupported construct."""
    if isinstance(node, (exp.Query, exp.Subquery, exp.Exists)) or node.args.get("query"):
        return "a subquery"
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.IntDiv, exp.Neg)):
        return "arithmetic"
    if isinstance(node, exp.DPipe):
        return "string concatenation"
    if isinstance(node, exp.Block):
        return "more than one expression"
    if isinstance(node, exp.Column):
        return "a qualified column name"
    if isinstance(node, exp.Cast):
        return "a cast"
    if isinstance(node, exp.Func):
        return "a function call"
    return type(node).__name__
