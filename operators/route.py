"""Routing stage: which documents are embedded directly and which need translation.

Languages the embedding model serves well (config `routing.direct_languages`)
go straight on; confidently detected other languages get route `translate`.
The MarianMT stage is not wired in yet, so `translate` rows continue
untranslated and the run summary counts them; nothing is faked.
"""

from __future__ import annotations

import pyarrow as pa

from babelray.config import RoutingConfig
from babelray.metrics import timed_stage
from operators.schema import ROUTE_CODE, ROUTE_DIRECT, ROUTE_TRANSLATE, append_columns


class RouteDocuments:
    def __init__(self, cfg: RoutingConfig):
        self.direct = {lang.lower() for lang in cfg.direct_languages}
        self.translate_min_score = cfg.translate_min_score

    def route(self, kind: str, lang: str, score: float) -> str:
        if kind == "code":
            return ROUTE_CODE
        # A shaky language guess is no reason to run a translation model.
        if lang in self.direct or score < self.translate_min_score:
            return ROUTE_DIRECT
        return ROUTE_TRANSLATE

    @timed_stage("route")
    def __call__(self, batch: pa.Table) -> pa.Table:
        routes = [
            None if reason is not None else self.route(kind, lang, score)
            for kind, lang, score, reason in zip(
                batch.column("kind").to_pylist(), batch.column("lang").to_pylist(),
                batch.column("lang_score").to_pylist(), batch.column("reject_reason").to_pylist())
        ]
        return append_columns(batch, {"route": pa.array(routes, pa.string())})


def route_documents(batch: pa.Table, *, routing_cfg: RoutingConfig) -> pa.Table:
    """`RouteDocuments` as a Ray task; here rather than in the pipeline so its worker stays light."""
    return RouteDocuments(routing_cfg)(batch)
