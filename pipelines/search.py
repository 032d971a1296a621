"""Search over a babelray table: vector, full-text, or hybrid (reciprocal rank fusion).

A query goes the way a document went: language ID, translation when its
language is routed to translation (same Translator as ingest), the model's
query prompt from the table metadata, the same model and dimensions as the
table (a mismatch is refused).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from babelray.config import Config
from babelray.embedding_model import EmbeddingModel, load_model_spec
from operators.langid import DetectLanguage
from operators.route import RouteDocuments
from operators.schema import ROUTE_TRANSLATE
from operators.sink import connect, read_table_metadata

Mode = Literal["vector", "fts", "hybrid"]
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009)
FTS_COLUMNS = ("text", "text_original")
ANN_MIN_ROWS = 100_000  # below this, exact search is fast enough and exact
RESULT_COLUMNS = ["doc_id", "chunk_id", "doc_section", "start_line", "end_line", "lang", "route", "text"]


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: str
    score: float
    doc_section: str | None
    start_line: int | None
    end_line: int | None
    lang: str | None
    route: str | None
    text: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreparedQuery:
    text: str  # what is embedded and matched: the query, or its English translation
    lang: str
    translated: bool


class Searcher:
    def __init__(self, cfg: Config):
        self.table = connect(cfg.sink).open_table(cfg.sink.table)
        self.metadata = read_table_metadata(self.table)
        spec = load_model_spec(cfg.embedding)
        wanted = {"model": cfg.embedding.model, "dimensions": str(spec.dimensions(cfg.embedding))}
        for key, value in wanted.items():
            if self.metadata.get(key) != value:
                raise ValueError(f"table {cfg.sink.table!r} was embedded with {key}={self.metadata.get(key)!r}, "
                                 f"the config asks for {value!r}: search with the table's own model and size")
        self.model = EmbeddingModel(cfg.embedding, spec)
        self.query_prompt = self.metadata.get("query_prompt", spec.query_prompt)
        self.detector = DetectLanguage(cfg.langid)
        self.router = RouteDocuments(cfg.routing)
        self.translator = None
        if cfg.translation.enabled:
            from operators.translate import Translator

            self.translator = Translator(cfg.translation)
        self._fts_columns: list[str] | None = None

    def prepare(self, query: str) -> PreparedQuery:
        lang, score = self.detector.detect(query)
        if self.translator is not None and self.router.route("prose", lang, score) == ROUTE_TRANSLATE:
            return PreparedQuery(self.translator.translate(query, lang).text, lang, True)
        return PreparedQuery(query, lang, False)

    def search(self, query: str, mode: Mode = "vector", k: int = 10, lang: str | None = None) -> list[Hit]:
        prepared = self.prepare(query)
        where = f"lang = '{lang}'" if lang else None
        if mode == "vector":
            return self._vector(prepared.text, k, where)
        if mode == "fts":
            return self._full_text(prepared.text, k, where)
        # Hybrid: fuse ranks, not scores (cosines and BM25 are on different scales).
        depth = max(50, 4 * k)
        fused: dict[str, float] = {}
        hits: dict[str, Hit] = {}
        for ranked in (self._vector(prepared.text, depth, where), self._full_text(prepared.text, depth, where)):
            for rank, hit in enumerate(ranked, start=1):
                fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
                hits.setdefault(hit.chunk_id, hit)
        best = sorted(fused, key=fused.get, reverse=True)[:k]
        return [Hit(**{**hits[chunk].as_dict(), "score": fused[chunk]}) for chunk in best]

    def _vector(self, text: str, k: int, where: str | None) -> list[Hit]:
        vector = self.model.embed([text], prompt=self.query_prompt, truncate=True).vectors[0]
        query = self.table.search(vector).distance_type("cosine").limit(k).select(RESULT_COLUMNS)
        if where:
            query = query.where(where, prefilter=True)
        return [_hit(row, 1.0 - row["_distance"]) for row in query.to_list()]

    def _full_text(self, text: str, k: int, where: str | None) -> list[Hit]:
        columns = self.fts_columns()
        if not columns:
            raise ValueError("the table has no full-text index yet: run `babelray index --config ...`")
        best: dict[str, Hit] = {}
        for column in columns:
            query = self.table.search(text, query_type="fts", fts_columns=column).limit(k).select(RESULT_COLUMNS)
            if where:
                query = query.where(where, prefilter=True)
            for row in query.to_list():
                hit = _hit(row, row["_score"])
                if hit.chunk_id not in best or best[hit.chunk_id].score < hit.score:
                    best[hit.chunk_id] = hit
        return sorted(best.values(), key=lambda hit: hit.score, reverse=True)[:k]

    def fts_columns(self) -> list[str]:
        if self._fts_columns is None:
            indexed = {col for index in self.table.list_indices() if index.index_type == "FTS"
                       for col in index.columns}
            self._fts_columns = [col for col in FTS_COLUMNS if col in indexed]
        return self._fts_columns


def _hit(row: dict, score: float) -> Hit:
    return Hit(doc_id=row["doc_id"], chunk_id=row["chunk_id"], score=float(score),
               doc_section=row.get("doc_section"), start_line=row.get("start_line"),
               end_line=row.get("end_line"), lang=row.get("lang"), route=row.get("route"), text=row["text"])


def build_indexes(cfg: Config, ann_min_rows: int = ANN_MIN_ROWS) -> list[str]:
    """Full-text indexes on the chunk text and the original of translated chunks; an ANN index
    (IVF_PQ) once the table is big enough for it to beat exact search. Returns what was done."""
    table = connect(cfg.sink).open_table(cfg.sink.table)
    done = []
    for column in FTS_COLUMNS:
        # Multilingual text: no English stemming or stop words.
        table.create_fts_index(column, replace=True, stem=False, remove_stop_words=False, ascii_folding=True)
        done.append(f"full-text index on {column}")
    rows = table.count_rows()
    if rows < ann_min_rows:
        done.append(f"no ANN index: {rows} rows < {ann_min_rows}, exact search is fast and exact at this size")
        return done
    dims = table.schema.field("vector").type.list_size
    # LanceDB's guidance: about sqrt(rows) partitions; sub-vectors of 8-16 dimensions each.
    partitions = max(1, int(math.sqrt(rows)))
    sub_vectors = next(n for n in (dims // 16, dims // 8, 1) if n >= 1 and dims % n == 0)
    table.create_index(metric="cosine", index_type="IVF_PQ", num_partitions=partitions,
                       num_sub_vectors=sub_vectors, replace=True)
    done.append(f"IVF_PQ index: {partitions} partitions, {sub_vectors} sub-vectors over {rows} rows")
    return done
