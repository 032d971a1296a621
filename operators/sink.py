"""Sink: stage the run's rows with lance-ray, then commit them to LanceDB.

Two steps, because one Ray Data stream carries both chunks and rejects:
1. the workers write every row (chunks and rejects) into a per-run staging
   Lance dataset with `lance_ray.write_lance` (distributed, streaming);
2. the driver commits: chunks are upserted into the table keyed on `chunk_id`
   (a re-run replaces rows instead of duplicating them), rejects go to the
   rejects table, one row per document, and the staging dataset is removed.
A document with any rejected chunk is rejected whole, so that every document
ends in exactly one of the two tables and a later run retries all of it.
Runs against one table must not overlap: `operators/table_lock.py` serializes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone

import lance
import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from babelray.config import SinkConfig

TABLE_METADATA_KEY = b"babelray"
REJECT_COLUMNS = ["reject_stage", "reject_reason", "reject_detail"]
REJECTS_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("content_hash", pa.string()),
    ("size_bytes", pa.int64()),
    ("run_id", pa.string()),
    ("rejected_at", pa.timestamp("us", tz="UTC")),
])


def table_uri(cfg: SinkConfig, name: str) -> str:
    return f"{cfg.uri.rstrip('/')}/{name}.lance"


def staging_uri(cfg: SinkConfig, run_id: str, staging_dir: str | None = None) -> str:
    base = (staging_dir or f"{cfg.uri.rstrip('/')}/_staging").rstrip("/")
    return f"{base}/{run_id}.lance"


def write_staging(ds, uri: str, schema: pa.Schema, storage_options: dict[str, str], num_cpus: float = 1) -> None:
    import lance_ray

    lance_ray.write_lance(ds, uri, schema=schema, mode="create", storage_options=storage_options or None,
                          ray_remote_args={"num_cpus": num_cpus})


@dataclass(frozen=True)
class CommitResult:
    table_version: int
    table_rows: int
    documents_rejected: int
    documents_deleted: int = 0


def _reject_rows(staging: lance.LanceDataset, run_id: str, now: datetime) -> pa.Table:
    """One row per rejected document (a document with several rejected chunks keeps one reason)."""
    rows = staging.to_table(
        columns=["doc_id", "source", *REJECT_COLUMNS, "content_hash", "size_bytes"],
        filter="reject_reason IS NOT NULL",
    ).to_pylist()
    by_doc: dict[str, dict] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], {
            "doc_id": row["doc_id"], "source": row["source"], "stage": row["reject_stage"],
            "reason": row["reject_reason"], "detail": row["reject_detail"],
            "content_hash": row["content_hash"], "size_bytes": row["size_bytes"],
            "run_id": run_id, "rejected_at": now,
        })
    return pa.Table.from_pylist(list(by_doc.values()), schema=REJECTS_SCHEMA)


def _accepted_batches(staging: lance.LanceDataset, columns: list[str], rejected_docs: pa.Array,
                      embedded_docs: set[str]):
    for batch in staging.to_batches(columns=columns, filter="reject_reason IS NULL"):
        if len(rejected_docs):
            batch = batch.filter(pc.invert(pc.is_in(batch.column("doc_id"), value_set=rejected_docs)))
        if batch.num_rows:
            embedded_docs.update(batch.column("doc_id").to_pylist())
            yield batch


def _sql_in(column: str, values: list[str]) -> list[str]:
    """`column IN (...)` filters in slices, so a long list never makes one giant predicate."""
    quoted = ["'" + value.replace("'", "''") + "'" for value in values]
    return [f"{column} IN ({', '.join(quoted[i:i + 500])})" for i in range(0, len(quoted), 500)]


def connect(cfg: SinkConfig):
    """The LanceDB database of the sink; object-store credentials come from the environment."""
    return lancedb.connect(cfg.uri, storage_options=cfg.storage_options or None)


def commit_run(staging_path: str, cfg: SinkConfig, run_id: str, table_metadata: dict,
               prune: bool = False) -> CommitResult:
    """Staged rows -> the table, in one merge: chunks upserted on chunk_id; every other chunk of a
    document this run saw (fewer chunks now, or rejected now) deleted; with `prune`, documents
    this run did not see at all deleted too (the run must cover the complete source)."""
    staging = lance.dataset(staging_path, storage_options=cfg.storage_options or None)
    db = connect(cfg)
    table = _open_table(db, cfg.table)
    if table is not None:
        _check_compatible(table, table_metadata)

    # Computed first: a document with any rejected chunk is kept out of the table below.
    rejects = _reject_rows(staging, run_id, datetime.now(timezone.utc))
    rejected_docs = rejects.column("doc_id").combine_chunks()
    seen_docs = set(staging.to_table(columns=["doc_id"]).column("doc_id").to_pylist())
    rejects_table = _open_table(db, cfg.rejects_table)
    known_docs = _table_docs(table) | _table_docs(rejects_table) if prune else set()
    deleted_docs = sorted(known_docs - seen_docs)
    columns = [name for name in staging.schema.names if name not in REJECT_COLUMNS]
    schema = pa.schema([staging.schema.field(name) for name in columns])
    embedded_docs: set[str] = set()
    accepted = pa.RecordBatchReader.from_batches(
        schema, _accepted_batches(staging, columns, rejected_docs, embedded_docs))
    if table is None:
        table = db.create_table(cfg.table, data=accepted, schema=schema)
    else:
        # One commit: readers never see a document with half its old and half its new chunks.
        replaced = " OR ".join(_sql_in("doc_id", sorted(seen_docs | set(deleted_docs)))) or "false"
        table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all() \
            .when_not_matched_by_source_delete(replaced).execute(accepted)

    # The rejects table says what is wrong *now*: one row per document, gone once it embeds.
    if rejects_table is None and rejects.num_rows:
        rejects_table = db.create_table(cfg.rejects_table, data=rejects)
    elif rejects_table is not None:
        if rejects.num_rows:
            rejects_table.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all() \
                .execute(rejects)
        for predicate in _sql_in("doc_id", sorted(embedded_docs | set(deleted_docs))):
            rejects_table.delete(predicate)

    table.to_lance().update_schema_metadata(
        {TABLE_METADATA_KEY.decode(): json.dumps(table_metadata, sort_keys=True)})
    table.checkout_latest()
    rows = table.count_rows()
    drop_dataset(staging_path)
    return CommitResult(table_version=table.version, table_rows=rows, documents_rejected=rejects.num_rows,
                        documents_deleted=len(deleted_docs))


def _table_docs(table) -> set[str]:
    if table is None:
        return set()
    return set(table.to_lance().to_table(columns=["doc_id"]).column("doc_id").unique().to_pylist())


def _open_table(db, name: str):
    """The table, or None when it does not exist yet (list_tables is paginated; this is not)."""
    try:
        return db.open_table(name)
    except ValueError:
        return None


def read_table_metadata(table) -> dict:
    raw = (table.schema.metadata or {}).get(TABLE_METADATA_KEY)
    return json.loads(raw) if raw else {}


def _check_compatible(table, new_metadata: dict) -> None:
    """Vectors of another model or size must not be mixed into one table."""
    old = read_table_metadata(table)
    for key in ("model", "dimensions"):
        if old and old.get(key) != new_metadata.get(key):
            raise ValueError(
                f"table {table.name!r} holds vectors with {key}={old.get(key)!r}, this run makes "
                f"{new_metadata.get(key)!r}; write to another table (sink.table) instead of mixing them"
            )


def drop_dataset(uri: str) -> None:
    if "://" not in uri:
        shutil.rmtree(uri, ignore_errors=True)
        with contextlib.suppress(OSError):  # the staging folder itself, once no run uses it
            os.rmdir(os.path.dirname(uri))
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.delete_dir(path)
