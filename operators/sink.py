"""Sink: the run's rows -> the LanceDB table, committed in rounds of whole documents.

The driver pulls the pipeline's output as it streams and buffers it per document. Once
a document has all its rows (all its chunks, or its one reject/unchanged row) it is
ready; every `run.commit_rows` ready chunks are committed in one LanceDB `merge_insert`:
chunks upserted on `chunk_id`, the other chunks of those documents deleted (fewer chunks
now, or rejected now), rejects upserted into the rejects table. So a document is never
half old and half new, and the table is the run's checkpoint: each row records its
document's content hash and the config fingerprint it was embedded with, so a run
started again after a crash skips, through `operators.incremental`, every document an
earlier round committed. The last round also deletes what `--prune` removes and the ids
that occurred twice in the run.

Every document of the run ends in exactly one of: embedded (chunks in the table),
unchanged (left as it was), rejected (one row in the rejects table, why). A document
with any rejected chunk is rejected whole. Runs against one table must not overlap:
`operators/table_lock.py` serializes them.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from babelray.config import SinkConfig
from babelray.metrics import count
from operators.incremental import KNOWN_COLUMNS
from operators.schema import (
    FINGERPRINT_FIELD,
    REJECT_DUPLICATE_ID,
    REJECT_INCOMPLETE,
    SKIP_UNCHANGED,
    table_schema,
)
from operators.summary import RunTally
from operators.table_alias import TableNames

logger = logging.getLogger(__name__)
TABLE_METADATA_KEY = b"babelray"
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
SQL_IN_SLICE = 500


def table_uri(cfg: SinkConfig, name: str) -> str:
    return f"{cfg.uri.rstrip('/')}/{name}.lance"


def connect(cfg: SinkConfig):
    """The LanceDB database of the sink; object-store credentials come from the environment."""
    return lancedb.connect(cfg.uri, storage_options=cfg.storage_options or None)


def open_table(db, name: str):
    """The table, or None when it does not exist yet (list_tables is paginated; this is not)."""
    try:
        return db.open_table(name)
    except ValueError:
        return None


def read_table_metadata(table) -> dict:
    raw = (table.schema.metadata or {}).get(TABLE_METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_table_metadata(table, metadata: dict) -> None:
    """Store `metadata` in the table's schema (what `read_table_metadata` returns)."""
    table.to_lance().update_schema_metadata({TABLE_METADATA_KEY.decode(): json.dumps(metadata, sort_keys=True)})
    table.checkout_latest()


def require_model(table_name: str, metadata: dict, model: str, dimensions: int) -> None:
    """Vectors are only comparable with the model and size the table was embedded with."""
    for key, value in {"model": model, "dimensions": str(dimensions)}.items():
        if metadata.get(key) != value:
            raise ValueError(f"table {table_name!r} was embedded with {key}={metadata.get(key)!r}, the config asks "
                             f"for {value!r}: use the table's own model and size")


def sql_string(value: str) -> str:
    """A string literal for a LanceDB filter."""
    return "'" + value.replace("'", "''") + "'"


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim from the symbols this process already has loaded, or None (another C
    library, another OS). Looked up on first use, not at import: every CLI command imports this module."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory that glibc holds freed back to the OS. Each LanceDB merge_insert frees what it
    allocated, but glibc keeps most of it: a lone process grew 387 MiB over 180 commits of 5,500 rows
    without this and 172 MiB with it (docs/benchmarks.md); a call takes milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _sql_in(column: str, values) -> str:
    """`column IN (...)` in slices OR-ed together, so no single list grows huge; 'false' when empty."""
    quoted = [sql_string(value) for value in sorted(values)]
    parts = [f"{column} IN ({', '.join(quoted[i:i + SQL_IN_SLICE])})" for i in range(0, len(quoted), SQL_IN_SLICE)]
    return " OR ".join(parts) or "false"


