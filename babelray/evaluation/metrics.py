"""Ranking metrics for one relevant document per query (XQuAD, FastAPI pages, Tatoeba)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

CUTOFFS = (1, 5, 10)
METRIC_NAMES = ("R@1", "R@5", "R@10", "MRR@10", "nDCG@10")


def first_rank(ranked: Sequence[str], gold: str) -> int | None:
    """1-based rank of the gold id, None when it is missing."""
    for rank, doc_id in enumerate(ranked, start=1):
        if doc_id == gold:
            return rank
    return None


def ranking_metrics(rankings: Sequence[Sequence[str]], golds: Sequence[str]) -> dict[str, float]:
    """Recall@1/5/10, MRR@10 and nDCG@10 in percent, averaged over queries.

    With a single relevant document the ideal DCG is 1, so nDCG@10 = 1/log2(rank + 1)."""
    if len(rankings) != len(golds):
        raise ValueError(f"{len(rankings)} rankings for {len(golds)} gold ids")
    if not golds:
        raise ValueError("no queries to score")
    ranks = [first_rank(ranked, gold) for ranked, gold in zip(rankings, golds)]
    result = {f"R@{k}": _mean(r is not None and r <= k for r in ranks) for k in CUTOFFS}
    result["MRR@10"] = _mean(1.0 / r if r is not None and r <= 10 else 0.0 for r in ranks)
    result["nDCG@10"] = _mean(1.0 / math.log2(r + 1) if r is not None and r <= 10 else 0.0 for r in ranks)
    return result


def average(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    rows = list(rows)
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}


def unique_in_order(ids: Iterable[str], limit: int) -> list[str]:
    """Chunk hits -> document ranking: each document at the rank of its best chunk."""
    seen: dict[str, None] = {}
    for doc_id in ids:
        seen.setdefault(doc_id, None)
        if len(seen) == limit:
            break
    return list(seen)


def exact_document_rankings(queries: np.ndarray, chunks: np.ndarray, chunk_docs: Sequence[str],
                            limit: int = 10) -> list[list[str]]:
    """Exact cosine search in memory (unit vectors): documents ranked by their best chunk."""
    scores = queries @ chunks.T
    return [unique_in_order((chunk_docs[i] for i in np.argsort(-row, kind="stable")), limit) for row in scores]


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return 100.0 * sum(values) / len(values)
