"""How the command line reports problems: usage errors, user errors, one-line messages."""

from __future__ import annotations

from contextlib import contextmanager


class UsageError(Exception):
    """Bad command-line arguments (reported like a user error, exit code 2)."""


def one_line(error) -> str:
    """``error``'s message with all whitespace runs (newlines too) collapsed to one space."""
    return " ".join(str(error).split())


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions reported as one ``error: ...`` line with exit code 2, not a traceback."""
    from ..storage import IndexFormatError

    return (ValueError, TypeError, FileExistsError, FileNotFoundError, IndexFormatError)


@contextmanager
def spark_path_errors():
    """Turn Spark's missing / existing path errors into FileNotFound / FileExists."""
    from pyspark.errors import AnalysisException

    try:
        yield
    except AnalysisException as err:
        condition = err.getCondition() or ""
        message = one_line(err)
        if condition.startswith("PATH_NOT_FOUND"):
            raise FileNotFoundError(message) from err
        if condition.startswith("PATH_ALREADY_EXISTS"):
            raise FileExistsError(message) from err
        raise
