"""Filter predicates over item columns: Spark SQL text evaluated with pyarrow.

Each construct is checked on its own without Spark (nulls, NaN, exact numeric
comparisons, names, string literals, errors), then a seeded set of random predicates
over a random item table is evaluated by ``filters.passing`` and by Spark itself, in
one Spark job, and the rows each selects must be the same.
"""

from __future__ import annotations

import datetime
import random

import numpy as np
import pyarrow as pa
import pytest

from sparkann import filters

# ------------------------------------------------------------- a small item table

TYPES = [("active", "boolean"), ("tiny", "tinyint"), ("small", "smallint"), ("num", "int"),
         ("big", "bigint"), ("ratio", "float"), ("score", "double"),
         ("category", "string"), ("day", "date")]
NAN, INF = float("nan"), float("inf")
D = datetime.date


def small_table() -> pa.Table:
    """Six rows; row 2 is null everywhere."""
    return pa.table({
        "active": pa.array([True, False, None, True, False, True]),
        "tiny": pa.array([1, -1, None, 127, 0, 3], pa.int8()),
        "small": pa.array([1, 2, None, -32768, 0, 3], pa.int16()),
        "num": pa.array([1, 2, None, -3, 0, 2147483647], pa.int32()),
        "big": pa.array([1, 2, None, 2**53 + 1, -(2**63), 2**63 - 1], pa.int64()),
        "ratio": pa.array([1.1, NAN, None, -0.0, INF, 16777216.0], pa.float32()),
        "score": pa.array([1.1, NAN, None, -0.0, -INF, 0.5], pa.float64()),
        "category": pa.array(["shoes", "it's", None, "a%b", "x\ny", ""]),
        "day": pa.array([D(2024, 1, 5), D(2024, 1, 6), None, D(1970, 1, 1), D(2024, 2, 1),
                         D(2024, 1, 5)], pa.date32()),
    })


def rows(text: str, table: pa.Table | None = None, types=TYPES) -> list[int]:
    table = small_table() if table is None else table
    mask = filters.passing(table, text, types)
    assert mask.dtype == np.bool_ and mask.shape == (table.num_rows,)
    return np.flatnonzero(mask).tolist()


# --------------------------------------------------------------------- constructs

@pytest.mark.parametrize("text, expected", [
    ("num = 2", [1]),
    ("num == 2", [1]),
    ("num <> 2", [0, 3, 4, 5]),
    ("num != 2", [0, 3, 4, 5]),
    ("num < 1", [3, 4]),
    ("num <= 1", [0, 3, 4]),
    ("num > 1", [1, 5]),
    ("num >= 1", [0, 1, 5]),
    ("1 < num", [1, 5]),  # a literal on the left
    ("num <=> 2", [1]),
    ("num <=> NULL", [2]),
    ("NULL <=> num", [2]),
    ("num IS NOT DISTINCT FROM 2", [1]),
    ("num IS DISTINCT FROM 2", [0, 2, 3, 4, 5]),
    ("num = NULL", []),
    ("num <> NULL", []),
    ("num IN (1, 2)", [0, 1]),
    ("num NOT IN (1, 2)", [3, 4, 5]),
    ("num BETWEEN 0 AND 2", [0, 1, 4]),
    ("num NOT BETWEEN 0 AND 2", [3, 5]),
    ("num IS NULL", [2]),
    ("num IS NOT NULL", [0, 1, 3, 4, 5]),
    ("tiny > small", [3]),
    ("tiny = small", [0, 4, 5]),
    ("category = 'shoes'", [0]),
    ("category < 'b'", [3, 5]),
    ("category IN ('shoes', '')", [0, 5]),
    ("category BETWEEN 'a' AND 't'", [1, 3, 0]),
    ("day = DATE '2024-01-05'", [0, 5]),
    ("day = '2024-01-05'", [0, 5]),  # Spark casts the string to a date
    ("day < '2024-1-6'", [0, 3, 5]),
    ("day IN ('2024-01-06', DATE '1970-01-01')", [1, 3]),
    ("day BETWEEN '2024-01-01' AND DATE '2024-01-31'", [0, 1, 5]),
    ("active", [0, 3, 5]),
    ("NOT active", [1, 4]),
    ("active = TRUE", [0, 3, 5]),
    ("active = FALSE", [1, 4]),
    ("active IS TRUE", [0, 3, 5]),
    ("active IS NOT TRUE", [1, 2, 4]),
    ("active IS FALSE", [1, 4]),
    ("active IS NOT FALSE", [0, 2, 3, 5]),
    ("active IN (FALSE)", [1, 4]),
    ("active AND num > 1", [5]),
    ("active OR num = 2", [0, 1, 3, 5]),
    ("(num > 1) = active", [4, 5]),  # a condition is a boolean operand too
    ("TRUE", [0, 1, 2, 3, 4, 5]),
    ("FALSE", []),
    ("NOT (num = 1 OR num = 2) AND (category LIKE '%' OR active)", [3, 4, 5]),
])
def test_each_construct_selects_the_rows_spark_selects(text, expected):
    assert rows(text) == sorted(expected)


