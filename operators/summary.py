"""Run summary, counted from what the sink committed, so its counts are what was written."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from collections import Counter
from pathlib import Path

import pyarrow as pa

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


class RunTally:
    """What happened to each document of a run, fed by the sink round by round."""

    def __init__(self, tokens_in_table: dict[str, int]):
        self.tokens_in_table = tokens_in_table  # what an unchanged document would have cost
        self.docs: dict[str, dict] = {}
        self.duplicate_records = 0

    def add_round(self, rows: pa.Table, embedded_docs: set[str], rejects: pa.Table) -> None:
        """`rows`: every row the round committed or skipped; `rejects`: one record per rejected document."""
        columns = [name for name in FACT_COLUMNS if name in rows.column_names]
        for row in rows.select(columns).to_pylist():
            doc = self.docs.get(row["doc_id"])
            if doc is None or doc["outcome"] is None:
                doc = self.docs[row["doc_id"]] = {**row, "outcome": None, "chunks": 0, "tokens": 0}
            if row["doc_id"] in embedded_docs:
                doc["outcome"] = "embedded"
                doc["chunks"] += 1
                doc["tokens"] += row["token_count"] or 0
            elif row.get("reject_reason") == SKIP_UNCHANGED:
                doc["outcome"] = "skipped"
        for record in rejects.select(["doc_id", "reason"]).to_pylist():
            doc = self.docs.setdefault(record["doc_id"], {"doc_id": record["doc_id"], "change": None})
            doc.update(outcome="rejected", reason=record["reason"], chunks=0, tokens=0)

    def summary(self) -> dict:
        docs = list(self.docs.values())
        embedded = [doc for doc in docs if doc["outcome"] == "embedded"]
        skipped = [doc for doc in docs if doc["outcome"] == "skipped"]
        rejected = [doc for doc in docs if doc["outcome"] == "rejected"]
        langs = Counter(doc["lang"] if doc["lang"] != "code" else f"code:{doc['code_language']}" for doc in embedded)
        return {
            "documents_in": len(docs),
            "documents_new": sum(1 for doc in docs if doc.get("change") in (CHANGE_NEW, None)),
            "documents_changed": sum(1 for doc in docs if doc.get("change") == CHANGE_CHANGED),
            "documents_unchanged": sum(1 for doc in docs if doc.get("change") == CHANGE_UNCHANGED),
            "documents_embedded": len(embedded),
            "documents_skipped": len(skipped),
            "documents_rejected": len(rejected),
            "rejected_by_reason": dict(Counter(doc["reason"] for doc in rejected)),
            "duplicate_records": self.duplicate_records,
            "chunks": sum(doc["chunks"] for doc in embedded),
            "tokens": sum(doc["tokens"] for doc in embedded),
            # The embedding work the skipped documents did not need this run.
            "tokens_saved": sum(self.tokens_in_table.get(doc["doc_id"], 0) for doc in skipped),
            "documents_by_language": dict(sorted(langs.items())),
            "documents_by_route": dict(sorted(Counter(doc["route"] for doc in embedded).items())),
            "documents_translated": sum(1 for doc in embedded if doc["translated"]),
            # Routed to translation, embedded as they are: translation off, or failed (route direct_fallback).
            "documents_untranslated": sum(1 for doc in embedded if not doc["translated"]
                                          and doc["route"] in (ROUTE_TRANSLATE, ROUTE_DIRECT_FALLBACK)),
            "translation_failures": dict(Counter(doc["translation_error"] for doc in embedded
                                                 if doc["translation_error"])),
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
        f"  by route: {summary['documents_by_route']}  translated: {summary['documents_translated']}"
        f"  untranslated: {summary['documents_untranslated']}",
        f"  by language: {summary['documents_by_language']}",
        f"  wall time: {summary['wall_seconds']:.1f} s   {summary['documents_per_second']:.2f} docs/s"
        f"   {summary['tokens_per_second']:.0f} tokens/s",
    ]
    lines += [f"  index: {line}" for line in summary.get("indexes", [])]
    return "\n".join(lines)
