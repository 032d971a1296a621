"""The pipeline's custom metrics, exported through Ray's metrics agents to Prometheus.

Every process records with `ray.util.metrics`; the metrics agent of its node serves the series at
that node's metrics export port (`ray start --metrics-export-port`), named `ray_<name>` and labelled
by Ray with SessionName, NodeAddress, WorkerId and Component, so queries `sum by` the labels below.
Ray keeps the last values of finished workers, so a run's counts stay readable after it ends.

Operator counters count work where it happens (a retried block counts twice); the run summary
counts outcomes. On a run without retries they agree, and `tests/test_cluster.py` checks that.
Metric objects are made on first use in each process: operators stay picklable and record the same
in a unit test (no Ray needed) as in a Ray actor.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass

from ray.util import metrics as ray_metrics

# Batch latency buckets, seconds: a routing batch takes milliseconds, a translation batch minutes.
BATCH_SECONDS_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]


@dataclass(frozen=True)
class Metric:
    kind: str  # counter, gauge, histogram
    description: str
    tags: tuple[str, ...] = ()


METRICS = {
    "babelray_documents_read_total": Metric(
        "counter", "Documents read from the input (records, for JSONL and Parquet), rejected ones included",
        ("format",)),
    "babelray_documents_rejected_total": Metric(
        "counter", "Documents the sink committed as rejected, by the stage and reason of the rejection",
        ("stage", "reason")),
    "babelray_documents_embedded_total": Metric("counter", "Documents the sink committed with their chunks"),
    "babelray_documents_skipped_total": Metric(
        "counter", "Documents the sink skipped: embedded before from the same content and config"),
    "babelray_documents_language_total": Metric(
        "counter", "Documents language ID labelled, by language ('code' for source code)", ("lang",)),
    "babelray_documents_translated_total": Metric(
        "counter", "Documents translated to English, by source language", ("source_lang",)),
    "babelray_chunks_total": Metric("counter", "Chunks made, by document kind (prose, code)", ("kind",)),
    "babelray_tokens_embedded_total": Metric("counter", "Tokens of the chunks the model embedded", ("model",)),
    "babelray_stage_rows_total": Metric("counter", "Rows each stage put out", ("stage",)),
    "babelray_stage_batch_seconds": Metric("histogram", "Wall time of one batch in a stage", ("stage",)),
    "babelray_drift_statistic": Metric(
        "gauge", "The last drift run's statistics, per slice (all, lang=xx, route=yy, probe)",
        ("table", "slice", "statistic")),
    "babelray_drift_status": Metric("gauge", "The last drift run's verdict: 0 healthy, 1 warn, 2 alert", ("table",)),
    # Ray keeps a finished driver's gauges, so a long-lived cluster holds one series per past drift
    # run (WorkerId differs); dashboards pick the run with the newest timestamp.
    "babelray_drift_run_timestamp_seconds": Metric(
        "gauge", "Unix time of the drift run that set the drift gauges of the same process", ("table",)),
}

# The names Prometheus shows (histograms add _bucket, _sum and _count).
PROMETHEUS_NAMES = tuple(f"ray_{name}" for name in METRICS)


@functools.cache
def _metric(name: str):
    spec = METRICS[name]
    if spec.kind == "counter":
        return ray_metrics.Counter(name, spec.description, tag_keys=spec.tags)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(name, spec.description, tag_keys=spec.tags)
    return ray_metrics.Histogram(name, spec.description, boundaries=BATCH_SECONDS_BOUNDARIES, tag_keys=spec.tags)


def count(name: str, value: float = 1, **tags: str) -> None:
    if value:
        _metric(name).inc(value, tags=tags)


def count_each(name: str, values: Iterable[str | None], tag: str) -> None:
    """One increment per value (None counts as 'none'): per-language, per-kind, ... counters."""
    for value, n in Tally(values).items():
        count(name, n, **{tag: value if value is not None else "none"})


def set_gauge(name: str, value: float, **tags: str) -> None:
    _metric(name).set(value, tags=tags)


def _record_batch(stage: str, seconds: float, rows: int) -> None:
    _metric("babelray_stage_batch_seconds").observe(seconds, tags={"stage": stage})
    count("babelray_stage_rows_total", rows, stage=stage)


def timed_stage(stage: str):
    """Decorates an operator's `__call__` (a function, or a generator of tables) with the batch
    latency histogram and the rows-out counter of `stage`."""

    def decorate(call):
        if inspect.isgeneratorfunction(call):
            @functools.wraps(call)
            def timed_generator(*args, **kwargs):
                started, rows = time.perf_counter(), 0
                for table in call(*args, **kwargs):
                    rows += table.num_rows
                    yield table
                _record_batch(stage, time.perf_counter() - started, rows)
            return timed_generator

        @functools.wraps(call)
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            table = call(*args, **kwargs)
            _record_batch(stage, time.perf_counter() - started, table.num_rows)
            return table
        return timed_call

    return decorate