@pytest.mark.parametrize("text, expected", [
    # unknown AND false is false, unknown OR true is true; NOT unknown is unknown
    ("(num = NULL) AND FALSE", []),
    ("NOT ((num = NULL) AND FALSE)", [0, 1, 2, 3, 4, 5]),
    ("(num = NULL) OR TRUE", [0, 1, 2, 3, 4, 5]),
    ("NOT (num = NULL)", []),
    ("NOT (num > 1)", [0, 3, 4]),  # row 2 (null) passes neither num > 1 nor its negation
    ("NOT NULL", []),
    ("active AND NULL", []),
    ("active OR NULL", [0, 3, 5]),
    ("NOT (active AND NULL)", [1, 4]),
    # x IN (..., NULL) is true when found, else unknown; so NOT IN with a NULL never passes
    ("num IN (1, NULL)", [0]),
    ("num NOT IN (1, NULL)", []),
    ("NOT ((num IN (1, NULL)) IS NULL)", [0]),
    ("num IN (NULL)", []),
    ("(num IN (1, NULL)) IS NULL", [1, 2, 3, 4, 5]),
    ("num BETWEEN NULL AND 1", []),
    ("num NOT BETWEEN 1 AND NULL", [3, 4]),  # num < 1 decides without the unknown bound
    ("category LIKE NULL", []),
])
def test_three_valued_logic(text, expected):
    assert rows(text) == sorted(expected)


@pytest.mark.parametrize("text, expected", [
    # NaN equals NaN and is greater than every other value, infinity included
    ("ratio > 1e300", [1, 4]),
    ("score > 1e300", [1]),
    ("score = score", [0, 1, 3, 4, 5]),
    ("ratio >= ratio", [0, 1, 3, 4, 5]),
    ("score < score", []),
    ("ratio > score", [0, 4, 5]),  # in double: 1.1f > 1.1, NaN = NaN, -0.0 = -0.0
    ("score IN (0, 1.1)", [0, 3]),  # -0.0 = 0
    ("ratio IN (0)", [3]),
    ("ratio = 0", [3]),
    ("score <> 1.1", [1, 3, 4, 5]),  # NaN <> 1.1
    ("score BETWEEN -1 AND 1e308", [0, 3, 5]),
    ("NOT (score < 2)", [1]),
])
def test_nan_is_equal_to_itself_and_above_all_numbers(text, expected):
    assert rows(text) == sorted(expected)