@dataclass(frozen=True)
class TableState:
    """What the table holds per document, read once before a run: the incremental stage
    compares against it, the summary counts the tokens an unchanged document saves."""

    embedded: pa.Table  # KNOWN_COLUMNS, one row per document in the chunks table
    rejected: pa.Table  # doc_id, content_hash: documents in the rejects table
    tokens: dict[str, int]  # doc_id -> tokens of its chunks

    @classmethod
    def empty(cls) -> TableState:
        return cls(pa.table({name: pa.array([], pa.string()) for name in KNOWN_COLUMNS}),
                   pa.table({"doc_id": pa.array([], pa.string()), "content_hash": pa.array([], pa.string())}), {})

    @classmethod
    def read(cls, table, rejects) -> TableState:
        """From the chunks table (with its fingerprint column) and the rejects table, or None."""
        embedded, rejected, tokens = cls.empty().embedded, cls.empty().rejected, {}
        if table is not None:
            rows = table.to_lance().to_table(columns=[*KNOWN_COLUMNS, "token_count"])
            per_doc = rows.group_by("doc_id").aggregate([("content_hash", "min"), ("embedding_fingerprint", "min"),
                                                         ("token_count", "sum")])
            embedded = pa.table({"doc_id": per_doc["doc_id"], "content_hash": per_doc["content_hash_min"],
                                 "embedding_fingerprint": per_doc["embedding_fingerprint_min"]})
            tokens = dict(zip(per_doc["doc_id"].to_pylist(), per_doc["token_count_sum"].to_pylist()))
        if rejects is not None:
            rejected = rejects.to_lance().to_table(columns=["doc_id", "content_hash"])
        return cls(embedded, rejected, tokens)

    def documents(self) -> set[str]:
        return set(self.embedded.column("doc_id").to_pylist()) | set(self.rejected.column("doc_id").to_pylist())


def _add_fingerprint_column(table) -> None:
    """Tables written before rows carried a fingerprint get the one their metadata names."""
    if FINGERPRINT_FIELD.name in table.schema.names:
        return
    fingerprint = read_table_metadata(table).get("fingerprint", "")
    table.add_columns({FINGERPRINT_FIELD.name: f"'{fingerprint}'"})


def check_compatible(table, metadata: dict) -> None:
    """One table holds vectors of one config: another model, size, prompt or chunking is a
    re-embedding (`babelray reembed`), which builds a new table instead of mixing."""
    old = read_table_metadata(table)
    for key in ("model", "dimensions", "fingerprint"):
        if old and old.get(key) != metadata.get(key):
            raise ValueError(
                f"table {table.name!r} holds vectors with {key}={old.get(key)!r}, this config makes "
                f"{metadata.get(key)!r}: `babelray reembed --config ...` builds a new table from it and "
                f"switches to it (the old one stays for `babelray rollback`)"
            )


@dataclass
class CommitResult:
    table_version: int
    table_rows: int
    commits: int
    documents_deleted: int


@dataclass
class _Pending:
    """Rows of documents not committed yet, and how many rows each one still lacks."""

    batches: list[pa.Table] = field(default_factory=list)
    missing: dict[str, set[int]] = field(default_factory=dict)  # doc_id -> chunk indexes still to come
    ready_docs: set[str] = field(default_factory=set)
    ready_rows: int = 0


