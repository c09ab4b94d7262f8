"""Stage logs, Spark job labels and progress on a classic session."""

from __future__ import annotations

import logging

import pytest

from sparkann.observe import (
    PROGRESS_CONF,
    StageTimer,
    job_label,
    progress_seconds,
    set_job_description,
)

DESCRIPTION = "spark.job.description"


def test_job_labels_nest_and_restore(spark):
    context = spark.sparkContext
    context.setJobDescription(None)
    with job_label(spark, "sparkann: outer"):
        assert context.getLocalProperty(DESCRIPTION) == "sparkann: outer"
        with job_label(spark, "sparkann: inner"):
            assert context.getLocalProperty(DESCRIPTION) == "sparkann: inner"
        assert context.getLocalProperty(DESCRIPTION) == "sparkann: outer"
    assert context.getLocalProperty(DESCRIPTION) is None
    set_job_description(spark, "sparkann: x")
    assert context.getLocalProperty(DESCRIPTION) == "sparkann: x"
    set_job_description(spark, None)
    assert context.getLocalProperty(DESCRIPTION) is None


def test_labels_are_a_no_op_without_spark_support():
    class StandIn:  # neither a SparkContext nor tags
        pass

    with job_label(StandIn(), "sparkann: x"):
        pass
    set_job_description(StandIn(), "sparkann: x")
    assert progress_seconds(StandIn()) == 15.0


def test_stage_timer_logs_seconds_and_progress(spark, caplog, tmp_path):
    from conftest import ProgressSeen, held_until

    marker = tmp_path / "progress-seen"  # the tasks run until a progress line is logged
    seen = ProgressSeen(marker)
    spark.conf.set(PROGRESS_CONF, "0.3")
    stage = StageTimer(spark)
    logging.getLogger("sparkann").addHandler(seen)
    try:
        with caplog.at_level(logging.INFO, logger="sparkann"):
            with stage("slow stage"):
                assert spark.sparkContext.getLocalProperty(DESCRIPTION) == "sparkann: slow stage"
                spark.range(0, 6, 1, 3).mapInArrow(held_until(marker), "id long").collect()
    finally:
        logging.getLogger("sparkann").removeHandler(seen)
        spark.conf.unset(PROGRESS_CONF)
    messages = [r.getMessage() for r in caplog.records]
    assert any("sparkann: slow stage:" in m and "tasks done" in m for m in messages), messages
    assert stage.seconds["slow stage"] >= 0.3  # no progress line before one interval
    assert messages[-1] == f"sparkann: slow stage: {stage.seconds['slow stage']:.2f} s"


def test_bad_progress_setting(spark):
    spark.conf.set(PROGRESS_CONF, "soon")
    try:
        with pytest.raises(ValueError, match="progressSeconds"):
            progress_seconds(spark)
    finally:
        spark.conf.unset(PROGRESS_CONF)


def test_build_names_its_stages(spark, clustered_data, caplog):
    from conftest import vectors_frame

    from sparkann import ANNIndex

    with caplog.at_level(logging.INFO, logger="sparkann"):
        model = ANNIndex(numPartitions=2, targetRecall=0).fit(
            vectors_frame(spark, clustered_data[0][:500]))
        model.transform(vectors_frame(spark, clustered_data[1][:5])).count()
    messages = [r.getMessage() for r in caplog.records]
    for name in ("validate input", "train centroids", "build partition indexes", "publish"):
        assert any(m.startswith(f"sparkann: {name}: ") for m in messages), (name, messages)
    assert any("indexing 500 vectors of dimension 32" in m for m in messages)
    assert any(m.startswith("sparkann: search planned (local strategy, k=10") for m in messages)
    assert spark.sparkContext.getLocalProperty(DESCRIPTION) is None