@pytest.mark.parametrize("text, expected", [
    # integers against decimals compare exactly, not through doubles
    ("num < 1.5", [0, 3, 4]),
    ("num = 1.0", [0]),
    ("num = 1.5", []),
    ("num <> 1.5", [0, 1, 3, 4, 5]),
    ("num IN (1, 2.5)", [0]),
    ("num > 2147483646.5", [5]),
    ("big = 9007199254740993", [3]),  # 2**53 + 1: a double cannot hold it
    ("big > 9007199254740992.5", [3, 5]),
    ("big > 9223372036854775807", []),
    ("big >= -9223372036854775808", [0, 1, 3, 4, 5]),
    ("big IN (99999999999999999999, -9223372036854775808)", [4]),
    ("big = 99999999999999999999", []),
    ("big <> 99999999999999999999", [0, 1, 3, 4, 5]),
    # ordered against a decimal literal beyond the long range, an integer column gives a
    # constant in Spark, null rows included; not so in BETWEEN or once the literal is an
    # expression (-(...))
    ("big < 99999999999999999999", [0, 1, 2, 3, 4, 5]),
    ("big < 9223372036854775807.5", [0, 1, 2, 3, 4, 5]),
    ("99999999999999999999 > tiny", [0, 1, 2, 3, 4, 5]),
    ("num > -99999999999999999999", [0, 1, 2, 3, 4, 5]),
    ("num > - 99999999999999999999", [0, 1, 2, 3, 4, 5]),
    ("NOT (small >= 99999999999999999999)", [0, 1, 2, 3, 4, 5]),
    ("big > -(99999999999999999999)", [0, 1, 3, 4, 5]),
    ("big BETWEEN -1 AND 99999999999999999999", [0, 1, 3, 5]),
    ("tiny > 126.5", [3]),
    ("tiny IN (1000, 127)", [3]),
    # with a double literal (an exponent) Spark compares in double: 2**53 + 1 rounds
    ("big = 9007199254740992e0", [3]),
    ("big = 9.223372036854775807e18", [5]),
    # a float against a decimal or an integer compares in double (ANSI): 1.1f is not 1.1
    ("ratio = 1.1", []),
    ("ratio > 1.1", [0, 1, 4, 5]),
    ("ratio = 16777217", []),
    ("ratio IN (16777216, 1.1)", [5]),
    ("score = 1.1", [0]),
    ("ratio < 0.5", [3]),
    ("num > -0.5e0", [0, 1, 4, 5]),
    ("num = - 3", [3]),
    ("num = -(-2)", [1]),
    ("score = .5", [5]),
    ("num = 1.", [0]),
])
def test_numbers_compare_in_sparks_common_type(text, expected):
    assert rows(text) == sorted(expected)


def test_column_names_are_case_insensitive_and_resolve_to_the_stored_name():
    types = [("Category", "string"), ("Price", "double")]
    table = pa.table({"Category": ["a", "b"], "Price": [1.0, 2.0]})
    for text in ("category = 'a'", "CATEGORY = 'a'", "`category` = 'a'", "`CaTeGoRy` = 'a'"):
        assert rows(text, table, types) == [0]
    assert filters.referenced_columns("price > 1 AND CATEGORY = 'b' OR PRICE < 0", types) == \
        ["Price", "Category"]
    assert filters.referenced_columns("TRUE", types) == []


def test_names_that_differ_only_by_case_are_ambiguous():
    types = [("tag", "string"), ("TAG", "string"), ("other", "int")]
    with pytest.raises(ValueError, match="ambiguous.*'tag' and 'TAG'"):
        filters.compiled("tag = 'a'", types)
    assert filters.referenced_columns("other = 1", types) == ["other"]


def test_backquoted_names_may_hold_any_character():
    types = [("my col", "int"), ("a`b", "int")]
    table = pa.table({"my col": pa.array([1, 2], pa.int32()), "a`b": pa.array([2, 2], pa.int32())})
    assert rows("`my col` = `a``b`", table, types) == [1]


