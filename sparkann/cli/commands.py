"""The subcommands: each parses nothing, checks its paths and calls the library.

Every ``run_*`` function takes the parsed arguments of its subcommand (see
:mod:`sparkann.cli.parser`) and returns the exit code; results are printed
as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from ..observe import job_label
from ..vectorio import write_vectors_parquet
from .errors import one_line, spark_path_errors
from .session import spark_session

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def given_params(args: argparse.Namespace) -> dict:
    """The index params the user passed, by their ``ANNIndex`` keyword.

    The parser stores each param option under the param's camelCase name with
    a default of ``None`` and lists these names in ``args.params``; options
    left out are not returned, so the library's defaults (or the values
    stored with an index) apply to them.
    """
    values = {name: getattr(args, name) for name in getattr(args, "params", ())}
    return {name: value for name, value in values.items() if value is not None}


def check_params(stage) -> None:
    """Check ``stage``'s params now, before Spark starts, if the library has ``validate()``.

    Params that are validated when they are set need no separate check (the
    constructor or setter has already raised).
    """
    validate = getattr(stage, "validate", None)
    if callable(validate):
        validate()


def json_default(value):
    """JSON fallback for numpy scalars and arrays in summaries."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_parquet(spark, path: str):
    """``spark.read.parquet(path)`` with its schema resolved, so a bad path fails here."""
    with spark_path_errors():
        frame = spark.read.parquet(path)
        _ = frame.schema  # resolve the path now
    return frame


def writer_mode(mode: str) -> str:
    """The writer's name for a --mode choice that classic Spark and Connect both accept."""
    return "error" if mode == "errorifexists" else mode


def path_exists(spark, path: str) -> bool:
    """True if ``path`` (a file or directory on any file system Spark reads) exists."""
    from pyspark.errors import AnalysisException

    jvm_session = getattr(spark, "_jsparkSession", None)
    if jvm_session is not None:  # classic Spark: ask Hadoop through the JVM
        hadoop_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)
        file_system = hadoop_path.getFileSystem(jvm_session.sessionState().newHadoopConf())
        return bool(file_system.exists(hadoop_path))
    try:  # Spark Connect: no JVM access, ask through a read
        spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(path).schema
        return True
    except AnalysisException as err:
        if "PATH_NOT_FOUND" in str(err) or "does not exist" in str(err):
            return False
        raise


def check_search_output(spark, path: str, mode: str) -> None:
    """Fail before searching if ``path`` exists and ``mode`` does not replace it."""
    if mode != "overwrite" and path_exists(spark, path):
        raise FileExistsError(f"{path} already exists; pass --mode overwrite to replace it")


def check_index_output(spark, path: str, overwrite: bool) -> None:
    """Allow only a new path, or (with ``--overwrite``) an existing index."""
    from ..estimator import ANNIndexModel
    from ..storage import IndexFormatError

    if not path_exists(spark, path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to publish a new "
                              "version of the index over it")
    try:
        ANNIndexModel.load(path)
    except IndexFormatError:
        raise FileExistsError(f"{path} exists and is not a sparkann index; "
                              "refusing to write into it") from None


def apply_search_options(model, options: dict) -> None:
    """Set the given search-time params on ``model``; the others keep their stored values.

    Each param is set through the model's ``setX`` method where it has one.
    """
    for name, value in options.items():
        setter = getattr(model, "set" + name[:1].upper() + name[1:], None)
        if callable(setter):
            setter(value)
        else:
            model.set(model.getParam(name), value)
    check_params(model)


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------


def run_build(args: argparse.Namespace) -> int:
    """``sparkann build``: index a Parquet dataset and save it to ``--output``.

    The index is built directly under ``--output`` (``indexPath``), which
    publishes it there as a new version: no temporary copy is written. Only
    the build options given on the command line are passed to ``ANNIndex``.

    Returns
    -------
    int
        Exit code 0; the index summary is printed as JSON.
    """
    from ..estimator import ANNIndex

    index = ANNIndex(**given_params(args), indexPath=args.output)
    check_params(index)
    with spark_session(args) as spark:
        check_index_output(spark, args.output, args.overwrite)
        items = read_parquet(spark, args.input)
        log.info("building an index of %s into %s", args.input, args.output)
        started = time.perf_counter()
        model = index.fit(items)
        log.info("built and saved in %.1f s", time.perf_counter() - started)
        print(json.dumps(model.summary(), indent=2, default=json_default))
    return 0


