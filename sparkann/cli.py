"""The ``sparkann`` command line: build, search, demo and convert.

Each subcommand parses its options and calls the library; the Spark session is
created here because the CLI is an application. ``jobs/*.py`` are thin
spark-submit entry points around :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from . import __version__
from .observe import job_label

log = logging.getLogger("sparkann.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Spark's own INFO logging is very chatty; keep the JVM one step quieter.
JVM_LOG_LEVELS = {"DEBUG": "INFO", "INFO": "WARN", "WARNING": "WARN", "ERROR": "ERROR",
                  "CRITICAL": "FATAL"}
WRITE_MODES = ("errorifexists", "overwrite")
FILE_STREAM_SINK_LOGGER = "org.apache.spark.sql.execution.streaming.sinks.FileStreamSink"
DEMO_MIN_RECALL = 0.9
DEMO_PARTITIONS = 8
CONVERT_CHUNK_BYTES = 64 << 20
_CONF_LINE = re.compile(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$")


class UsageError(Exception):
    """Bad command-line arguments (reported like a user error, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------
# Argument types and parsers
# --------------------------------------------------------------------------


def _int_at_least(low: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    convert.__name__ = f"integer >= {low}"
    return convert


non_negative_int = _int_at_least(0)
positive_int = _int_at_least(1)


def _common_options(spark: bool) -> argparse.ArgumentParser:
    """Options every subcommand accepts; Spark ones only where a session is made."""
    common = _Parser(add_help=False)
    common.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="Python logging level (default: INFO)")
    if spark:
        common.add_argument("--master", default=None,
                            help="Spark master URL (default: from spark-submit or the "
                                 "environment, else local[*])")
        common.add_argument("--conf", metavar="FILE", action="append", default=[],
                            help="spark-defaults style file of 'key=value' or 'key value' "
                                 "lines for the session (repeatable; later files win)")
        common.add_argument("--remote", default=None, metavar="URL",
                            help="Spark Connect server to use, e.g. sc://host:15002 "
                                 "(default: $SPARK_REMOTE; without either, a classic session)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``sparkann`` argument parser with its four subcommands.

    Returns
    -------
    argparse.ArgumentParser
        A parser whose errors raise :class:`UsageError`; each subcommand sets
        ``func`` to the function that runs it.
    """
    parser = _Parser(prog="sparkann", description="Approximate nearest-neighbour search on Spark.")
    parser.add_argument("--version", action="version", version=f"sparkann {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    with_spark, without_spark = _common_options(True), _common_options(False)
    _add_build(commands, with_spark)
    _add_search(commands, with_spark)
    _add_demo(commands, with_spark)
    _add_convert(commands, without_spark)
    _add_evaluate(commands, with_spark)
    _add_knn_join(commands, with_spark)
    return parser


def _add_build(commands, common) -> None:
    p = commands.add_parser("build", parents=[common], help="build an index from Parquet",
                            description="Build an index of a Parquet dataset and save it.")
    p.add_argument("--input", required=True, metavar="PARQUET", help="vectors to index")
    p.add_argument("--output", required=True, metavar="INDEX", help="index directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="publish a new version over an existing index at --output")
    p.add_argument("--vector-col", default="vector", help="vector column (default: vector)")
    p.add_argument("--id-col", default="id", help="id column (default: id)")
    p.add_argument("--metric", default="l2", choices=("l2", "ip", "cosine"),
                   help="distance (default: l2)")
    p.add_argument("--num-partitions", type=non_negative_int, default=0,
                   help="coarse clusters (default: 0 = from the data size)")
    p.add_argument("--hnsw-m", type=positive_int, default=16, help="HNSW degree M (default: 16)")
    p.add_argument("--ef-construction", type=positive_int, default=200,
                   help="HNSW build beam width (default: 200)")
    p.add_argument("--max-partition-rows", type=non_negative_int, default=0,
                   help="rows above which a cluster is sharded (default: 0 = automatic)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.set_defaults(func=run_build)


def _add_search(commands, common) -> None:
    p = commands.add_parser("search", parents=[common], help="search an index with queries",
                            description="Find the k nearest neighbours of each query row.")
    p.add_argument("--index", required=True, help="index directory written by 'build'")
    p.add_argument("--queries", required=True, metavar="PARQUET", help="query vectors")
    p.add_argument("--output", required=True, metavar="PARQUET",
                   help="where to write the queries with their neighbours")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--num-probes", type=non_negative_int, default=None,
                   help="clusters searched per query (default: the index's setting, "
                        "normally 0 = automatic)")
    p.add_argument("--probe-epsilon", type=float, default=None,
                   help="probe a cluster past the nearest only within (1 + this) x the "
                        "nearest centroid's distance (default: the index's setting, "
                        "normally 0 = off)")
    p.add_argument("--ef-search", type=non_negative_int, default=None,
                   help="HNSW search beam width (default: the index's setting, "
                        "normally 0 = automatic)")
    p.add_argument("--vector-col", default=None,
                   help="query vector column (default: the index's vector column)")
    p.add_argument("--neighbors-col", default="neighbors",
                   help="output column (default: neighbors)")
    p.add_argument("--mode", default="errorifexists", choices=WRITE_MODES,
                   help="what to do if --output exists (default: errorifexists)")
    p.set_defaults(func=run_search)


def _add_demo(commands, common) -> None:
    p = commands.add_parser("demo", parents=[common], help="build and search a synthetic dataset",
                            description="Index seeded synthetic vectors, search them and "
                                        "report recall against exact search.")
    p.add_argument("--rows", type=positive_int, default=20_000, help="indexed vectors")
    p.add_argument("--dim", type=positive_int, default=64, help="vector dimension")
    p.add_argument("--queries", type=positive_int, default=500, help="query vectors")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per query")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="keep the index under DIR/index (default: a temporary directory, "
                        "removed afterwards)")
    p.set_defaults(func=run_demo)


def _add_convert(commands, common) -> None:
    p = commands.add_parser("convert", parents=[common], help="convert a vector file to Parquet",
                            description="Convert fvecs/ivecs/bvecs/idx/hdf5 vectors to a Parquet "
                                        "file with columns id (long) and vector (array<float>).")
    p.add_argument("--input", required=True, metavar="FILE", help="vector file")
    p.add_argument("--output", required=True, metavar="PARQUET", help="Parquet file to write")
    p.add_argument("--format", default=None, choices=("fvecs", "ivecs", "bvecs", "idx", "hdf5"),
                   help="input format (default: from the file name)")
    p.add_argument("--dataset", default="train", help="HDF5 dataset name (default: train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=run_convert)


def _int_list(text: str) -> list[int]:
    """``"1,2,4"`` as ``[1, 2, 4]`` (positive integers)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


_int_list.__name__ = "comma-separated integers"


def _recall_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _add_evaluate(commands, common) -> None:
    p = commands.add_parser("evaluate", parents=[common],
                            help="recall and queries/s of an index over a parameter sweep",
                            description="Measure recall@k against exact search and queries/s "
                                        "for every numProbes x efSearch on a sample of queries; "
                                        "write OUT/report.json and OUT/recall_vs_qps.png.")
    p.add_argument("--index", required=True, help="index directory written by 'build'")
    p.add_argument("--base", required=True, metavar="PARQUET",
                   help="the indexed vectors (for exact neighbours)")
    p.add_argument("--queries", required=True, metavar="PARQUET", help="query vectors")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the report")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--probes", type=_int_list, default=[1, 2, 4, 8],
                   help="numProbes values (default: 1,2,4,8)")
    p.add_argument("--ef", type=_int_list, default=[16, 32, 64, 128],
                   help="efSearch values (default: 16,32,64,128)")
    p.add_argument("--sample", type=non_negative_int, default=1000,
                   help="queries sampled for the sweep (default: 1000; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--target-recall", type=_recall_value, default=None,
                   help="also report the cheapest setting reaching this recall")
    p.set_defaults(func=run_evaluate)


# --------------------------------------------------------------------------
# Spark session
# --------------------------------------------------------------------------


def _add_knn_join(commands, common) -> None:
    p = commands.add_parser("knn-join", parents=[common], help="k-NN graph of a collection",
                            description="Write each row's k nearest other rows as Parquet "
                            "edges (id, neighbor_id, distance, rank).")
    p.add_argument("--input", required=True, metavar="PARQUET", help="vectors (id, vector)")
    p.add_argument("--output", required=True, metavar="PARQUET", help="edges to write")
    p.add_argument("--index", default=None, metavar="INDEX",
                   help="where to keep the index built on the way (default: OUTPUT_index)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per row (default: 10)")
    p.add_argument("--vector-col", default="vector", help="vector column (default: vector)")
    p.add_argument("--id-col", default="id", help="id column (default: id)")
    p.add_argument("--metric", default="l2", choices=("l2", "ip", "cosine"))
    p.add_argument("--num-partitions", type=non_negative_int, default=0)
    p.add_argument("--num-probes", type=non_negative_int, default=0)
    p.add_argument("--mode", default="errorifexists", choices=WRITE_MODES,
                   help="what to do if --output exists (default: errorifexists)")
    p.set_defaults(func=run_knn_join)


def run_knn_join(args: argparse.Namespace) -> int:
    """``sparkann knn-join``: index a collection and write its k-NN graph."""
    from .estimator import ANNIndex
    from .selfjoin import knn_graph

    index = ANNIndex(vectorCol=args.vector_col, idCol=args.id_col, metric=args.metric,
                     numPartitions=args.num_partitions, numProbes=args.num_probes, k=args.k,
                     indexPath=args.index or args.output.rstrip("/") + "_index")
    index.validate()
    with spark_session(args) as spark:
        _check_search_output(spark, args.output, args.mode)
        _check_index_output(spark, index.getOrDefault("indexPath"), overwrite=False)
        items = _read_parquet(spark, args.input)
        started = time.perf_counter()
        with _spark_path_errors():
            knn_graph(index.fit(items), items).write.mode(_writer_mode(args.mode)).parquet(
                args.output)
        print(json.dumps({"output": args.output, "k": args.k,
                          "seconds": round(time.perf_counter() - started, 3)}))
    return 0


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
    """A SparkSession for one command; stopped afterwards if this call created it."""
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


@contextmanager
def _spark_path_errors():
    """Turn Spark's missing / existing path errors into FileNotFound / FileExists."""
    from pyspark.errors import AnalysisException

    try:
        yield
    except AnalysisException as err:
        condition = err.getCondition() or ""
        message = _one_line(err)
        if condition.startswith("PATH_NOT_FOUND"):
            raise FileNotFoundError(message) from err
        if condition.startswith("PATH_ALREADY_EXISTS"):
            raise FileExistsError(message) from err
        raise


def _read_parquet(spark, path: str):
    with _spark_path_errors():
        frame = spark.read.parquet(path)
        _ = frame.schema  # resolve the path now
    return frame


def _check_search_output(spark, path: str, mode: str) -> None:
    """Fail before searching if ``path`` exists and ``mode`` does not replace it."""
    from . import storage

    if mode != "overwrite" and storage.path_exists(spark, path):
        raise FileExistsError(f"{path} already exists; pass --mode overwrite to replace it")


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------


def run_build(args: argparse.Namespace) -> int:
    """``sparkann build``: index a Parquet dataset and save it to ``--output``.

    The index is built directly under ``--output`` (``indexPath``), which
    publishes it there as a new version: no temporary copy is written.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``build`` arguments.

    Returns
    -------
    int
        Exit code 0; the index summary is printed as JSON.
    """
    from .estimator import ANNIndex

    index = ANNIndex(
        vectorCol=args.vector_col, idCol=args.id_col, metric=args.metric,
        numPartitions=args.num_partitions, hnswM=args.hnsw_m,
        efConstruction=args.ef_construction, maxPartitionRows=args.max_partition_rows,
        seed=args.seed, indexPath=args.output,
    )
    index.validate()
    with spark_session(args) as spark:
        _check_index_output(spark, args.output, args.overwrite)
        items = _read_parquet(spark, args.input)
        log.info("building an index of %s into %s", args.input, args.output)
        started = time.perf_counter()
        model = index.fit(items)
        log.info("built and saved in %.1f s", time.perf_counter() - started)
        print(json.dumps(model.summary(), indent=2, default=_json_value))
    return 0


def _check_index_output(spark, path: str, overwrite: bool) -> None:
    """Allow only a new path, or (with ``--overwrite``) an existing index."""
    from . import storage

    if not storage.path_exists(spark, path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to publish a new "
                              "version of the index over it")
    try:
        storage.load(spark, path)
    except storage.IndexFormatError:
        raise FileExistsError(f"{path} exists and is not a sparkann index; "
                              "refusing to write into it") from None


def run_search(args: argparse.Namespace) -> int:
    """``sparkann search``: add the ``k`` nearest neighbours to each query row.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``search`` arguments.

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    from .estimator import ANNIndexModel

    with spark_session(args) as spark:
        _check_search_output(spark, args.output, args.mode)
        model = ANNIndexModel.load(args.index)
        _apply_search_options(model, args)
        queries = _read_parquet(spark, args.queries)
        log.info("searching %s with %s", args.index, args.queries)
        started = time.perf_counter()
        mode = _writer_mode(args.mode)
        with _spark_path_errors(), job_label(spark, "sparkann: search"):
            model.transform(queries).write.mode(mode).parquet(args.output)
        seconds = time.perf_counter() - started
        num_queries = spark.read.parquet(args.output).count()
        print(json.dumps({"output": args.output, "queries": num_queries, "k": model.getK(),
                          "seconds": round(seconds, 3)}))
    return 0


def _writer_mode(mode: str) -> str:
    """The writer's name for a --mode choice that classic Spark and Connect both accept."""
    return "error" if mode == "errorifexists" else mode


def _apply_search_options(model, args: argparse.Namespace) -> None:
    """Set the search-time params given on the command line; others keep stored values."""
    model.setK(args.k)
    model.setNeighborsCol(args.neighbors_col)
    if args.num_probes is not None:
        model.setNumProbes(args.num_probes)
    if args.probe_epsilon is not None:
        model.setProbeEpsilon(args.probe_epsilon)
    if args.ef_search is not None:
        model.setEfSearch(args.ef_search)
    if args.vector_col is not None:
        model.set(model.vectorCol, args.vector_col)
    model.validate()


def run_evaluate(args: argparse.Namespace) -> int:
    """``sparkann evaluate``: recall and speed of an index over a numProbes x efSearch sweep.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``evaluate`` arguments.

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    from . import evaluate
    from .estimator import ANNIndexModel

    try:
        import matplotlib  # noqa: F401  (fail before any Spark work)
    except ImportError:
        raise ValueError("'evaluate' draws its chart with matplotlib; install it with "
                         "pip install 'sparkann[eval]'") from None
    with spark_session(args) as spark:
        model = ANNIndexModel.load(args.index)
        base = _read_parquet(spark, args.base)
        queries = _read_parquet(spark, args.queries)
        log.info("evaluating %s with %s", args.index, args.queries)
        sample = evaluate.QuerySample(model, base, queries, args.k, args.sample, args.seed)
        trials = evaluate.sweep(model, base, queries, args.probes, args.ef, evaluation=sample)
        extra = {"index": args.index, "base": args.base, "queries": args.queries,
                 "summary": model.summary()}
        report = evaluate.write_report(args.out, trials, sample, extra, args.target_recall)
    best = max(trials, key=lambda t: (t.recall, t.queries_per_second))
    print(json.dumps({"report": os.path.join(args.out, evaluate.REPORT_NAME),
                      "plot": report["plot"], "settings": len(trials),
                      "bestRecall": best.recall, "cheapest": report.get("cheapest")}))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``sparkann demo``: index synthetic vectors and report recall and speed.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``demo`` arguments.

    Returns
    -------
    int
        0 if recall@k reaches 0.9, else 1.
    """
    from . import datasets, exact

    base = datasets.clustered(args.rows, args.dim, seed=args.seed)
    queries = datasets.clustered(args.queries, args.dim, seed=args.seed,
                                 sample_seed=args.seed + 1)
    with _output_dir(args.output) as out, spark_session(args) as spark:
        found, report = _demo_search(spark, base, queries, args.k, os.path.join(out, "index"))
    truth, _ = exact.knn(base, queries, args.k)
    report["recall"] = exact.recall_at_k(found, truth, args.k)
    print(_demo_table(report, args))
    if report["recall"] < DEMO_MIN_RECALL:
        print(f"recall {report['recall']:.3f} is below {DEMO_MIN_RECALL}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def _output_dir(path: str | None):
    """``path`` (created if needed), or a temporary directory removed afterwards."""
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sparkann-demo-") as tmp:
        yield tmp


def _demo_search(spark, base, queries, k: int, index_path: str):
    """Build and search the demo index: (neighbour ids (nq, k), report dict)."""
    from pyspark.sql import functions as F

    from .estimator import ANNIndex

    items = spark.createDataFrame(vectors_table(base))
    query_frame = spark.createDataFrame(vectors_table(queries))
    partitions = max(1, min(DEMO_PARTITIONS, len(base) // 100))
    started = time.perf_counter()
    model = ANNIndex(numPartitions=partitions, k=k, indexPath=index_path).fit(items)
    build_seconds = time.perf_counter() - started
    log.info("built the demo index in %.1f s at %s", build_seconds, index_path)
    started = time.perf_counter()
    result = model.transform(query_frame).select("id", F.col("neighbors.id").alias("ids"))
    found = neighbor_matrix(result.toArrow(), k)
    search_seconds = time.perf_counter() - started
    return found, {"build_seconds": build_seconds, "search_seconds": search_seconds,
                   "summary": model.summary()}


def neighbor_matrix(table, k: int) -> np.ndarray:
    """Neighbour ids as an (nq, k) matrix ordered by query id, -1 where missing.

    Parameters
    ----------
    table : pyarrow.Table
        Columns ``id`` (query id) and ``ids`` (list of neighbour ids).
    k : int
        Columns of the result.

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(len(table), k)``.
    """
    table = table.sort_by("id")
    found = np.full((table.num_rows, k), -1, np.int64)
    for row, ids in enumerate(table.column("ids").to_pylist()):
        found[row, : len(ids)] = ids[:k]
    return found


def _demo_table(report: dict, args: argparse.Namespace) -> str:
    """The demo result as a short two-column table."""
    summary = report["summary"]
    nq = args.queries
    rows = [
        (f"recall@{args.k}", f"{report['recall']:.4f}"),
        ("build seconds", f"{report['build_seconds']:.1f}"),
        ("search seconds", f"{report['search_seconds']:.1f}"),
        ("queries/s", f"{nq / max(report['search_seconds'], 1e-9):.0f}"),
        ("vectors", f"{summary['numVectors']} x {summary['dim']} ({summary['metric']})"),
        ("partitions", (f"{summary['numPartitions']} clusters, {summary['numShards']} shards, "
                        f"balance {summary['balance']:.2f}")),
        ("partition sizes", _short_list(summary["partitionSizes"])),
        ("index size", f"{summary['indexBytes'] / 2**20:.1f} MiB"),
    ]
    rows += [(f"  {stage} s", f"{seconds:.1f}") for stage, seconds in
             summary["buildSeconds"].items()]
    width = max(len(name) for name, _ in rows)
    title = f"sparkann demo: {args.rows} vectors, dim {args.dim}, {nq} queries, k={args.k}"
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _short_list(values, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def run_convert(args: argparse.Namespace) -> int:
    """``sparkann convert``: write a vector file as Parquet (id long, vector array<float>).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``convert`` arguments.

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    vectors = _read_vector_file(args.input, args.format, args.dataset)
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} already exists; pass --overwrite to replace it")
    if os.path.isdir(args.output):
        raise FileExistsError(f"{args.output} is a directory; give a file name")
    write_vectors_parquet(vectors, args.output)
    log.info("wrote %d vectors of dimension %d to %s", *vectors.shape, args.output)
    print(json.dumps({"output": args.output, "rows": int(vectors.shape[0]),
                      "dim": int(vectors.shape[1])}))
    return 0


def _read_vector_file(path: str, fmt: str | None, dataset: str) -> np.ndarray:
    """Vectors of ``path`` as a 2-D array; reader problems become ValueError."""
    from .readers import read_vectors

    is_hdf5 = fmt == "hdf5" or (fmt is None and path.lower().endswith((".hdf5", ".h5")))
    options = {"dataset": dataset} if is_hdf5 else {}
    try:
        vectors = read_vectors(path, fmt, **options)
    except (KeyError, ImportError) as err:  # missing HDF5 dataset, or no h5py
        raise ValueError(_one_line(err.args[0] if err.args else err)) from err
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}")
    return vectors


def vectors_table(vectors: np.ndarray, first_id: int = 0):
    """A pyarrow table with ``id`` (int64 row numbers) and ``vector`` (list<float32>).

    Parameters
    ----------
    vectors : numpy.ndarray
        Array of shape ``(n, d)``; cast to float32.
    first_id : int, optional
        Id of the first row.

    Returns
    -------
    pyarrow.Table
        Built from the flat buffer and offsets, without per-row Python objects.
    """
    import pyarrow as pa

    n, d = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    ids = pa.array(np.arange(first_id, first_id + n, dtype=np.int64))
    return pa.table({"id": ids, "vector": pa.ListArray.from_arrays(offsets, values)})


def write_vectors_parquet(vectors: np.ndarray, path: str) -> None:
    """Write ``vectors`` to one Parquet file in row groups of about 64 MiB.

    Parameters
    ----------
    vectors : numpy.ndarray
        Array of shape ``(n, d)``.
    path : str
        Destination file (replaced if it exists).
    """
    import pyarrow.parquet as pq

    rows_per_group = max(1, CONVERT_CHUNK_BYTES // (4 * vectors.shape[1]))
    schema = vectors_table(vectors[:0]).schema
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(vectors), rows_per_group):
            writer.write_table(vectors_table(vectors[start : start + rows_per_group], start))


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _json_value(value):
    """JSON fallback for numpy scalars and arrays in summaries."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _one_line(error) -> str:
    return " ".join(str(error).split())


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # py4j reports every connection at INFO
        logging.getLogger("py4j").setLevel(logging.WARNING)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .storage import IndexFormatError

    return (ValueError, TypeError, FileExistsError, FileNotFoundError, IndexFormatError)


def main(argv: list[str] | None = None) -> int:
    """Run the ``sparkann`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if the demo misses its recall target, 2 on a usage
        or input error (reported on stderr as one ``error: ...`` line).
    """
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    _configure_logging(args.log_level)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