@pytest.mark.parametrize("literal, value", [
    ("'it''s'", "it's"),  # a doubled quote stands for itself
    (r"'it\'s'", "it's"),
    ('"it""s"', 'it"s'),
    ("''''", "'"),
    ("'a' 'b'", "ab"),  # adjacent literals are concatenated
    ("'a' /* note */ \"b\"", "ab"),
    (r"'a\\b'", "a\\b"),
    (r"'a\%b'", "a\\%b"),  # Spark keeps the backslash before % and _
    (r"'a\_b'", "a\\_b"),
    (r"'\101\u0042'", "AB"),
    (r"'\q'", "q"),
    (r"'x\ny'", "x\ny"),
    (r"'\uD83D\uDE00'", "\U0001F600"),  # a UTF-16 surrogate pair is one character
    (r"r'a\nb'", "a\\nb"),
])
def test_string_literals_read_as_spark_reads_them(literal, value):
    table = pa.table({"s": [value, value + "x"]})
    assert rows(f"s = {literal}", table, [("s", "string")]) == [0]


@pytest.mark.parametrize("pattern, expected", [
    ("'%'", [0, 1, 3, 4, 5]),
    ("'_'", []),
    ("''", [5]),
    ("'sh%'", [0]),
    ("'%s'", [0, 1]),
    ("'_t''s'", [1]),
    ("'x_y'", [4]),  # _ and % match a line break too
    ("'x%'", [4]),
    ("'a%b'", [3]),
    (r"'a\\%b'", [3]),  # an escaped % matches only %
    (r"'a\%b'", [3]),
    (r"'%\\%%'", [3]),
    ("'a!%b' ESCAPE '!'", [3]),
    ("'%!%%' ESCAPE '!'", [3]),
    ("'SHOES'", []),  # LIKE is case-sensitive
])
def test_like_matches_as_spark_does(pattern, expected):
    assert rows(f"category LIKE {pattern}") == expected
    assert rows(f"category NOT LIKE {pattern}") == [r for r in [0, 1, 3, 4, 5]
                                                   if r not in expected]


def test_like_with_regex_characters_and_unicode():
    table = pa.table({"s": ["a.b", "axb", "(x)*", "é+ü", "😀"]})
    types = [("s", "string")]
    assert rows("s LIKE 'a.b'", table, types) == [0]
    assert rows("s LIKE '(x)*'", table, types) == [2]
    assert rows("s LIKE '_+ü'", table, types) == [3]
    assert rows("s LIKE '_'", table, types) == [4]


# ------------------------------------------------------------------------ errors

