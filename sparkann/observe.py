"""What a running build or search tells its user: stage logs, Spark job labels, progress.

* :class:`StageTimer` times named stages and logs each one through :mod:`logging`.
* :func:`job_label` names the Spark jobs a block of code runs, so the Spark UI
  reads e.g. "sparkann: build partition indexes". On classic Spark it sets the
  job description; on Spark Connect (which has no client-side description) it
  adds a job tag of the same text, which the UI shows and
  ``spark.interruptTag`` can cancel. Where neither works it does nothing.
* :func:`progress` logs the task progress of a long stage every
  ``spark.sparkann.progressSeconds`` (default 15; 0 turns it off): from the
  SparkContext's status tracker on classic Spark, from the server's progress
  messages on Spark Connect.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger(__name__)

LABEL_PREFIX = "sparkann: "
PROGRESS_CONF = "spark.sparkann.progressSeconds"
DEFAULT_PROGRESS_SECONDS = 15.0
_DESCRIPTION = "spark.job.description"


def is_connect(spark: Any) -> bool:
    """True for a Spark Connect session (no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _context(spark: Any) -> Any:
    """The classic SparkContext, or None (Spark Connect or a stand-in)."""
    return None if is_connect(spark) else getattr(spark, "_sc", None)


@contextmanager
def job_label(spark: Any, text: str) -> Iterator[None]:
    """Label the Spark jobs started inside the block with ``text``.

    Nests: the previous label is restored afterwards. Never raises for lack
    of support; labels are only a help.

    Yields
    ------
    None
        Inside the block, the jobs carry the label.
    """
    context = _context(spark)
    previous = None
    if context is not None:
        try:
            previous = context.getLocalProperty(_DESCRIPTION)
            context.setJobDescription(text)
        except Exception as err:  # e.g. a stopped context
            log.debug("could not set the job description: %s", err)
            context = None
    tagged = False
    if context is None:
        tagged = _add_tag(spark, text)
    try:
        yield
    finally:
        if context is not None:
            try:
                context.setJobDescription(previous)
            except Exception as err:
                log.debug("could not restore the job description: %s", err)
        if tagged:
            try:
                spark.removeTag(_tag(text))
            except Exception as err:
                log.debug("could not remove the job tag: %s", err)


def _tag(text: str) -> str:
    return text.replace(",", ";")  # tags may not hold commas


def _add_tag(spark: Any, text: str) -> bool:
    add = getattr(spark, "addTag", None)
    if add is None:
        return False
    try:
        if _tag(text) in spark.getTags():
            return False  # an outer block owns it
        add(_tag(text))
        return True
    except Exception as err:  # older servers, or a session that is not Spark's
        log.debug("could not add a job tag: %s", err)
        return False


def set_job_description(spark: Any, text: str | None) -> None:
    """Name the following Spark jobs (``None`` clears the name).

    Classic Spark: the job description. Spark Connect: a job tag; ``None``
    removes every sparkann tag. Does nothing where neither is supported.
    """
    context = _context(spark)
    if context is not None:
        context.setJobDescription(text)
        return
    try:
        for tag in spark.getTags():
            if tag.startswith(LABEL_PREFIX):
                spark.removeTag(tag)
        if text:
            spark.addTag(_tag(text))
    except Exception as err:
        log.debug("could not set a job tag: %s", err)


def progress_seconds(spark: Any) -> float:
    """Seconds between progress lines (``spark.sparkann.progressSeconds``; 0 = off)."""
    try:
        value = spark.conf.get(PROGRESS_CONF, None)
    except Exception:  # a stand-in session, or a server refusing the lookup
        value = None
    try:
        return float(value) if value not in (None, "") else DEFAULT_PROGRESS_SECONDS
    except ValueError:
        raise ValueError(f"{PROGRESS_CONF}={value!r} is not a number of seconds") from None


@contextmanager
def progress(spark: Any, name: str, every: float | None = None) -> Iterator[None]:
    """Log ``name``'s task progress every ``every`` seconds while the block runs.

    Nothing is logged for a block shorter than ``every``.
    """
    every = progress_seconds(spark) if every is None else every
    if every <= 0:
        yield
        return
    if is_connect(spark) and hasattr(spark, "registerProgressHandler"):
        handler = _ConnectProgress(name, every)
        spark.registerProgressHandler(handler)
        try:
            yield
        finally:
            spark.removeProgressHandler(handler)
        return
    context = _context(spark)
    if context is None:
        yield
        return
    poller = _ClassicProgress(context, name, every)
    poller.start()
    try:
        yield
    finally:
        poller.stop()


def _progress_line(name: str, done: int, total: int, running: int, seconds: float) -> str:
    share = f" ({100.0 * done / total:.0f}%)" if total else ""
    return (f"{name}: {done}/{total} tasks done{share}, {running} running, "
            f"{seconds:.0f} s elapsed")


class _ClassicProgress:
    """A daemon thread reading the SparkContext's status tracker."""

    def __init__(self, context: Any, name: str, every: float):
        self.context, self.name, self.every = context, name, every
        self.started = time.perf_counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sparkann progress: {name}",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            try:
                counts = self.snapshot()
            except Exception as err:  # the context stopped under us
                log.debug("progress of %s unavailable: %s", self.name, err)
                return
            if counts is not None:
                log.info(_progress_line(self.name, *counts, time.perf_counter() - self.started))

    def snapshot(self) -> tuple[int, int, int] | None:
        """(done, total, running) tasks over the active stages, or None if there are none."""
        tracker = self.context.statusTracker()
        infos = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
        infos = [i for i in infos if i is not None]
        if not infos:
            return None
        return (sum(i.numCompletedTasks for i in infos), sum(i.numTasks for i in infos),
                sum(i.numActiveTasks for i in infos))


class _ConnectProgress:
    """A Spark Connect progress handler that logs at most once per ``every`` seconds."""

    def __init__(self, name: str, every: float):
        self.name, self.every = name, every
        self.started = time.perf_counter()
        self.last = self.started

    def __call__(self, stages: Any, inflight_tasks: int, operation_id: Any, done: bool) -> None:
        now = time.perf_counter()
        if done or not stages or now - self.last < self.every:
            return
        self.last = now
        stages = list(stages)
        finished = sum(s.num_completed_tasks for s in stages)
        total = sum(s.num_tasks for s in stages)
        log.info(_progress_line(self.name, finished, total, inflight_tasks, now - self.started))


class StageTimer:
    """Times named stages, logs them, labels their Spark jobs and reports progress.

    ``stage = StageTimer(spark)``; ``with stage("train centroids"): ...``;
    ``stage.seconds`` maps each stage name to its wall-clock seconds.
    """

    def __init__(self, spark: Any, prefix: str = LABEL_PREFIX):
        self.spark, self.prefix = spark, prefix
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        label = f"{self.prefix}{name}"
        try:
            with job_label(self.spark, label), progress(self.spark, label):
                yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("%s: %.2f s", label, self.seconds[name])
