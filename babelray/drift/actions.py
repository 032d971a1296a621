"""What an alert does: a webhook POST, and re-embedding the slice that drifted."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

from babelray import metrics
from babelray.config import DriftActionsConfig
from babelray.drift.evaluate import ALERT, Statistic
from babelray.drift.store import RUN_ALERT, RUN_WARN
from babelray.drift.windows import ALL, Window
from operators.sink import sql_string

logger = logging.getLogger(__name__)
# Alerts about the model itself: every document of the table is suspect, not one slice.
TABLE_WIDE = ("probe_alignment_drop", "probe_stability", "new_models")
NOT_FIXED_BY_REEMBEDDING = ("language_mix_distance",)


def post_webhook(cfg: DriftActionsConfig, summary: dict) -> str:
    """POST the summary; a failure is logged and reported, never raised. The URL is never
    logged (webhook URLs carry their secret in the path), only its host."""
    url = os.environ.get(cfg.webhook_url_env or "", "")
    if not url:
        return f"webhook: ${cfg.webhook_url_env} is not set; nothing sent"
    host = urllib.parse.urlsplit(url).hostname or "?"
    request = urllib.request.Request(url, data=json.dumps(summary, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=cfg.webhook_timeout_seconds) as response:
            return f"webhook: POST to {host}: HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "code", None) or getattr(err, "reason", err)
        logger.warning("drift webhook POST to %s failed: %s", host, reason)
        return f"webhook: POST to {host} failed: {reason}"


def drifted_slices(statistics: list[Statistic]) -> list[str]:
    """What to re-embed: `table` when the model itself changed; else the alerting languages; else the
    alerting routes; else `all` (the whole current window). A changed language mix is left out:
    re-embedding does not change which languages arrive."""
    alerting = [stat for stat in statistics if stat.status == ALERT and stat.name not in NOT_FIXED_BY_REEMBEDDING]
    if any(stat.name in TABLE_WIDE for stat in alerting):
        return ["table"]
    groups = {stat.group for stat in alerting}
    for prefix in ("lang=", "route="):
        if narrow := sorted(group for group in groups if group.startswith(prefix)):
            return narrow
    return [ALL] if groups else []


def slice_filter(slice_name: str, current: Window) -> str | None:
    """SQL filter of the rows of a slice; None = the whole table."""
    if slice_name == "table":
        return None
    parts = [part for part in [current.filter()] if part]
    if slice_name != ALL:
        column, value = slice_name.split("=", 1)
        parts.append(f"{column} = {sql_string(value)}")
    return " AND ".join(parts) or None


def reembedding_refused(slices: list[str], previous) -> str | None:
    """Why not to re-embed: the previous run re-embedded the same slices and the alert stayed, so
    re-embedding does not help and a person should look."""
    if previous and previous.status == RUN_ALERT and previous.detail.get("slices") == slices \
            and "reembed" in previous.detail:
        return f"re-embedding of {slices} skipped: run {previous.run_id} re-embedded them and the alert stayed"
    return None


def slice_documents(uri: str, version: int, storage_options: dict, slices: list[str], current: Window) -> set[str]:
    """The document ids of the slices' rows in the table version the run looked at (one column, streamed)."""
    import lance
    import pyarrow.compute as pc

    dataset = lance.dataset(uri, version=version, storage_options=storage_options or None)
    doc_ids: set[str] = set()
    for slice_name in slices:
        for batch in dataset.to_batches(columns=["doc_id"], filter=slice_filter(slice_name, current)):
            doc_ids.update(pc.unique(batch.column(0)).to_pylist())
    return doc_ids


def webhook_status(run_status: str) -> str:
    """The `actions.webhook_on` word for a run status (a baseline run counts as healthy)."""
    return run_status if run_status in ("alert", "warn") else "healthy"


def webhook_summary(result: dict) -> dict:
    run = result["run"]
    flagged = [{key: stat[key] for key in ("group", "name", "value", "warn", "alert", "status")}
               for stat in result["statistics"] if stat["status"] in ("warn", ALERT)]
    return {"source": "babelray drift", **{key: run[key] for key in (
        "run_id", "run_at", "status", "exit_code", "table", "physical_table", "table_version", "model", "slices")},
        "flagged": flagged}


def export_gauges(table: str, run_at: datetime, run_status: str, statistics: list[Statistic]) -> None:
    """The run's verdict and statistics as Prometheus gauges (babelray.metrics), for dashboards and
    alert rules; a skipped statistic (no value) leaves its gauge as it was."""
    metrics.set_gauge("babelray_drift_run_timestamp_seconds", run_at.timestamp(), table=table)
    metrics.set_gauge("babelray_drift_status", {RUN_ALERT: 2, RUN_WARN: 1}.get(run_status, 0), table=table)
    for stat in statistics:
        if stat.value is not None:
            metrics.set_gauge("babelray_drift_statistic", stat.value, table=table, slice=stat.group,
                              statistic=stat.name)
