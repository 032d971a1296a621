"""Run summary, counted from what the sink committed, so its counts are what was written."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timezone
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from operators.schema import (
    CHANGE_CHANGED,
    CHANGE_NEW,
    CHANGE_UNCHANGED,
    ROUTE_DIRECT_FALLBACK,
    ROUTE_TRANSLATE,
    SKIP_UNCHANGED,
)


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by time, unique across machines: 20261205T043408Z-332a0548."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


FACT_COLUMNS = ["doc_id", "change", "reject_reason", "lang", "route", "code_language", "translated",
                "translation_error", "token_count"]


class _Doc(NamedTuple):
    """What the summary needs of one document. A tuple with interned strings, not a dict: the tally
    holds one per document of the run, so its size is what the driver's memory grows by per document."""

    outcome: str | None  # embedded, skipped, rejected; None while its rows are still coming
    change: str | None
    language: str | None  # the language, or code:<language> for source code
    route: str | None
    translated: bool | None
    translation_error: str | None
    reason: str | None = None
    chunks: int = 0
    tokens: int = 0


def _interned(value):
    return sys.intern(value) if isinstance(value, str) else value


class RunTally:
    """What happened to each document of a run, fed by the sink round by round."""

    def __init__(self, tokens_in_table: dict[str, int]):
        self.tokens_in_table = tokens_in_table  # what an unchanged document would have cost
        self.docs: dict[str, _Doc] = {}
        self.duplicate_records = 0
        # What the model computed, whatever became of the documents afterwards.
        self.model_tokens = self.padded_tokens = 0

    def add_round(self, rows: pa.Table, embedded_docs: set[str], rejects: pa.Table) -> None:
        """`rows`: every row the round committed or skipped; `rejects`: one record per rejected document."""
        if "padded_tokens" in rows.column_names:
            self.model_tokens += pc.sum(rows.column("model_tokens")).as_py() or 0
            self.padded_tokens += pc.sum(rows.column("padded_tokens")).as_py() or 0
        columns = [name for name in FACT_COLUMNS if name in rows.column_names]
        for row in rows.select(columns).to_pylist():
            doc_id = row["doc_id"]
            doc = self.docs.get(doc_id)
            if doc is None or doc.outcome is None:
                lang = row.get("lang")
                doc = _Doc(None, _interned(row.get("change")),
                           _interned(f"code:{row.get('code_language')}" if lang == "code" else lang),
                           _interned(row.get("route")), row.get("translated"), row.get("translation_error"))
            if doc_id in embedded_docs:
                doc = doc._replace(outcome="embedded", chunks=doc.chunks + 1,
                                   tokens=doc.tokens + (row.get("token_count") or 0))
            elif row.get("reject_reason") == SKIP_UNCHANGED:
                doc = doc._replace(outcome="skipped")
            self.docs[doc_id] = doc
        for record in rejects.select(["doc_id", "reason"]).to_pylist():
            doc = self.docs.get(record["doc_id"]) or _Doc(None, None, None, None, None, None)
            self.docs[record["doc_id"]] = doc._replace(outcome="rejected", reason=_interned(record["reason"]),
                                                       chunks=0, tokens=0)

    def summary(self) -> dict:
        docs = self.docs.values()
        embedded = [doc for doc in docs if doc.outcome == "embedded"]
        rejected = [doc for doc in docs if doc.outcome == "rejected"]
        skipped = [doc_id for doc_id, doc in self.docs.items() if doc.outcome == "skipped"]
        return {
            "documents_in": len(self.docs),
            "documents_new": sum(1 for doc in docs if doc.change in (CHANGE_NEW, None)),
            "documents_changed": sum(1 for doc in docs if doc.change == CHANGE_CHANGED),
            "documents_unchanged": sum(1 for doc in docs if doc.change == CHANGE_UNCHANGED),
            "documents_embedded": len(embedded),
            "documents_skipped": len(skipped),
            "documents_rejected": len(rejected),
            "rejected_by_reason": dict(Counter(doc.reason for doc in rejected)),
            "duplicate_records": self.duplicate_records,
            "chunks": sum(doc.chunks for doc in embedded),
            "tokens": sum(doc.tokens for doc in embedded),
            # The embedding work the skipped documents did not need this run.
            "tokens_saved": sum(self.tokens_in_table.get(doc_id, 0) for doc_id in skipped),
            # Padded tokens per token the model read (1.0 = no padding): its waste on padding.
            "model_tokens": self.model_tokens,
            "padding": round(self.padded_tokens / self.model_tokens, 4) if self.model_tokens else None,
            "documents_by_language": dict(sorted(Counter(doc.language for doc in embedded).items())),
            "documents_by_route": dict(sorted(Counter(doc.route for doc in embedded).items())),
            "documents_translated": sum(1 for doc in embedded if doc.translated),
            # Routed to translation, embedded as they are: translation off, or failed (route direct_fallback).
            "documents_untranslated": sum(1 for doc in embedded if not doc.translated
                                          and doc.route in (ROUTE_TRANSLATE, ROUTE_DIRECT_FALLBACK)),
            "translation_failures": dict(Counter(doc.translation_error for doc in embedded
                                                 if doc.translation_error)),
        }


def write_summary(summary: dict, summary_dir: str, run_id: str) -> Path:
    folder = Path(summary_dir) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.json"
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def format_summary(summary: dict) -> str:
    lines = [
        f"run {summary['run_id']}  ->  {summary['table']}",
        f"  documents: {summary['documents_in']} in = {summary['documents_new']} new"
        f" + {summary['documents_changed']} changed + {summary['documents_unchanged']} unchanged",
        f"             {summary['documents_in']} in = {summary['documents_embedded']} embedded"
        f" + {summary['documents_skipped']} skipped (already embedded as they are)"
        f" + {summary['documents_rejected']} rejected",
    ]
    if summary.get("documents_deleted"):
        lines.append(f"  deleted (pruned, no longer in the input): {summary['documents_deleted']}")
    if summary.get("duplicate_records"):
        lines.append(f"  records with an id seen twice in this run: {summary['duplicate_records']} "
                     "(each such id is rejected whole)")
    for reason, count in sorted(summary["rejected_by_reason"].items()):
        lines.append(f"    rejected {reason}: {count}")
    for reason, count in sorted(summary["translation_failures"].items()):
        lines.append(f"    not translated ({count}): {reason}")
    lines += [
        f"  chunks: {summary['chunks']}   tokens: {summary['tokens']}"
        f"   saved by skipping: {summary['tokens_saved']} tokens   commits: {summary['commits']}",
        f"  model tokens: {summary['model_tokens']}   padding: {summary['padding'] or 1:.3f}x",
        f"  by route: {summary['documents_by_route']}  translated: {summary['documents_translated']}"
        f"  untranslated: {summary['documents_untranslated']}",
        f"  by language: {summary['documents_by_language']}",
        f"  wall time: {summary['wall_seconds']:.1f} s   {summary['documents_per_second']:.2f} docs/s"
        f"   {summary['tokens_per_second']:.0f} tokens/s",
    ]
    if summary.get("seconds"):
        lines.append("  seconds: " + ", ".join(f"{phase} {value:.1f}" for phase, value in summary["seconds"].items()))
    if summary.get("operators"):
        # Task time summed per operator: where the work went (stages overlap, so these exceed the wall time).
        lines.append("  task seconds: " + ", ".join(f"{name} {values['task_seconds']:.1f}"
                                                    for name, values in summary["operators"].items()))
    lines += [f"  index: {line}" for line in summary.get("indexes", [])]
    return "\n".join(lines)