@pytest.mark.parametrize("text, message", [
    ("category = 3", r"column 'category' is string; compare it with a string literal"),
    ("3 = category", r"column 'category' is string; compare it with a string literal"),
    ("num = '3'", r"column 'num' is int; compare it with a numeric literal"),
    ("num IN (1, '2')", r"column 'num' is int; compare it with a numeric literal"),
    ("active = 1", r"column 'active' is boolean; compare it with TRUE or FALSE"),
    ("day = 20240105", r"column 'day' is date; compare it with a DATE 'yyyy-mm-dd'"),
    ("category = DATE '2024-01-01'", r"column 'category' is string"),
    ("category = day", r"column 'category' \(string\) and column 'day' \(date\)"),
    ("day = '2024-13-01'", r"'2024-13-01' is not a date; write dates as 'yyyy-mm-dd'"),
    ("day = '5 Jan 2024'", r"not a date"),
    ("day IN ('2024-01-01', 'soon')", r"'soon' is not a date"),
    ("day = DATE '2024-02-30'", r"not a date"),
    ("price < 3", r"unknown column 'price'; the item columns are: 'active', 'tiny'"),
    ("t.num = 1", r"qualified column name \(t.num\) is not supported"),
    ("num + 1 > 2", r"arithmetic \(num \+ 1\) is not supported; supported: comparisons"),
    ("-num > 1", r"arithmetic"),
    ("upper(category) = 'A'", r"function call \(UPPER\(category\)\) is not supported"),
    ("num IN (SELECT 1)", r"subquery"),
    ("category || 'x' = 'ax'", r"string concatenation"),
    ("category RLIKE 'a.*'", r"is not supported"),
    ("category ILIKE 'a%'", r"is not supported"),
    ("num BETWEEN SYMMETRIC 2 AND 1", r"is not supported"),
    ("CAST(num AS STRING) = '1'", r"a cast .* is not supported"),
    ("num = 1L", r"is not supported"),
    ("num < +1", r"unary \+ is not supported"),
    ("num = tiny < 1", r"add parentheses around tiny < 1: a comparison, IN, BETWEEN"),
    ("num = 1 IN (TRUE)", r"add parentheses around 1 IN \(TRUE\)"),
    ("category = category LIKE 'a'", r"add parentheses around category LIKE 'a'"),
    ("num IS NULL IS NULL", r"add parentheses around num IS NULL"),
    ("active = NOT active", r"add parentheses around NOT active"),
    ("num", r"column 'num' is int, not a boolean condition"),
    ("category AND active", r"column 'category' is string, not a boolean condition"),
    ("NULL", r"NULL is not a boolean condition"),
    ("1 = 1", r"compares two literals"),
    ("num IN (tiny)", r"IN lists literals only"),
    ("num LIKE '1%'", r"LIKE needs a string column"),
    ("category LIKE category", r"LIKE needs a string literal pattern"),
    (r"category LIKE 'a\\b'", r"escape character '\\\\' may only precede %, _ or itself"),
    ("category LIKE 'a!' ESCAPE '!'", r"ends with the escape character"),
    ("category LIKE 'a' ESCAPE '!!'", r"ESCAPE needs a one-character string"),
    ("active IS TRUE AND num IS TRUE", r"IS TRUE/FALSE needs a boolean"),
    ("num = 1e309", r"out of the range of double"),
    ("num = 0.0000000000000000000000000000000000000001", r"more than 38 digits"),
    (r"category = '\uD83D'", r"unpaired surrogate"),
    (r"category = '\U00110000'", r"\\U00110000 is beyond Unicode"),
    ("num <", r"filter 'num <' is not valid Spark SQL"),
    ("num = 1; num = 2", r"is not supported"),
    ("", r"give a boolean Spark SQL expression"),
    ("   ", r"give a boolean Spark SQL expression"),
])
def test_unsupported_or_ill_typed_predicates_are_refused_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        filters.compiled(text, TYPES)
    with pytest.raises(ValueError, match=message):
        filters.passing(small_table(), text, TYPES)


def test_unknown_item_type_is_refused():
    with pytest.raises(ValueError, match="'when' has the unsupported type 'timestamp'"):
        filters.compiled("when IS NULL", [("when", "timestamp")])


# ---------------------------------------------------------------- the evaluation

def test_translation_is_cached_per_text_and_types():
    first = filters.compiled("num > 1", TYPES)
    assert filters.compiled("num > 1", [list(pair) for pair in TYPES]) is first
    assert filters.compiled("num > 1", TYPES[::-1]) is not first


def test_passing_takes_any_table_holding_the_columns():
    table = small_table()
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    assert chunked.column("num").num_chunks == 2
    assert rows("num >= 1 AND category <> ''", chunked) == [0, 1]
    reordered = table.select(["day", "num"]).append_column("extra", pa.array(range(6)))
    assert rows("num >= 1", reordered) == [0, 1, 5]
    assert rows("num >= 1", table.slice(0, 0)) == []
    assert rows("TRUE", table.slice(0, 4)) == [0, 1, 2, 3]
    as_large = table.set_column(7, "category", table.column("category").cast(pa.large_string()))
    assert rows("category = 'shoes'", as_large) == [0]
    with pytest.raises(ValueError, match="no column 'score'"):
        filters.passing(table.drop_columns(["score"]), "score > 1", TYPES)


