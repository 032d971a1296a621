"""Drift stage: a block of table rows -> its partial statistics and its share of the sample.

The drift job streams a window of the table through this function and never holds the
window itself: each block comes back as one row per (lang, route) group with the sums
that add up across blocks (count, raw_norm sum and sum of squares, cosines of consecutive
rows of the group) and the group's bottom-k rows by a seeded hash of `chunk_id`. Keeping the
k smallest hashes of every block keeps the k smallest of the window once merged
(`babelray.drift.windows.GroupSample.merged`), a uniform sample that is the same from run to
run while the rows are the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

# What the drift job reads from the chunks table.
DRIFT_COLUMNS = ["chunk_id", "doc_id", "vector", "raw_norm", "lang", "route", "model", "embedding_fingerprint"]


def sample_keys(chunk_ids, seed: int) -> np.ndarray:
    """A uniform 64-bit hash per chunk id, the same for a given seed on every machine."""
    key = f"babelray-drift{seed:02d}"[-16:]  # pandas' siphash takes a 16-character key
    return pd.util.hash_array(np.asarray(chunk_ids, dtype=object), hash_key=key, categorize=False)


def summary_schema(dimensions: int) -> pa.Schema:
    return pa.schema([
        ("lang", pa.string()),
        ("route", pa.string()),
        ("rows", pa.int64()),
        ("raw_norm_sum", pa.float64()),
        ("raw_norm_sq_sum", pa.float64()),
        ("pair_cosine_sum", pa.float64()),  # each row with the next row of the block, when of the same group
        ("pairs", pa.int64()),
        ("pair_cosine_min", pa.float64()),
        ("models", pa.list_(pa.string())),  # distinct "model|fingerprint" seen
        ("sample_key", pa.list_(pa.uint64())),
        ("sample_chunk_id", pa.list_(pa.string())),
        ("sample_doc_id", pa.list_(pa.string())),
        ("sample_raw_norm", pa.list_(pa.float32())),
        ("sample_vector", pa.list_(pa.list_(pa.float32(), dimensions))),
    ])


def summarize_block(batch: pa.Table, *, rows_per_group: int, seed: int) -> pa.Table:
    """One row per (lang, route) group of the block (see the module docstring)."""
    dimensions = batch.schema.field("vector").type.list_size
    vectors = batch.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dimensions)
    raw_norms = batch.column("raw_norm").to_numpy(zero_copy_only=False).astype(np.float64)
    # Vectors are stored unit-norm, so a dot product is the cosine.
    pair_cosines = np.einsum("ij,ij->i", vectors[:-1], vectors[1:]).astype(np.float64)
    keys = sample_keys(batch.column("chunk_id").to_pylist(), seed)
    frame = pd.DataFrame({"lang": batch.column("lang").to_pandas().fillna("und"),
                          "route": batch.column("route").to_pandas().fillna("unknown")})
    models = (batch.column("model").to_pandas().fillna("") + "|"
              + batch.column("embedding_fingerprint").to_pandas().fillna(""))
    stats = {name: [] for name in summary_schema(dimensions).names if not name.startswith("sample_")}
    kept_per_group = []
    # A pair counts when both rows are of one (lang, route) group: the vectors of one kind of text in
    # ingest order, mostly neighbouring chunks of a document, not two unrelated texts across a boundary.
    codes = frame.groupby(["lang", "route"], sort=False).ngroup().to_numpy()
    same_group_next = np.r_[codes[:-1] == codes[1:], False]
    for (lang, route), rows in frame.groupby(["lang", "route"], sort=False).indices.items():
        paired = rows[same_group_next[rows]]
        kept_per_group.append(rows[np.argsort(keys[rows], kind="stable")[:rows_per_group]])
        stats["lang"].append(lang)
        stats["route"].append(route)
        stats["rows"].append(len(rows))
        stats["raw_norm_sum"].append(float(raw_norms[rows].sum()))
        stats["raw_norm_sq_sum"].append(float((raw_norms[rows] ** 2).sum()))
        stats["pair_cosine_sum"].append(float(pair_cosines[paired].sum()))
        stats["pairs"].append(len(paired))
        stats["pair_cosine_min"].append(float(pair_cosines[paired].min()) if len(paired) else None)
        stats["models"].append(sorted(set(models.iloc[rows])))
    # The sampled rows of all groups, one list per group (offsets into the kept rows).
    kept = np.concatenate(kept_per_group) if kept_per_group else np.array([], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum([len(group) for group in kept_per_group])]), pa.int32())
    samples = {
        "sample_key": pa.array(keys[kept], pa.uint64()),
        "sample_chunk_id": batch.column("chunk_id").take(kept).combine_chunks(),
        "sample_doc_id": batch.column("doc_id").take(kept).combine_chunks(),
        "sample_raw_norm": pa.array(raw_norms[kept], pa.float32()),
        "sample_vector": batch.column("vector").take(kept).combine_chunks(),
    }
    columns = {name: pa.array(values, summary_schema(dimensions).field(name).type) for name, values in stats.items()}
    columns.update({name: pa.ListArray.from_arrays(offsets, values) for name, values in samples.items()})
    return pa.table(columns, schema=summary_schema(dimensions))
