"""The Spark session of a command (from --master, --conf and --remote) and logging setup."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from contextlib import contextmanager

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Spark's own INFO logging is very chatty; keep the JVM one step quieter.
JVM_LOG_LEVELS = {"DEBUG": "INFO", "INFO": "WARN", "WARNING": "WARN", "ERROR": "ERROR",
                  "CRITICAL": "FATAL"}
FILE_STREAM_SINK_LOGGER = "org.apache.spark.sql.execution.streaming.sinks.FileStreamSink"
_CONF_LINE = re.compile(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$")


def configure_logging(level: str) -> None:
    """Python logging to stderr at ``level`` (one of :data:`LOG_LEVELS`)."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # py4j reports every connection at INFO
        logging.getLogger("py4j").setLevel(logging.WARNING)


def read_conf_file(path: str) -> dict[str, str]:
    """Settings from a spark-defaults style file.

    Parameters
    ----------
    path : str
        File of ``key=value`` or ``key value`` lines; blank lines and lines
        starting with ``#`` or ``!`` are ignored.

    Returns
    -------
    dict
        Setting name to value, in file order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a line has a key but no value.
    """
    settings = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith(("#", "!")):
                continue
            match = _CONF_LINE.match(line)
            if match is None:
                raise ValueError(f"{path}:{number}: expected 'key=value' or 'key value', "
                                 f"got {line!r}")
            settings[match.group(1)] = match.group(2).strip()
    return settings


def _master_configured(settings: dict[str, str]) -> bool:
    """True if spark-submit or the environment already chose a master."""
    if "spark.master" in settings or os.environ.get("MASTER"):
        return True
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit
        return True
    if "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        return True
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(
        os.environ.get("SPARK_HOME", ""), "conf")
    defaults = os.path.join(conf_dir, "spark-defaults.conf")
    return os.path.isfile(defaults) and "spark.master" in read_conf_file(defaults)


def session_settings(args: argparse.Namespace) -> dict[str, str]:
    """SparkSession settings for a subcommand: defaults, ``--conf`` files, ``--master``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``command``, ``master`` and ``conf``.

    Returns
    -------
    dict
        Settings for ``SparkSession.builder.config``.
    """
    settings = {"spark.ui.showConsoleProgress": "false"}
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):  # spark-submit names the app itself
        settings["spark.app.name"] = f"sparkann-{args.command}"
    for path in args.conf:
        settings.update(read_conf_file(path))
    if args.master:
        settings["spark.master"] = args.master
    elif not _master_configured(settings):
        settings["spark.master"] = "local[*]"
    return settings


@contextmanager
def spark_session(args: argparse.Namespace):
    """A SparkSession for one command; stopped afterwards if this call created it.

    ``--remote`` (or ``$SPARK_REMOTE``) connects to a Spark Connect server,
    where only the ``--conf`` files' settings apply; otherwise a classic
    session is created with :func:`session_settings`.
    """
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()
    remote = getattr(args, "remote", None) or os.environ.get("SPARK_REMOTE")
    builder = SparkSession.builder
    if remote:  # Spark Connect: only the --conf files' settings apply
        builder = builder.remote(remote)
        for path in args.conf:
            for key, value in read_conf_file(path).items():
                builder = builder.config(key, value)
    else:
        for key, value in session_settings(args).items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not remote:
        spark.sparkContext.setLogLevel(JVM_LOG_LEVELS[args.log_level])
    if args.log_level != "DEBUG" and not remote:
        _quiet_missing_path_warnings(spark)
    try:
        yield spark
    finally:
        if existing is None:
            spark.stop()


def _quiet_missing_path_warnings(spark) -> None:
    """Hide the stack trace Spark logs at WARN for each probe of a missing path.

    The CLI and the index storage check paths that often do not exist yet.
    """
    from py4j.protocol import Py4JError

    try:
        jvm = spark.sparkContext._jvm
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
            FILE_STREAM_SINK_LOGGER, jvm.org.apache.logging.log4j.Level.ERROR)
    except (AttributeError, TypeError, NotImplementedError, Py4JError) as err:
        # no JVM access (e.g. Spark Connect) or another logging backend
        log.debug("could not quiet %s: %s", FILE_STREAM_SINK_LOGGER, err)
