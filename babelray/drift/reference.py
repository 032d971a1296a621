"""Which rows a drift run compares: the reference window, the current window, and the
earlier run whose probe vectors (and, for the baseline split, sample) are the reference.
See docs/drift.md, "Windows"."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable

from babelray.config import DriftConfig, parse_duration
from babelray.drift.evaluate import sums_from_detail
from babelray.drift.store import REFERENCE_STATUSES, RUN_BASELINE, DriftStore, RunRecord
from babelray.drift.windows import Window, WindowSummary, windows_by_cut, windows_by_period


def choose_windows(drift: DriftConfig, runs: list[RunRecord], physical_table: str, newest: datetime | None,
                   newest_of_version: Callable[[int], datetime | None], now: datetime,
                   save_baseline: bool) -> tuple[Window, Window, RunRecord | None]:
    """`runs`: the earlier runs over the table, oldest first; `newest`: the newest `embedded_at` of
    the version this run looks at."""
    references = [run for run in runs if run.status in REFERENCE_STATUSES]  # an alert is not accepted
    last_reference = references[-1] if references else None
    split = drift.window
    if save_baseline:
        return (*windows_by_cut(newest, newest, "the whole table (saved as the baseline)"), last_reference)
    if split.split == "embedded_at":
        return (*windows_by_period(now, timedelta(seconds=parse_duration(split.current_period)),
                                   timedelta(seconds=parse_duration(split.reference_period))), last_reference)
    if split.split == "baseline":
        baselines = [run for run in runs if run.status == RUN_BASELINE]
        if not baselines:
            raise ValueError("window.split is 'baseline' but no baseline was saved for this table: "
                             "run `babelray drift --save-baseline` first")
        baseline = baselines[-1]
        return (*windows_by_cut(baseline.newest_embedded_at, newest,
                                f"the baseline saved by run {baseline.run_id}"), baseline)
    if split.reference_version is not None:
        try:
            cut = newest_of_version(split.reference_version)
        except (ValueError, OSError) as err:
            raise ValueError(f"window.reference_version {split.reference_version}: cannot read it ({err}); "
                             "LanceDB may have cleaned it up: save a baseline instead") from None
        note = f"rows of table version {split.reference_version}"
    else:
        # Versions count per physical table: after a re-embedding switched tables, start afresh.
        same_table = [run for run in references if run.physical_table == physical_table]
        if same_table:
            cut = same_table[-1].newest_embedded_at
            note = f"rows of version {same_table[-1].table_version} (seen by run {same_table[-1].run_id})"
        else:
            cut, note = newest, "the whole table (no earlier healthy run on it)"
    return (*windows_by_cut(cut, newest, note), last_reference)


def saved_baseline(drift: DriftConfig, store: DriftStore, run: RunRecord, dimensions: int) -> WindowSummary:
    """The reference of the baseline split: the sums and the sample a `--save-baseline` run kept."""
    summary = WindowSummary(dimensions, drift.sample.rows_per_group)
    summary.sums = sums_from_detail(run.detail["reference_sums"])
    store.baseline_sample(run.run_id, summary)
    return summary
