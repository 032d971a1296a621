"""The two windows a drift run compares, and reading one through Ray Data.

A window is a set of rows of one pinned table version, named by a filter on `embedded_at`
(see `docs/drift.md` for how each `window.split` picks it). Reading it streams the rows
through `operators.drift_sample.summarize_block` and merges the per-block summaries on the
driver as they arrive: the driver holds sums and the bounded sample, never the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from operators.drift_sample import DRIFT_COLUMNS, summarize_block

ALL = "all"  # the group of every row


@dataclass(frozen=True)
class Window:
    after: datetime | None  # rows embedded after this (exclusive); None = from the start
    until: datetime | None  # ... and up to this (inclusive); None = to the end
    description: str

    def is_empty(self) -> bool:
        return self.after is not None and self.until is not None and self.after >= self.until

    def filter(self) -> str | None:
        parts = []
        if self.after is not None:
            parts.append(f"embedded_at > {_sql_timestamp(self.after)}")
        if self.until is not None:
            parts.append(f"embedded_at <= {_sql_timestamp(self.until)}")
        return " AND ".join(parts) or None


def _sql_timestamp(moment: datetime) -> str:
    return f"TIMESTAMP '{moment.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def windows_by_cut(cut: datetime | None, newest: datetime | None, reference_note: str) -> tuple[Window, Window]:
    """Reference: rows embedded up to `cut`; current: rows embedded after it, up to `newest`."""
    return (Window(None, cut, reference_note),
            Window(cut, newest, f"rows embedded after {cut.isoformat() if cut else 'the start'}"))


def windows_by_period(now: datetime, current: timedelta, reference: timedelta) -> tuple[Window, Window]:
    start = now - current
    return (Window(start - reference, start, f"rows embedded {start - reference:%Y-%m-%d %H:%M} to "
                   f"{start:%Y-%m-%d %H:%M} UTC"),
            Window(start, now, f"rows embedded since {start:%Y-%m-%d %H:%M} UTC"))


@dataclass
class GroupSums:
    """Exact statistics of a group of rows, merged across blocks."""

    rows: int = 0
    raw_norm_sum: float = 0.0
    raw_norm_sq_sum: float = 0.0
    pair_cosine_sum: float = 0.0
    pairs: int = 0
    pair_cosine_min: float | None = None
    models: set[str] = field(default_factory=set)

    def merge(self, other: GroupSums) -> None:
        self.rows += other.rows
        self.raw_norm_sum += other.raw_norm_sum
        self.raw_norm_sq_sum += other.raw_norm_sq_sum
        self.pair_cosine_sum += other.pair_cosine_sum
        self.pairs += other.pairs
        mins = [m for m in (self.pair_cosine_min, other.pair_cosine_min) if m is not None]
        self.pair_cosine_min = min(mins) if mins else None
        self.models |= other.models

    @property
    def raw_norm_mean(self) -> float:
        return self.raw_norm_sum / self.rows

    @property
    def raw_norm_cv(self) -> float:
        variance = max(self.raw_norm_sq_sum / self.rows - self.raw_norm_mean ** 2, 0.0)
        return float(np.sqrt(variance) / self.raw_norm_mean)

    @property
    def consecutive_cosine_mean(self) -> float | None:
        return self.pair_cosine_sum / self.pairs if self.pairs else None

    def as_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "models"}, "models": sorted(self.models)}

    @classmethod
    def from_dict(cls, data: dict) -> GroupSums:
        return cls(**{**data, "models": set(data["models"])})


@dataclass
class GroupSample:
    """The rows of a group with the smallest sample keys, at most `limit`."""

    keys: np.ndarray
    chunk_ids: np.ndarray
    doc_ids: np.ndarray
    raw_norms: np.ndarray
    vectors: np.ndarray

    @classmethod
    def empty(cls, dimensions: int) -> GroupSample:
        return cls(np.array([], np.uint64), np.array([], object), np.array([], object), np.array([], np.float32),
                   np.zeros((0, dimensions), np.float32))

    def merged(self, other: GroupSample, limit: int) -> GroupSample:
        keys = np.concatenate([self.keys, other.keys])
        keep = np.argsort(keys, kind="stable")[:limit]
        return GroupSample(keys[keep], np.concatenate([self.chunk_ids, other.chunk_ids])[keep],
                           np.concatenate([self.doc_ids, other.doc_ids])[keep],
                           np.concatenate([self.raw_norms, other.raw_norms])[keep],
                           np.concatenate([self.vectors, other.vectors])[keep])

    def __len__(self) -> int:
        return len(self.keys)


class WindowSummary:
    """Per (lang, route) group: exact sums and a bounded sample."""

    def __init__(self, dimensions: int, rows_per_group: int):
        self.dimensions = dimensions
        self.rows_per_group = rows_per_group
        self.sums: dict[tuple[str, str], GroupSums] = {}
        self.samples: dict[tuple[str, str], GroupSample] = {}

    @property
    def rows(self) -> int:
        return sum(group.rows for group in self.sums.values())

    def add(self, summaries: pa.Table) -> None:
        """Merge the output of `summarize_block` (one row per group of one or more blocks)."""
        for row in range(summaries.num_rows):
            def column(name):
                return summaries.column(name)[row]

            group = (column("lang").as_py(), column("route").as_py())
            self.sums.setdefault(group, GroupSums()).merge(GroupSums(
                column("rows").as_py(), column("raw_norm_sum").as_py(), column("raw_norm_sq_sum").as_py(),
                column("pair_cosine_sum").as_py(), column("pairs").as_py(), column("pair_cosine_min").as_py(),
                set(column("models").as_py())))
            vectors = column("sample_vector").values.flatten().to_numpy(zero_copy_only=False)
            sample = GroupSample(column("sample_key").values.to_numpy(zero_copy_only=False),
                                 np.array(column("sample_chunk_id").as_py(), object),
                                 np.array(column("sample_doc_id").as_py(), object),
                                 column("sample_raw_norm").values.to_numpy(zero_copy_only=False),
                                 vectors.reshape(-1, self.dimensions).astype(np.float32))
            held = self.samples.get(group, GroupSample.empty(self.dimensions))
            self.samples[group] = held.merged(sample, self.rows_per_group)

    def groups(self) -> list[tuple[str, str]]:
        """`all`, then `lang=<code>` and `route=<route>` slices present in this window."""
        langs = sorted({lang for lang, _ in self.sums})
        routes = sorted({route for _, route in self.sums})
        return [(ALL, ALL)] + [("lang", lang) for lang in langs] + [("route", route) for route in routes]

    def _members(self, kind: str, value: str) -> list[tuple[str, str]]:
        position = {"lang": 0, "route": 1}.get(kind)
        return [group for group in self.sums if position is None or group[position] == value]

    def slice_sums(self, kind: str, value: str) -> GroupSums | None:
        members = self._members(kind, value)
        if not members:
            return None
        total = GroupSums()
        for group in members:
            total.merge(self.sums[group])
        return total

    def slice_sample(self, kind: str, value: str) -> GroupSample:
        """The slice's bottom-k rows: every group holds its own bottom-k, so their union holds the slice's."""
        sample = GroupSample.empty(self.dimensions)
        for group in self._members(kind, value):
            sample = sample.merged(self.samples[group], self.rows_per_group)
        return sample

    def counts(self, position: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for group, sums in self.sums.items():
            counts[group[position]] = counts.get(group[position], 0) + sums.rows
        return counts


def read_window(table_uri: str, version: int, window: Window, *, dimensions: int, rows_per_group: int, seed: int,
                storage_options: dict | None = None) -> WindowSummary:
    """Stream the window's rows of `version` through Ray Data into a WindowSummary."""
    import lance_ray

    summary = WindowSummary(dimensions, rows_per_group)
    dataset = lance_ray.read_lance(table_uri, columns=DRIFT_COLUMNS, filter=window.filter(),
                                   storage_options=storage_options or None, dataset_options={"version": version})
    summaries = dataset.map_batches(summarize_block, fn_kwargs={"rows_per_group": rows_per_group, "seed": seed},
                                    batch_size=None, batch_format="pyarrow")
    for batch in summaries.iter_batches(batch_size=None, batch_format="pyarrow"):
        summary.add(batch)
    return summary


def newest_embedded_at(table_uri: str, version: int, storage_options: dict | None = None) -> datetime | None:
    """The newest `embedded_at` of a table version: where the next run's current window starts."""
    import lance
    import pyarrow.compute as pc

    dataset = lance.dataset(table_uri, version=version, storage_options=storage_options or None)
    newest = None
    for batch in dataset.to_batches(columns=["embedded_at"]):  # one column, streamed
        value = pc.max(batch.column(0)).as_py()
        if value is not None and (newest is None or value > newest):
            newest = value
    return newest