class TableWriter:
    """Driver side of the sink: `add` each output batch, then `finish` once. Opening it refuses a
    table of another config, and reads what the table holds (`known`) for the incremental stage;
    `tally` counts what the run did."""

    def __init__(self, cfg: SinkConfig, names: TableNames, *, run_id: str, metadata: dict, dimensions: int,
                 commit_rows: int):
        self.cfg, self.names, self.run_id, self.metadata = cfg, names, run_id, metadata
        self.fingerprint = metadata["fingerprint"]
        self.schema = table_schema(dimensions)
        self.commit_rows = commit_rows
        self.db = connect(cfg)
        self.table = open_table(self.db, names.chunks)
        if self.table is None:
            # Created up front and empty, so every round is the same merge.
            self.table = self.db.create_table(names.chunks, schema=self.schema)
            self._write_metadata()
        else:
            check_compatible(self.table, metadata)
            _add_fingerprint_column(self.table)
        self.rejects = open_table(self.db, names.rejects)
        self.known = TableState.read(self.table, self.rejects)
        self.tally = RunTally(self.known.tokens)
        self.pending = _Pending()
        self.duplicates: dict[str, list[str]] = {}  # doc_id -> sources of its repeated records
        self.seen: set[str] = set()
        self.late_rejects: list[dict] = []  # documents that never came out of the pipeline (see `reject`)
        self.commits = 0

    # ------------------------------------------------------------------ intake

    def add(self, batch: pa.Table) -> None:
        reasons = batch.column("reject_reason").to_pylist()
        is_duplicate = [reason == REJECT_DUPLICATE_ID for reason in reasons]
        if any(is_duplicate):
            for doc_id, source, duplicate in zip(batch.column("doc_id").to_pylist(),
                                                 batch.column("source").to_pylist(), is_duplicate):
                if duplicate:
                    self.duplicates.setdefault(doc_id, []).append(source)
            batch = batch.filter(pa.array([not d for d in is_duplicate]))
        for doc_id, n_chunks, chunk_index in zip(batch.column("doc_id").to_pylist(),
                                                 batch.column("n_chunks").to_pylist(),
                                                 batch.column("chunk_index").to_pylist()):
            self.seen.add(doc_id)
            # A chunk row knows how many chunks its document has; any other row is the document. Sets,
            # not counts: a retried task may deliver a row twice (the copies are dropped at commit).
            if chunk_index is None:
                missing = set()
            else:
                missing = self.pending.missing.get(doc_id, set(range(n_chunks)))
                missing.discard(chunk_index)
            if missing:
                self.pending.missing[doc_id] = missing
            else:
                self.pending.missing.pop(doc_id, None)
                self.pending.ready_docs.add(doc_id)
                self.pending.ready_rows += n_chunks or 1
        self.pending.batches.append(batch)
        if self.pending.ready_rows >= self.commit_rows:
            self._commit_ready()

    def reject(self, sources: dict[str, str], stage: str, reason: str, detail: str) -> None:
        """Documents (doc_id -> source) that never came out of the pipeline whole, to be rejected in
        the last commit."""
        now = datetime.now(timezone.utc)
        self.seen.update(sources)
        self.late_rejects.extend({"doc_id": doc_id, "source": source, "stage": stage, "reason": reason,
                                  "detail": detail, "content_hash": None, "size_bytes": None, "run_id": self.run_id,
                                  "rejected_at": now} for doc_id, source in sorted(sources.items()))

    def drop_incomplete(self) -> dict[str, tuple[str, int]]:
        """Forget the documents still missing rows (the rest was in a block that failed), so that they
        count as lost and can be read again whole. Returns doc_id -> (source, chunks missing)."""
        if not self.pending.missing:
            return {}
        rows = pa.concat_tables(self.pending.batches)
        lost = pc.is_in(rows.column("doc_id"), value_set=pa.array(sorted(self.pending.missing), pa.string()))
        lost_rows = rows.filter(lost)
        sources = dict(zip(lost_rows.column("doc_id").to_pylist(), lost_rows.column("source").to_pylist()))
        dropped = {doc_id: (sources[doc_id], len(missing)) for doc_id, missing in self.pending.missing.items()}
        rest = rows.filter(pc.invert(lost))
        self.pending.batches = [rest] if rest.num_rows else []
        self.pending.missing = {}
        self.seen -= set(dropped)
        return dropped

    # ------------------------------------------------------------------ commits

    def _take_ready(self) -> pa.Table | None:
        if not self.pending.batches:
            return None
        rows = pa.concat_tables(self.pending.batches)
        ready = pc.is_in(rows.column("doc_id"), value_set=pa.array(sorted(self.pending.ready_docs), pa.string()))
        rest = rows.filter(pc.invert(ready))
        self.pending.batches = [rest] if rest.num_rows else []
        self.pending.ready_docs, self.pending.ready_rows = set(), 0
        return _first_of_each(rows.filter(ready))

    def _commit_ready(self, *, also_delete: set[str] = frozenset(), also_reject: pa.Table | None = None) -> None:
        rows = self._take_ready()
        if rows is None:
            rows = pa.table({name: pa.array([], pa.string()) for name in ("doc_id", "reject_reason")})
        reasons = rows.column("reject_reason")
        unchanged = pc.equal(reasons, SKIP_UNCHANGED).fill_null(False)
        rejected_rows = rows.filter(pc.and_(pc.is_valid(reasons), pc.invert(unchanged)))
        rejected_docs = pc.unique(rejected_rows.column("doc_id"))
        # Only a document all of whose chunks embedded goes in; ids seen twice never do.
        keep_out = pa.concat_arrays([rejected_docs.cast(pa.string()),
                                     pa.array(sorted(self.duplicates), pa.string())])
        chunks = rows.filter(pc.and_(pc.is_null(reasons), pc.invert(pc.is_in(rows.column("doc_id"),
                                                                                 value_set=keep_out))))
        rejects = _reject_records(rejected_rows, self.run_id)
        if also_reject is not None:
            rejects = pa.concat_tables([rejects, also_reject])
        embedded_docs = set(chunks.column("doc_id").to_pylist())
        replaced = embedded_docs | set(rejects.column("doc_id").to_pylist()) | set(also_delete)

        source = self._table_rows(chunks)
        # One commit per round: readers never see a document with half its old and half its new chunks.
        self.table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all() \
            .when_not_matched_by_source_delete(_sql_in("doc_id", replaced)).execute(source)
        rejected_now = set(rejects.column("doc_id").to_pylist())
        self._commit_rejects(rejects, gone=(embedded_docs | set(also_delete)) - rejected_now)
        self.tally.add_round(rows, embedded_docs, rejects)
        self._count_round(embedded_docs, pc.count_distinct(rows.filter(unchanged).column("doc_id")).as_py(), rejects)
        self.commits += 1
        release_freed_memory()
        logger.info("commit %d: %d chunks of %d documents, %d rejected", self.commits, chunks.num_rows,
                    len(embedded_docs), rejects.num_rows)

    @staticmethod
    def _count_round(embedded_docs: set[str], skipped: int, rejects: pa.Table) -> None:
        count("babelray_documents_embedded_total", len(embedded_docs))
        count("babelray_documents_skipped_total", skipped)
        for (stage, reason), n in Counter(zip(rejects.column("stage").to_pylist(),
                                              rejects.column("reason").to_pylist())).items():
            count("babelray_documents_rejected_total", n, stage=stage or "none", reason=reason)

    def _table_rows(self, chunks: pa.Table) -> pa.Table:
        columns = {}
        for schema_field in self.schema:
            if schema_field.name == FINGERPRINT_FIELD.name:
                columns[schema_field.name] = pa.array([self.fingerprint] * chunks.num_rows, pa.string())
            elif chunks.num_rows:
                columns[schema_field.name] = chunks.column(schema_field.name).cast(schema_field.type)
            else:
                columns[schema_field.name] = pa.array([], schema_field.type)
        return pa.table(columns, schema=self.schema)

    def _commit_rejects(self, rejects: pa.Table, gone: set[str]) -> None:
        """The rejects table says what is wrong *now*: one row per document, gone once it embeds."""
        if self.rejects is None:
            if not rejects.num_rows:
                return
            self.rejects = self.db.create_table(self.names.rejects, data=rejects)
            return
        if rejects.num_rows:
            self.rejects.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all() \
                .execute(rejects)
        if gone:
            self.rejects.delete(_sql_in("doc_id", gone))

    def finish(self, *, prune: bool) -> CommitResult:
        """Commit the rest. A document still missing rows (a lost block) is rejected, not dropped."""
        for doc_id, (source, missing) in self.drop_incomplete().items():
            logger.error("document %s lacks %d chunks at the end of the run", doc_id, missing)
            self.reject({doc_id: source}, "sink", REJECT_INCOMPLETE, f"{missing} of its chunks never reached the sink")
        for doc_id, sources in sorted(self.duplicates.items()):
            self.reject({doc_id: sources[0]}, "incremental", REJECT_DUPLICATE_ID,
                        f"{len(sources) + 1} records in this run have this id (also read from: "
                        f"{', '.join(sorted(set(sources)))}); ids must be unique")
        deleted = (self.known.documents() - self.seen - set(self.duplicates)) if prune else set()
        final_rejects = pa.Table.from_pylist(self.late_rejects, schema=REJECTS_SCHEMA)
        self.tally.duplicate_records = sum(len(sources) for sources in self.duplicates.values())
        self._commit_ready(also_delete=deleted | set(self.duplicates), also_reject=final_rejects)
        self._write_metadata()
        if self.commits > 1:
            self.table.optimize()  # rounds leave small fragments; compact them once
        self.table.checkout_latest()
        return CommitResult(table_version=self.table.version, table_rows=self.table.count_rows(),
                            commits=self.commits, documents_deleted=len(deleted))

    def _write_metadata(self) -> None:
        write_table_metadata(self.table, self.metadata)