def run_search(args: argparse.Namespace) -> int:
    """``sparkann search``: add the ``k`` nearest neighbours to each query row.

    Search options not given on the command line keep the values stored with
    the index.

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    from ..estimator import ANNIndexModel

    with spark_session(args) as spark:
        check_search_output(spark, args.output, args.mode)
        model = ANNIndexModel.load(args.index)
        apply_search_options(model, given_params(args))
        queries = read_parquet(spark, args.queries)
        if getattr(args, "calibrate_on_queries", None):
            log.info("calibrating %s on a sample of %s", args.index, args.queries)
            model = model.calibrate(args.calibrate_on_queries, queries=queries)
        log.info("searching %s with %s", args.index, args.queries)
        started = time.perf_counter()
        with spark_path_errors(), job_label(spark, "sparkann: search"):
            model.transform(queries).write.mode(writer_mode(args.mode)).parquet(args.output)
        seconds = time.perf_counter() - started
        num_queries = spark.read.parquet(args.output).count()
        print(json.dumps({"output": args.output, "queries": num_queries, "k": model.getK(),
                          "settings": model.searchSettings(), "queryDrift": model.searchReport(),
                          "seconds": round(seconds, 3)}))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``sparkann evaluate``: recall and speed of an index over a numProbes x efSearch sweep.

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    from .. import evaluate
    from ..estimator import ANNIndexModel

    try:
        import matplotlib  # noqa: F401  (fail before any Spark work)
    except ImportError:
        raise ValueError("'evaluate' draws its chart with matplotlib; install it with "
                         "pip install 'sparkann[eval]'") from None
    with spark_session(args) as spark:
        model = ANNIndexModel.load(args.index)
        base = read_parquet(spark, args.base)
        queries = read_parquet(spark, args.queries)
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


def run_knn_join(args: argparse.Namespace) -> int:
    """``sparkann knn-join``: index a collection and write its k-NN graph.

    Only the index options given on the command line are passed to ``ANNIndex``.

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    from ..estimator import ANNIndex
    from ..selfjoin import knn_graph

    index_path = args.index or args.output.rstrip("/") + "_index"
    index = ANNIndex(**given_params(args), k=args.k, indexPath=index_path)
    check_params(index)
    with spark_session(args) as spark:
        check_search_output(spark, args.output, args.mode)
        check_index_output(spark, index_path, overwrite=False)
        items = read_parquet(spark, args.input)
        started = time.perf_counter()
        with spark_path_errors():
            knn_graph(index.fit(items), items).write.mode(writer_mode(args.mode)).parquet(
                args.output)
        print(json.dumps({"output": args.output, "k": args.k,
                          "seconds": round(time.perf_counter() - started, 3)}))
    return 0


def run_vacuum(args: argparse.Namespace) -> int:
    """``sparkann vacuum``: delete an index's files no longer needed by its kept versions.

    Calls ``ANNIndexModel.load(index).vacuum()`` with ``retainVersions`` when
    ``--retain-versions`` is given (else the method's default applies).

    Returns
    -------
    int
        Exit code 0; the JSON report returned by ``vacuum`` is printed.
    """
    from ..estimator import ANNIndexModel

    with spark_session(args):
        model = ANNIndexModel.load(args.index)
        log.info("vacuuming %s", args.index)
        report = model.vacuum(**given_params(args))
        print(json.dumps(report, indent=2, default=json_default))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """``sparkann convert``: write a vector file as Parquet (id long, vector array<float>).

    Returns
    -------
    int
        Exit code 0; a short JSON result line is printed.
    """
    vectors = read_vector_file(args.input, args.format, args.dataset)
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} already exists; pass --overwrite to replace it")
    if os.path.isdir(args.output):
        raise FileExistsError(f"{args.output} is a directory; give a file name")
    write_vectors_parquet(vectors, args.output)
    log.info("wrote %d vectors of dimension %d to %s", *vectors.shape, args.output)
    print(json.dumps({"output": args.output, "rows": int(vectors.shape[0]),
                      "dim": int(vectors.shape[1])}))
    return 0


def read_vector_file(path: str, fmt: str | None, dataset: str) -> np.ndarray:
    """Vectors of ``path`` as a 2-D array; reader problems become ValueError."""
    from ..readers import read_vectors

    is_hdf5 = fmt == "hdf5" or (fmt is None and path.lower().endswith((".hdf5", ".h5")))
    options = {"dataset": dataset} if is_hdf5 else {}
    try:
        vectors = read_vectors(path, fmt, **options)
    except (KeyError, ImportError) as err:  # missing HDF5 dataset, or no h5py
        raise ValueError(one_line(err.args[0] if err.args else err)) from err
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}")
    return vectors