def test_a_predicate_over_many_rows():
    count = 100_000
    values = np.arange(count)
    table = pa.table({"num": pa.array(values % 1000, pa.int32()),
                      "category": pa.array(np.where(values % 3 == 0, "a", "b"))})
    types = [("num", "int"), ("category", "string")]
    mask = filters.passing(table, "num < 10.5 AND category = 'a' OR num IN (500, NULL)", types)
    expected = ((values % 1000 <= 10) & (values % 3 == 0)) | (values % 1000 == 500)
    assert np.array_equal(mask, expected)


# ------------------------------------------------------------ against Spark itself

ROWS = 300
SPARK_TYPES = [("flag", "boolean"), ("tiny", "tinyint"), ("small", "smallint"),
               ("num", "int"), ("big", "bigint"), ("ratio", "float"), ("score", "double"),
               ("Label", "string"), ("day", "date")]
ARROW = {"boolean": pa.bool_(), "tinyint": pa.int8(), "smallint": pa.int16(),
         "int": pa.int32(), "bigint": pa.int64(), "float": pa.float32(),
         "double": pa.float64(), "string": pa.string(), "date": pa.date32()}
SMALL = list(range(-3, 4))
POOLS = {
    "flag": [True, False],
    "tiny": SMALL + [-128, 127],
    "small": SMALL + [-32768, 32767],
    "num": SMALL + [-(2**31), 2**31 - 1],
    "big": SMALL + [-(2**63), 2**63 - 1, 2**53, 2**53 + 1],
    "ratio": [-1.5, -0.0, 0.0, 0.5, 1.0, 1.1, 2.0, 3.0, 16777216.0, NAN, INF, -INF],
    "score": [-1.5, -0.0, 0.0, 0.5, 1.0, 1.1, 2.0, 3.0, 2.0**53, 2.0**63, NAN, INF, -INF],
    "Label": ["a", "b", "ab", "A", "", "it's", "a%b", "a_b", "a\\b", "é", "x\ny", "b ", "%"],
    "day": [D(2024, 1, d) for d in range(1, 6)] + [D(1970, 1, 1), D(2023, 12, 31)],
}
NUMERIC_COLUMNS = ["tiny", "small", "num", "big", "ratio", "score"]
NUMBERS = ["0", "1", "2", "3", "-1", "-3", "1.5", "-0.5", "1.0", "0.0", "-0.0", "1.1", "2.50",
           ".5", "1e0", "1.1e0", "-1.5E0", "-0e0", "3e0", "127.5", "128", "-129", "32768",
           "2147483648", "16777217", "9007199254740993", "9007199254740992.5",
           "9223372036854775807", "9223372036854775807.5", "-9223372036854775808",
           "99999999999999999999", "9.223372036854775807e18", "1e19", "1e300"]
STRINGS = ["'a'", "'b'", "'ab'", "'A'", "''", "'it''s'", r"'it\'s'", '"a"', "'a' 'b'",
           r"'a\\b'", "'é'", r"'x\ny'", "'%'", "'b '", "'a%b'", "'a_b'"]
DATES = ["DATE '2024-01-03'", "DATE '2024-1-2'", "'2024-01-04'", "'2024-1-5'",
         "DATE '1970-01-01'", "'2023-12-31'"]
PATTERNS = ["'a%'", "'%b'", "'a_b'", "'%'", "'_'", "''", r"'a\\%b'", r"'a\%b'", r"'a\_b'",
            "'a!%b' ESCAPE '!'", "'%!_%' ESCAPE '!'", "'x_y'", r"'%\\\\%'", "'A%'", "'_%'",
            "'%''%'"]
