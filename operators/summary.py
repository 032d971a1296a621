"""Run summary computed from the staged rows, so its counts are what was written."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lance
import pyarrow.compute as pc

from operators.schema import ROUTE_DIRECT_FALLBACK, ROUTE_TRANSLATE


def summarize_staging(staging_path: str, storage_options: dict[str, str] | None = None) -> dict:
    staging = lance.dataset(staging_path, storage_options=storage_options or None)
    table = staging.to_table(columns=["doc_id", "reject_reason", "lang", "route", "code_language", "token_count",
                                      "translated", "translation_error"])
    rejected = table.filter(pc.is_valid(table.column("reject_reason")))
    rejected_docs = set(rejected.column("doc_id").to_pylist())
    accepted = table.filter(pc.and_(pc.is_null(table.column("reject_reason")),
                                    pc.invert(pc.is_in(table.column("doc_id"),
                                                       value_set=rejected.column("doc_id").unique()))))

    reasons: dict[str, str] = {}
    for doc_id, reason in zip(rejected.column("doc_id").to_pylist(), rejected.column("reject_reason").to_pylist()):
        reasons.setdefault(doc_id, reason)

    # Per-document facts from the first chunk of each embedded document.
    first_chunk: dict[str, dict] = {}
    for row in accepted.select(["doc_id", "lang", "route", "code_language", "translated",
                                "translation_error"]).to_pylist():
        first_chunk.setdefault(row["doc_id"], row)
    langs = Counter(row["lang"] if row["lang"] != "code" else f"code:{row['code_language']}"
                    for row in first_chunk.values())
    routes = Counter(row["route"] for row in first_chunk.values())
    tokens = int(pc.sum(accepted.column("token_count")).as_py() or 0)
    all_docs = set(table.column("doc_id").to_pylist())
    return {
        "documents_in": len(all_docs),
        "documents_embedded": len(first_chunk),
        "documents_rejected": len(rejected_docs),
        "rejected_by_reason": dict(Counter(reasons.values())),
        "chunks": accepted.num_rows,
        "tokens": tokens,
        "documents_by_language": dict(sorted(langs.items())),
        "documents_by_route": dict(sorted(routes.items())),
        "documents_translated": sum(1 for row in first_chunk.values() if row["translated"]),
        # Routed to translation, embedded as they are: translation off, or failed (route direct_fallback).
        "documents_untranslated": sum(1 for row in first_chunk.values()
                                      if row["route"] in (ROUTE_TRANSLATE, ROUTE_DIRECT_FALLBACK) and not row["translated"]),
        "translation_failures": dict(Counter(row["translation_error"] for row in first_chunk.values()
                                             if row["translation_error"])),
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
        f"  documents: {summary['documents_in']} in = {summary['documents_embedded']} embedded"
        f" + {summary['documents_rejected']} rejected",
    ]
    for reason, count in sorted(summary["rejected_by_reason"].items()):
        lines.append(f"    rejected {reason}: {count}")
    for reason, count in sorted(summary["translation_failures"].items()):
        lines.append(f"    not translated ({count}): {reason}")
    lines += [
        f"  chunks: {summary['chunks']}   tokens: {summary['tokens']}",
        f"  by route: {summary['documents_by_route']}  translated: {summary['documents_translated']}"
        f"  untranslated: {summary['documents_untranslated']}",
        f"  by language: {summary['documents_by_language']}",
        f"  wall time: {summary['wall_seconds']:.1f} s   {summary['documents_per_second']:.2f} docs/s"
        f"   {summary['tokens_per_second']:.0f} tokens/s",
    ]
    if summary.get("documents_deleted"):
        lines.insert(2, f"  deleted (pruned, no longer in the input): {summary['documents_deleted']}")
    lines += [f"  index: {line}" for line in summary.get("indexes", [])]
    return "\n".join(lines)
