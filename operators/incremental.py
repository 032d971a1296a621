"""Incremental stage: which documents this run must embed, by the table it writes to.

Runs right after reading, before any model. A document whose content hash and
config fingerprint equal what the table holds for its id is marked `unchanged`
(its text is dropped; later stages pass it on, the sink counts it), so an
unchanged document costs a lookup here, not a model call. The others are
labelled `new` or `changed` for the run summary.

It also finds ids that occur more than once in a run: the stage runs as a single
actor, so it sees every id, and marks each repeated record `duplicate_id`. The
sink then rejects the id as a whole (see `operators.sink`), whichever record
came first, so the outcome does not depend on the order Ray delivered them in.

And it reports every id to the run's `RunLedger`, so that the driver can name the
documents a crashed worker took down with it instead of losing them silently.
"""

from __future__ import annotations

import pyarrow as pa
import ray

from babelray.metrics import timed_stage
from operators.schema import (
    CHANGE_CHANGED,
    CHANGE_NEW,
    CHANGE_UNCHANGED,
    REJECT_DUPLICATE_ID,
    SKIP_UNCHANGED,
    append_columns,
)

STAGE = "incremental"
# Columns of the per-document state read from the table (see `operators.sink.TableState`).
KNOWN_COLUMNS = ["doc_id", "content_hash", "embedding_fingerprint"]


@ray.remote(num_cpus=0)
class RunLedger:
    """Every document id the run read, with its source; lives as long as the run's driver."""

    def __init__(self):
        self.sources: dict[str, str] = {}

    def record(self, doc_ids: list[str], sources: list[str]) -> None:
        for doc_id, source in zip(doc_ids, sources):
            self.sources.setdefault(doc_id, source)

    def read(self) -> dict[str, str]:
        return self.sources


class ClassifyChanges:
    def __init__(self, embedded: pa.Table, rejected: pa.Table, fingerprint: str, ledger=None,
                 redo: frozenset[str] = frozenset()):
        """`embedded`: one row per document in the chunks table (KNOWN_COLUMNS); `rejected`: doc_id and
        content_hash of the documents in the rejects table; `fingerprint`: this run's config fingerprint;
        `ledger`: a RunLedger handle, or None; `redo`: ids embedded again even when unchanged
        (the drift job's re-embedding of a drifted slice)."""
        self.fingerprint = fingerprint
        self.ledger = ledger
        self.redo = redo
        self.embedded = {doc_id: (content, config) for doc_id, content, config in zip(
            *(embedded.column(name).to_pylist() for name in KNOWN_COLUMNS))}
        self.rejected = dict(zip(rejected.column("doc_id").to_pylist(), rejected.column("content_hash").to_pylist()))
        self.first_source: dict[str, str] = {}

    def classify(self, doc_id: str, content_hash: str | None) -> str:
        if doc_id in self.embedded:
            return CHANGE_UNCHANGED if self.embedded[doc_id] == (content_hash, self.fingerprint) else CHANGE_CHANGED
        if doc_id in self.rejected:
            # Same content as when it was rejected; it is still processed again, since a rejection
            # may depend on things outside the document (a model that could not load, a size limit).
            return CHANGE_UNCHANGED if self.rejected[doc_id] == content_hash else CHANGE_CHANGED
        return CHANGE_NEW

    def skips(self, doc_id: str, content_hash: str | None) -> bool:
        """Embedded before from the same content with the same config: nothing to do."""
        return doc_id not in self.redo and self.embedded.get(doc_id) == (content_hash, self.fingerprint)

    @timed_stage("incremental")
    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {name: batch.column(name).to_pylist()
                   for name in ("doc_id", "source", "content_hash", "text", "reject_stage", "reject_reason",
                                "reject_detail")}
        if self.ledger is not None:  # waited for: the driver reads the ledger once the stream has ended
            ray.get(self.ledger.record.remote(columns["doc_id"], columns["source"]))
        changes = []
        for i, doc_id in enumerate(columns["doc_id"]):
            changes.append(self.classify(doc_id, columns["content_hash"][i]))
            kept = self.first_source.get(doc_id)
            if kept is not None:
                columns["reject_stage"][i], columns["reject_reason"][i] = STAGE, REJECT_DUPLICATE_ID
                columns["reject_detail"][i] = f"another record with this id was read from {kept}"
                columns["text"][i] = None
                continue
            self.first_source[doc_id] = columns["source"][i]
            if columns["reject_reason"][i] is None and self.skips(doc_id, columns["content_hash"][i]):
                columns["reject_stage"][i], columns["reject_reason"][i] = STAGE, SKIP_UNCHANGED
                columns["text"][i] = None
        return append_columns(batch, {
            "text": pa.array(columns["text"], pa.string()),
            "reject_stage": pa.array(columns["reject_stage"], pa.string()),
            "reject_reason": pa.array(columns["reject_reason"], pa.string()),
            "reject_detail": pa.array(columns["reject_detail"], pa.string()),
            "change": pa.array(changes, pa.string()),
        })