OPERATORS = ["=", "==", "<>", "!=", "<", "<=", ">", ">=", "<=>"]
EDGE_PREDICATES = [
    "big < 9223372036854775807.5", "big > 0.00000000000000000000000000000000001",
    "big BETWEEN 0 AND 99999999999999999999", "tiny >= -99999999999999999999.5",
    "big < -(99999999999999999999)", "num = 1 IS NULL", "NOT num <=> 1 IS TRUE",
    "big = 9007199254740993", "big = 9007199254740992e0", "big IN (1.5, 99999999999999999999)",
    "ratio = 1.1", "ratio IN (16777217, 1)", "ratio > score", "score IN (0, 1.1, NULL)",
    "NOT (score IN (-0e0))", "ratio BETWEEN -1 AND score", "tiny > 126.5",
    "label = 'it''s' OR LABEL LIKE 'x_y'", "flag IS NOT TRUE", "(num > 1) = flag",
    "day BETWEEN '2024-01-02' AND DATE '2024-01-04'", "flag <=> NULL",
    "NOT flag = TRUE", "NOT label LIKE 'a%' OR flag", "label IN ('a' 'b', \"it\"\"s\", 'a''b')",
    "label = 'a' /* note */ 'b' OR label LIKE 'it''%'", "label <=> label", "score <=> ratio",
]


def spark_table(seed: int) -> pa.Table:
    """ROWS rows: each column's values drawn from a small pool, about 15% nulls."""
    rng = random.Random(seed)
    columns = {"__row": pa.array(range(ROWS), pa.int64())}
    for name, kind in SPARK_TYPES:
        values = [None if rng.random() < 0.15 else rng.choice(POOLS[name])
                  for _ in range(ROWS)]
        columns[name] = pa.array(values, ARROW[kind])
    return pa.table(columns)


def column_ref(rng: random.Random, name: str) -> str:
    return rng.choice([name, name.upper(), name.lower(), f"`{name}`"])


def literal_list(rng: random.Random, pool: list[str]) -> str:
    items = rng.sample(pool, rng.randint(1, 4)) + (["NULL"] if rng.random() < 0.25 else [])
    rng.shuffle(items)
    return ", ".join(items)


def comparison(rng: random.Random, column: str, other: str) -> str:
    op = rng.choice(OPERATORS)
    return f"{column} {op} {other}" if rng.random() < 0.7 else f"{other} {op} {column}"


def numeric_atom(rng: random.Random) -> str:
    name = rng.choice(NUMERIC_COLUMNS)
    column = column_ref(rng, name)
    form = rng.randrange(6)
    if form == 0:
        return comparison(rng, column, rng.choice(NUMBERS + ["NULL"]))
    if form == 1:
        return comparison(rng, column, column_ref(rng, rng.choice(NUMERIC_COLUMNS)))
    if form == 2:
        return f"{column} {rng.choice(['IN', 'NOT IN'])} ({literal_list(rng, NUMBERS)})"
    if form == 3:
        low, high = sorted(rng.sample(NUMBERS, 2), key=float)
        return f"{column} {rng.choice(['BETWEEN', 'NOT BETWEEN'])} {low} AND {high}"
    if form == 4:
        return f"{column} IS {rng.choice(['', 'NOT '])}NULL"
    return comparison(rng, column, rng.choice(NUMBERS))


def string_atom(rng: random.Random) -> str:
    column = column_ref(rng, "Label")
    form = rng.randrange(5)
    if form == 0:
        return comparison(rng, column, rng.choice(STRINGS + ["NULL"]))
    if form == 1:
        return f"{column} {rng.choice(['IN', 'NOT IN'])} ({literal_list(rng, STRINGS)})"
    if form == 2:
        return f"{column} {rng.choice(['LIKE', 'NOT LIKE'])} {rng.choice(PATTERNS)}"
    if form == 3:
        low, high = rng.sample(STRINGS, 2)
        return f"{column} {rng.choice(['BETWEEN', 'NOT BETWEEN'])} {low} AND {high}"
    return f"{column} IS {rng.choice(['', 'NOT '])}NULL"


