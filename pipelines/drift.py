"""Drift job: is the vector space of the table still what it was?

    babelray drift --config configs/drift.yaml [--save-baseline] [--every 6h]

A Ray job of its own, separate from ingest. It pins the table version it looks at, splits its
rows into a reference and a current window (docs/drift.md), streams each window through
`operators.drift_sample` (sums and a bounded sample, never the whole window on the driver),
grades the statistics of `babelray.drift.evaluate` per slice, embeds the cross-lingual probe
with the table's model, appends the results to the history table, writes the report folder,
and acts on an alert (webhook, re-embedding the slice that drifted).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from babelray.config import Config, DriftConfig, parse_duration
from babelray.drift import actions
from babelray.drift.evaluate import ALERT, WARN, Statistic, evaluate_windows, window_sums_detail, worst
from babelray.drift.probe import embed_probe, load_sentences, probe_statistics
from babelray.drift.reference import choose_windows, saved_baseline
from babelray.drift.report import write_report
from babelray.drift.store import RUN, RUN_ALERT, RUN_BASELINE, RUN_HEALTHY, RUN_WARN, DriftStore, RunRecord
from babelray.drift.windows import ALL, Window, WindowSummary, newest_embedded_at, read_window
from babelray.embedding_model import load_model_spec
from babelray.runtime import cluster_has_gpus, init_ray
from operators.sink import connect, open_table, read_table_metadata, require_model, table_uri
from operators.summary import new_run_id
from operators.table_alias import resolve_tables

logger = logging.getLogger(__name__)

EXIT_HEALTHY = 0
EXIT_ALERT = 4  # 2 (bad config or input) and 3 (table locked) are the CLI's


def read_windows(drift: DriftConfig, cfg: Config, store: DriftStore, uri: str, version: int, dimensions: int,
                 reference: Window, current: Window, reference_run: RunRecord | None) -> tuple[WindowSummary, ...]:
    def read(window: Window) -> WindowSummary:
        if window.is_empty():
            return WindowSummary(dimensions, drift.sample.rows_per_group)  # nothing is newer: no read
        return read_window(uri, version, window, dimensions=dimensions, rows_per_group=drift.sample.rows_per_group,
                           seed=drift.sample.seed, storage_options=cfg.sink.storage_options)

    if drift.window.split == "baseline" and reference_run is not None and reference_run.status == RUN_BASELINE:
        return saved_baseline(drift, store, reference_run, dimensions), read(current)
    return read(reference), read(current)


def run_drift(drift: DriftConfig, cfg: Config, *, save_baseline: bool = False) -> dict:
    """One drift run; returns the report (its `run.exit_code`: 0 healthy or warnings, 4 alert)."""
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    run_id = new_run_id(now)
    names = resolve_tables(cfg.sink)
    table = open_table(connect(cfg.sink), names.chunks)
    if table is None:
        raise ValueError(f"no table {names.chunks!r} in {cfg.sink.uri}: nothing to watch yet")
    metadata = read_table_metadata(table)
    dimensions = load_model_spec(cfg.embedding).dimensions(cfg.embedding)
    require_model(cfg.sink.table, metadata, cfg.embedding.model, dimensions)  # the probe must use the table's model
    version, uri = table.version, table_uri(cfg.sink, names.chunks)
    init_ray(cfg.ray)
    store = DriftStore(cfg.sink, drift.history_table)
    newest = newest_embedded_at(uri, version, cfg.sink.storage_options)
    runs = store.runs(cfg.sink.table)
    reference, current, reference_run = choose_windows(
        drift, runs, names.chunks, newest, lambda v: newest_embedded_at(uri, v, cfg.sink.storage_options), now,
        save_baseline)
    ref_summary, cur_summary = read_windows(drift, cfg, store, uri, version, dimensions, reference, current,
                                            reference_run)
    logger.info("drift: reference %d rows (%s), current %d rows (%s)", ref_summary.rows, reference.description,
                cur_summary.rows, current.description)
    statistics = evaluate_windows(ref_summary, cur_summary, drift)
    probe = None
    if drift.probe.enabled:
        probe = embed_probe(cfg.embedding, load_sentences(drift.probe.sentences), cluster_has_gpus())
        earlier = store.probe(reference_run.run_id) if reference_run else None
        statistics += probe_statistics(probe, earlier, drift.thresholds, reference_run and reference_run.run_id)

    overall = worst(stat.status for stat in statistics)
    status = RUN_BASELINE if save_baseline else {ALERT: RUN_ALERT, WARN: RUN_WARN}.get(overall, RUN_HEALTHY)
    exit_code = EXIT_ALERT if status == RUN_ALERT else EXIT_HEALTHY
    notes = []
    if cur_summary.rows == 0 and not save_baseline:
        notes.append("no rows in the current window: the two-sample tests did not run; the window statistics "
                     "are of the reference and the probe ran as always")
    action_lines = []
    slices = actions.drifted_slices(statistics) if status == RUN_ALERT else []
    run_detail = {"exit_code": exit_code, "reference": reference.description, "current": current.description,
                  "slices": slices, "reference_run": reference_run and reference_run.run_id}
    if save_baseline:
        run_detail["reference_sums"] = window_sums_detail(ref_summary)

    result = {
        "run": {"run_id": run_id, "run_at": now.isoformat(timespec="seconds"), "status": status,
                "exit_code": exit_code, "table": cfg.sink.table, "physical_table": names.chunks,
                "table_version": version, "newest_embedded_at": newest and newest.isoformat(),
                "model": metadata.get("model"), "dimensions": dimensions, "split": drift.window.split,
                "reference": {"description": reference.description, "rows": ref_summary.rows,
                              "run_id": reference_run and reference_run.run_id},
                "current": {"description": current.description, "rows": cur_summary.rows},
                "note": " ".join(notes), "slices": slices},
        "statistics": [stat.as_dict() for stat in statistics],
        "actions": action_lines,
    }
    if slices and drift.actions.on_alert == "reembed":
        action_lines.append(reembed_slices(drift, cfg, uri, version, current, slices, runs))
        run_detail["reembed"] = action_lines[-1]
    result["run"]["wall_seconds"] = time.perf_counter() - started

    shared = {"run_id": run_id, "run_at": now, "table": cfg.sink.table, "physical_table": names.chunks,
              "table_version": version, "newest_embedded_at": newest, "split": drift.window.split}
    run_row = Statistic(ALL, RUN, float(exit_code), status, rows_reference=ref_summary.rows,
                        rows_current=cur_summary.rows, detail=run_detail)
    store.append_run(shared, statistics + [run_row])
    actions.export_gauges(cfg.sink.table, now, status, statistics)
    if probe is not None:
        store.save_probe(run_id, cfg.sink.table, probe)
    if save_baseline:
        store.save_baseline(run_id, ref_summary)

    if drift.actions.webhook_url_env and actions.webhook_status(status) in drift.actions.webhook_on:
        action_lines.append(actions.post_webhook(drift.actions, actions.webhook_summary(result)))
    write_report(result, Path(drift.report_dir) / run_id, store.history(cfg.sink.table),
                 ref_summary.slice_sample(ALL, ALL).vectors, cur_summary.slice_sample(ALL, ALL).vectors)
    return result


def reembed_slices(drift: DriftConfig, cfg: Config, uri: str, version: int, current: Window, slices: list[str],
                   runs: list[RunRecord]) -> str:
    """Re-embed the documents of the drifted slices with the ingest config."""
    if reason := actions.reembedding_refused(slices, runs[-1] if runs else None):
        return reason
    doc_ids = actions.slice_documents(uri, version, cfg.sink.storage_options, slices, current)
    if len(doc_ids) > drift.actions.reembed_max_documents:
        return (f"re-embedding of {slices} not started: {len(doc_ids)} documents > actions.reembed_max_documents="
                f"{drift.actions.reembed_max_documents}")
    if not doc_ids:
        return f"re-embedding of {slices}: no documents in the slice"
    from pipelines.ingest import run_ingest

    summary = run_ingest(cfg, redo=frozenset(doc_ids))
    return (f"re-embedded {slices}: {summary['documents_embedded']} of {len(doc_ids)} documents embedded again "
            f"(run {summary['run_id']}, {summary['documents_rejected']} rejected; documents no longer in the input "
            "are not touched)")


def run_every(drift: DriftConfig, cfg: Config, period: str, runs: int | None = None) -> None:
    """Run, sleep until the next start, forever (or `runs` times); a failed run is logged, not fatal."""
    seconds = parse_duration(period)
    done = 0
    while runs is None or done < runs:
        started = time.monotonic()
        try:
            result = run_drift(drift, cfg)
            logger.info("drift run %s: %s (report %s)", result["run"]["run_id"], result["run"]["status"],
                        result["files"]["markdown"])
        except Exception:  # noqa: BLE001 - a scheduler keeps going; the next run may well succeed
            logger.exception("drift run failed; next run in %s", period)
        done += 1
        if runs is None or done < runs:
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