def _first_of_each(rows: pa.Table) -> pa.Table:
    """One row per chunk (or per document, for rows that are not chunks)."""
    keys = [chunk or f"{doc}\x00{reason}" for chunk, doc, reason in zip(
        *(rows.column(name).to_pylist() for name in ("chunk_id", "doc_id", "reject_reason")))]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return rows if len(first) == len(keys) else rows.take(sorted(first.values()))


def _reject_records(rows: pa.Table, run_id: str) -> pa.Table:
    """One record per rejected document (a document with several rejected chunks keeps one reason)."""
    by_doc: dict[str, dict] = {}
    now = datetime.now(timezone.utc)
    if rows.num_rows:
        for row in rows.select(["doc_id", "source", "reject_stage", "reject_reason", "reject_detail",
                                "content_hash", "size_bytes"]).to_pylist():
            by_doc.setdefault(row["doc_id"], {
                "doc_id": row["doc_id"], "source": row["source"], "stage": row["reject_stage"],
                "reason": row["reject_reason"], "detail": row["reject_detail"],
                "content_hash": row["content_hash"], "size_bytes": row["size_bytes"],
                "run_id": run_id, "rejected_at": now,
            })
    return pa.Table.from_pylist(list(by_doc.values()), schema=REJECTS_SCHEMA)