def date_atom(rng: random.Random) -> str:
    column = column_ref(rng, "day")
    form = rng.randrange(3)
    if form == 0:
        return comparison(rng, column, rng.choice(DATES))
    if form == 1:
        return f"{column} {rng.choice(['IN', 'NOT IN'])} ({literal_list(rng, DATES)})"
    low, high = rng.sample(DATES, 2)
    return f"{column} BETWEEN {low} AND {high}"


def boolean_atom(rng: random.Random) -> str:
    column = column_ref(rng, "flag")
    return rng.choice([column, f"NOT {column}", f"{column} = TRUE", f"{column} <> FALSE",
                       f"{column} IS TRUE", f"{column} IS NOT FALSE", f"{column} <=> NULL",
                       f"{column} IN (TRUE, NULL)", f"{column} IS NULL"])


ATOMS = [numeric_atom] * 5 + [string_atom] * 2 + [date_atom, boolean_atom]


def random_predicate(rng: random.Random, depth: int = 2) -> str:
    if depth == 0 or rng.random() < 0.35:
        return rng.choice(ATOMS)(rng)
    left, right = random_predicate(rng, depth - 1), random_predicate(rng, depth - 1)
    form = rng.randrange(4)
    if form == 0:
        return f"{left} AND {right}"
    if form == 1:
        return f"({left}) OR ({right})"
    if form == 2:
        return f"NOT ({left})"
    return f"({left} OR {right}) AND NOT {right}"


def test_random_predicates_select_the_rows_spark_selects(spark):
    assert spark.conf.get("spark.sql.ansi.enabled") == "true"
    assert spark.conf.get("spark.sql.caseSensitive") == "false"
    table = spark_table(seed=11)
    rng = random.Random(5)
    predicates = EDGE_PREDICATES + [random_predicate(rng) for _ in range(130)]
    ours = {text: filters.passing(table, text, SPARK_TYPES) for text in predicates}
    frame = spark.createDataFrame(table)
    selected = frame.selectExpr("__row", *[f"{text} AS p{k}"
                                           for k, text in enumerate(predicates)]).toArrow()
    order = np.argsort(selected.column("__row").to_numpy())
    assert np.array_equal(selected.column("__row").to_numpy()[order], np.arange(ROWS))
    for k, text in enumerate(predicates):
        column = selected.column(f"p{k}").combine_chunks().fill_null(False)
        theirs = np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)[order]
        differing = np.flatnonzero(theirs != ours[text])[:5].tolist()
        assert not differing, (f"{text!r}: rows {differing} differ (Spark "
                               f"{theirs[differing].tolist()}):\n"
                               f"{table.take(differing).drop_columns(['__row']).to_pylist()}")
    hits = [int(mask.sum()) for mask in ours.values()]
    assert sum(0 < h < ROWS for h in hits) > len(hits) // 2  # most predicates split the rows


def test_string_literals_match_spark(spark):
    literals = ["'it''s'", r"'it\'s'", "''''", '"a""b"', "'a' 'b'", "'a' /* c */ \"b\"",
                r"'a\\b'", r"'a\%b'", r"'a\_b'", r"'\101'", r"'\200'", r"'\08'",
                r"'\u0041'", r"'\u004'", r"'\U0001F600'", r"'\uD83D\uDE00'", r"'\q'",
                r"'\0'", r"'\Z'", r"'\t\n\r\b'", r"r'a\nb'", r"R'a\'", "'é'", r'"it\"s"']
    values = spark.sql("SELECT " + ", ".join(f"{text} AS l{k}" for k, text in
                                              enumerate(literals))).collect()[0]
    for k, text in enumerate(literals):
        table = pa.table({"s": [values[f"l{k}"]]})
        assert rows(f"s = {text}", table, [("s", "string")]) == [0], (text, values[f"l{k}"])
