"""What drift runs keep in LanceDB, next to the chunks table.

`<history>`: one row per statistic per slice per run, plus one `run` row per run (its overall
status, the table version it looked at and the newest `embedded_at` in it, which is where the
next run's current window starts). `<history>_probe`: the probe vectors of each run, so the next
run can tell whether the model still gives the same vectors. `<history>_baseline`: the sample a
`--save-baseline` run took of the whole table, the reference of `window.split: baseline`.
Rows are only appended; a run that dies before its last append leaves no run row, so the next
run does not mistake it for a reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from babelray.config import SinkConfig
from babelray.drift.evaluate import Statistic
from babelray.drift.probe import ProbeVectors
from babelray.drift.windows import GroupSample, WindowSummary
from operators.sink import connect, open_table, sql_string

RUN = "run"  # the statistic name of a run's own row
RUN_HEALTHY, RUN_WARN, RUN_ALERT, RUN_BASELINE = "healthy", "warn", "alert", "baseline"
REFERENCE_STATUSES = (RUN_HEALTHY, RUN_WARN, RUN_BASELINE)  # runs a later run may compare with

HISTORY_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("run_at", pa.timestamp("us", tz="UTC")),
    ("table", pa.string()),  # sink.table, the name users know
    ("physical_table", pa.string()),  # the table it pointed at (see operators/table_alias.py)
    ("table_version", pa.int64()),
    ("newest_embedded_at", pa.timestamp("us", tz="UTC")),
    ("split", pa.string()),
    ("group", pa.string()),
    ("statistic", pa.string()),
    ("value", pa.float64()),
    ("warn", pa.float64()),
    ("alert", pa.float64()),
    ("status", pa.string()),
    ("rows_reference", pa.int64()),
    ("rows_current", pa.int64()),
    ("p_value", pa.float64()),
    ("detail", pa.string()),  # JSON
])
PROBE_SCHEMA = pa.schema([("run_id", pa.string()), ("table", pa.string()), ("sentence_id", pa.string()),
                          ("lang", pa.string()), ("text", pa.string()), ("vector", pa.list_(pa.float32()))])
BASELINE_SCHEMA = pa.schema([("run_id", pa.string()), ("lang", pa.string()), ("route", pa.string()),
                             ("sample_key", pa.uint64()), ("chunk_id", pa.string()), ("doc_id", pa.string()),
                             ("raw_norm", pa.float32()), ("vector", pa.list_(pa.float32()))])


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    run_at: datetime
    physical_table: str
    table_version: int
    newest_embedded_at: datetime | None
    status: str
    detail: dict


class DriftStore:
    def __init__(self, sink: SinkConfig, history_table: str):
        self.db = connect(sink)
        self.names = {"history": history_table, "probe": f"{history_table}_probe",
                      "baseline": f"{history_table}_baseline"}

    def _append(self, kind: str, rows: pa.Table) -> None:
        table = open_table(self.db, self.names[kind])
        if table is None:
            self.db.create_table(self.names[kind], rows, schema=rows.schema)
        else:
            table.add(rows)

    def _read(self, kind: str, where: str) -> pa.Table | None:
        table = open_table(self.db, self.names[kind])
        return None if table is None else table.to_lance().to_table(filter=where)

    # ------------------------------------------------------------------ history

    def append_run(self, run: dict, statistics: list[Statistic]) -> None:
        """`run`: the HISTORY_SCHEMA values every row of the run shares."""
        rows = [{**run, "group": stat.group, "statistic": stat.name, "value": stat.value, "warn": stat.warn,
                 "alert": stat.alert, "status": stat.status, "rows_reference": stat.rows_reference,
                 "rows_current": stat.rows_current, "p_value": stat.p_value,
                 "detail": json.dumps(stat.detail, default=str)} for stat in statistics]
        self._append("history", pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA))

    def runs(self, table: str) -> list[RunRecord]:
        """The runs over `table`, oldest first."""
        rows = self._read("history", f"statistic = '{RUN}' AND `table` = {sql_string(table)}")
        if rows is None:
            return []
        records = [RunRecord(row["run_id"], row["run_at"], row["physical_table"], row["table_version"],
                             row["newest_embedded_at"], row["status"], json.loads(row["detail"] or "{}"))
                   for row in rows.to_pylist()]
        return sorted(records, key=lambda record: record.run_at)

    def history(self, table: str, group: str = "all") -> pa.Table | None:
        return self._read("history", f"`table` = {sql_string(table)} AND `group` = {sql_string(group)}")

    # ------------------------------------------------------------------ probe

    def save_probe(self, run_id: str, table: str, probe: ProbeVectors) -> None:
        self._append("probe", pa.table({
            "run_id": [run_id] * len(probe.ids), "table": [table] * len(probe.ids), "sentence_id": probe.ids,
            "lang": probe.langs, "text": probe.texts,
            "vector": pa.array(list(probe.vectors.astype(np.float32)), pa.list_(pa.float32()))},
            schema=PROBE_SCHEMA))

    def probe(self, run_id: str) -> ProbeVectors | None:
        rows = self._read("probe", f"run_id = {sql_string(run_id)}")
        if rows is None or rows.num_rows == 0:
            return None
        return ProbeVectors(rows["sentence_id"].to_pylist(), rows["lang"].to_pylist(), rows["text"].to_pylist(),
                            np.array(rows["vector"].to_pylist(), np.float32))

    # ------------------------------------------------------------------ baseline

    def save_baseline(self, run_id: str, summary: WindowSummary) -> None:
        parts = []
        for (lang, route), sample in summary.samples.items():
            parts.append(pa.table({
                "run_id": [run_id] * len(sample), "lang": [lang] * len(sample), "route": [route] * len(sample),
                "sample_key": pa.array(sample.keys, pa.uint64()), "chunk_id": sample.chunk_ids.tolist(),
                "doc_id": sample.doc_ids.tolist(), "raw_norm": pa.array(sample.raw_norms, pa.float32()),
                "vector": pa.array(list(sample.vectors), pa.list_(pa.float32()))}, schema=BASELINE_SCHEMA))
        if parts:
            self._append("baseline", pa.concat_tables(parts))

    def baseline_sample(self, run_id: str, summary: WindowSummary) -> None:
        """Fill `summary.samples` with the sample saved by baseline run `run_id`."""
        rows = self._read("baseline", f"run_id = {sql_string(run_id)}")
        if rows is None:
            return
        frame = rows.to_pandas()
        for (lang, route), part in frame.groupby(["lang", "route"], sort=False):
            summary.samples[(lang, route)] = GroupSample(
                part["sample_key"].to_numpy(np.uint64), part["chunk_id"].to_numpy(object),
                part["doc_id"].to_numpy(object), part["raw_norm"].to_numpy(np.float32),
                np.stack(part["vector"].to_numpy()).astype(np.float32).reshape(len(part), summary.dimensions))
