"""The ``sparkann`` argument parser: subcommands, their options and argument types.

Options that set an index param are stored under the param's camelCase name
(``--hnsw-m`` -> ``hnswM``) with a default of ``None``; each subcommand lists
them in ``args.params`` so that only the options the user gave are passed to
the library (see :func:`sparkann.cli.commands.given_params`).
"""

from __future__ import annotations

import argparse

from .. import __version__
from ..readers import SUPPORTED_FORMATS
from .commands import (
    run_build,
    run_convert,
    run_evaluate,
    run_knn_join,
    run_search,
    run_vacuum,
)
from .demo import run_demo
from .errors import UsageError
from .session import LOG_LEVELS

METRICS = ("l2", "ip", "cosine")
PQ_BITS = (4, 8)
PQ_CODEBOOKS = ("partition", "global")
WRITE_MODES = ("errorifexists", "overwrite")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------


def int_at_least(low: int):
    """An argparse type: an integer ``>= low``."""
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


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` as ``[1, 2, 4]`` (positive integers)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


int_list.__name__ = "comma-separated integers"


def recall_value(text: str) -> float:
    """A recall: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


class _ParamOptions:
    """Adds options that set index params, and records their names in ``args.params``."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.names: list[str] = []

    def add(self, flag: str, param: str, **options) -> None:
        self.parser.add_argument(flag, dest=param, default=None, **options)
        self.names.append(param)

    def done(self, **defaults) -> None:
        self.parser.set_defaults(params=tuple(self.names), **defaults)


# --------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------


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
    """The ``sparkann`` argument parser with its subcommands.

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
    _add_vacuum(commands, with_spark)
    return parser


def _add_build(commands, common) -> None:
    p = commands.add_parser("build", parents=[common], help="build an index from Parquet",
                            description="Build an index of a Parquet dataset and save it. "
                                        "Index settings not given keep ANNIndex's defaults.")
    p.add_argument("--input", required=True, metavar="PARQUET", help="vectors to index")
    p.add_argument("--output", required=True, metavar="INDEX", help="index directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="publish a new version over an existing index at --output")
    param = _ParamOptions(p)
    param.add("--vector-col", "vectorCol", metavar="COL", help="vector column (default: vector)")
    param.add("--id-col", "idCol", metavar="COL", help="id column (default: id)")
    param.add("--metric", "metric", choices=METRICS, help="distance (default: l2)")
    param.add("--index-type", "indexType", metavar="TYPE",
              help="per-partition index, e.g. hnsw (graphs) or pq (compressed codes) "
                   "(default: hnsw)")
    param.add("--num-partitions", "numPartitions", type=non_negative_int, metavar="N",
              help="coarse clusters (default: 0 = from the data size)")
    param.add("--hnsw-m", "hnswM", type=positive_int, metavar="M",
              help="HNSW degree M (default: 16)")
    param.add("--ef-construction", "efConstruction", type=positive_int, metavar="EF",
              help="HNSW build beam width (default: 200)")
    param.add("--pq-subvectors", "pqSubvectors", type=positive_int, metavar="M",
              help="PQ sub-quantizers (default: 16)")
    param.add("--pq-bits", "pqBits", type=int, choices=PQ_BITS,
              help="bits per PQ code (default: 8)")
    param.add("--pq-codebook", "pqCodebook", choices=PQ_CODEBOOKS,
              help="one PQ codebook per partition, or one global codebook "
                   "(default: partition)")
    param.add("--rerank-k", "rerankK", type=non_negative_int, metavar="N",
              help="PQ: re-rank this many candidates by exact distance; > 0 stores the "
                   "exact vectors (default: 0 = off)")
    param.add("--sample-size", "sampleSize", type=non_negative_int, metavar="N",
              help="rows sampled to train the centroids (default: 0 = automatic)")
    param.add("--max-partition-rows", "maxPartitionRows", type=non_negative_int, metavar="N",
              help="rows above which a cluster is sharded (default: 0 = automatic)")
    param.add("--seed", "seed", type=int, metavar="S", help="random seed (default: 42)")
    param.add("--num-threads", "numThreads", type=non_negative_int, metavar="N",
              help="threads per build task (default: 0 = the task's cpus)")
    param.add("--deterministic", "deterministic", action="store_true",
              help="build each partition single-threaded so a retried task writes "
                   "identical bytes")
    param.add("--allow-duplicate-ids", "allowDuplicateIds", action="store_true",
              help="index rows with repeated ids instead of failing")
    param.add("--target-recall", "targetRecall", type=float, metavar="R",
              help="recall@k the index's search defaults are calibrated to at build "
                   "(default: ANNIndex's)")
    param.done(func=run_build)


def _add_search(commands, common) -> None:
    p = commands.add_parser("search", parents=[common], help="search an index with queries",
                            description="Find the k nearest neighbours of each query row. "
                                        "Settings not given keep the index's stored values.")
    p.add_argument("--index", required=True, help="index directory written by 'build'")
    p.add_argument("--queries", required=True, metavar="PARQUET", help="query vectors")
    p.add_argument("--output", required=True, metavar="PARQUET",
                   help="where to write the queries with their neighbours")
    p.add_argument("--mode", default="errorifexists", choices=WRITE_MODES,
                   help="what to do if --output exists (default: errorifexists)")
    p.add_argument("--calibrate-on-queries", type=recall_value, metavar="RECALL",
                   dest="calibrate_on_queries",
                   help="before searching, re-tune the index's search defaults to this "
                        "recall@k on a sample of up to 1,000 of these queries, and publish "
                        "them as a new version of the index")
    param = _ParamOptions(p)
    param.add("--k", "k", type=positive_int,
              help="neighbours per query (default: the index's setting)")
    param.add("--num-probes", "numProbes", type=non_negative_int, metavar="N",
              help="clusters searched per query (default: the index's setting)")
    param.add("--probe-epsilon", "probeEpsilon", type=float, metavar="EPS",
              help="probe a cluster past the nearest only within (1 + this) x the "
                   "nearest centroid's distance (default: the index's setting)")
    param.add("--ef-search", "efSearch", type=non_negative_int, metavar="EF",
              help="HNSW search beam width (default: the index's setting)")
    param.add("--vector-col", "vectorCol", metavar="COL",
              help="query vector column (default: the index's vector column)")
    param.add("--neighbors-col", "neighborsCol", metavar="COL",
              help="output column (default: the index's setting, normally neighbors)")
    param.done(func=run_search)


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
    p.add_argument("--format", default=None, choices=SUPPORTED_FORMATS,
                   help="input format (default: from the file name)")
    p.add_argument("--dataset", default="train", help="HDF5 dataset name (default: train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=run_convert)


def _add_evaluate(commands, common) -> None:
    p = commands.add_parser("evaluate", parents=[common],
                            help="recall and queries/s of an index over a parameter sweep",
                            description="Measure recall@k against exact search and queries/s "
                                        "for every numProbes x efSearch (or the index type's own "
                                        "setting) on a sample of queries; "
                                        "write OUT/report.json and OUT/recall_vs_qps.png.")
    p.add_argument("--index", required=True, help="index directory written by 'build'")
    p.add_argument("--base", required=True, metavar="PARQUET",
                   help="the indexed vectors (for exact neighbours)")
    p.add_argument("--queries", required=True, metavar="PARQUET", help="query vectors")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the report")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--probes", type=int_list, default=[1, 2, 4, 8],
                   help="numProbes values (default: 1,2,4,8)")
    p.add_argument("--ef", type=int_list, default=None,
                   help="efSearch values, for index types with efSearch (default: k,16,32,64,"
                        "128,256); other types sweep the settings their calibration tries")
    p.add_argument("--sample", type=non_negative_int, default=1000,
                   help="queries sampled for the sweep (default: 1000; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--target-recall", type=recall_value, default=None,
                   help="also report the cheapest setting reaching this recall")
    p.set_defaults(func=run_evaluate)


def _add_knn_join(commands, common) -> None:
    p = commands.add_parser("knn-join", parents=[common], help="k-NN graph of a collection",
                            description="Write each row's k nearest other rows as Parquet "
                            "edges (id, neighbor_id, distance, rank).")
    p.add_argument("--input", required=True, metavar="PARQUET", help="vectors (id, vector)")
    p.add_argument("--output", required=True, metavar="PARQUET", help="edges to write")
    p.add_argument("--index", default=None, metavar="INDEX",
                   help="where to keep the index built on the way (default: OUTPUT_index)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per row (default: 10)")
    p.add_argument("--mode", default="errorifexists", choices=WRITE_MODES,
                   help="what to do if --output exists (default: errorifexists)")
    param = _ParamOptions(p)
    param.add("--vector-col", "vectorCol", metavar="COL", help="vector column (default: vector)")
    param.add("--id-col", "idCol", metavar="COL", help="id column (default: id)")
    param.add("--metric", "metric", choices=METRICS, help="distance (default: l2)")
    param.add("--num-partitions", "numPartitions", type=non_negative_int, metavar="N",
              help="coarse clusters (default: ANNIndex's, from the data size)")
    param.add("--num-probes", "numProbes", type=non_negative_int, metavar="N",
              help="clusters searched per row (default: ANNIndex's)")
    param.done(func=run_knn_join)


def _add_vacuum(commands, common) -> None:
    p = commands.add_parser("vacuum", parents=[common],
                            help="delete index files no longer needed",
                            description="Delete the files of an index's old versions, keeping "
                                        "the newest ones; prints what was removed as JSON.")
    p.add_argument("--index", required=True, help="index directory written by 'build'")
    param = _ParamOptions(p)
    param.add("--retain-versions", "retainVersions", type=non_negative_int, metavar="N",
              help="versions to keep (default: the library's)")
    param.add("--retention-hours", "retentionHours", type=float, metavar="H",
              help="keep versions that were the newest, and files written, within the last "
                   "H hours (default: the library's, 168)")
    param.done(func=run_vacuum)
