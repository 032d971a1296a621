"""Search over a babelray table: vector, full-text, or hybrid (reciprocal rank fusion).

A query goes the way a document went: language ID, translation when its
language is routed to translation (same Translator as ingest), the model's
query prompt from the table metadata, the same model and dimensions as the
table (a mismatch is refused).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from lancedb.index import FTS, IvfHnswSq, IvfPq

from babelray.config import Config
from babelray.embedding_model import EmbeddingModel, load_model_spec
from operators.langid import DetectLanguage
from operators.route import RouteDocuments
from operators.schema import FINGERPRINT_FIELD, ROUTE_TRANSLATE
from operators.sink import connect, read_table_metadata, require_model, sql_string
from operators.table_alias import resolve_tables

logger = logging.getLogger(__name__)

Mode = Literal["vector", "fts", "hybrid"]
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009)
FTS_COLUMNS = ("text", "text_original")
LANG_CODE = re.compile(r"[a-z]{2,3}(-[a-z]+)?|code|und")  # what language ID writes into `lang`
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


# "route": as the config routes documents; "always"/"never": the translate-first vs direct ablation.
TranslatePolicy = Literal["route", "always", "never"]
VECTOR_QUERIES_PER_CALL = 256  # LanceDB answers a list of query vectors in one call


class Searcher:
    def __init__(self, cfg: Config, model: EmbeddingModel | None = None):
        self.table = connect(cfg.sink).open_table(resolve_tables(cfg.sink).chunks)
        self.metadata = read_table_metadata(self.table)
        _refuse_mixed_fingerprints(self.table, self.metadata)
        spec = model.spec if model is not None else load_model_spec(cfg.embedding)
        require_model(cfg.sink.table, self.metadata, cfg.embedding.model, spec.dimensions(cfg.embedding))
        self.model = model or EmbeddingModel(cfg.embedding, spec)
        self.query_prompt = self.metadata.get("query_prompt", spec.query_prompt)
        self.detector = DetectLanguage(cfg.langid)
        self.router = RouteDocuments(cfg.routing)
        self.translation = cfg.translation
        self.translator = None
        if cfg.translation.enabled:
            from operators.translate import Translator

            self.translator = Translator(cfg.translation)
        self._fts_columns: list[str] | None = None

    # ------------------------------------------------------------ query side

    def prepare(self, queries: list[str], translate: TranslatePolicy = "route") -> list[PreparedQuery]:
        """Language ID of each query, and its English translation where the policy says so."""
        detected = [self.detector.detect(query) for query in queries]
        prepared = [PreparedQuery(query, lang, False) for query, (lang, _) in zip(queries, detected)]
        if self.translator is None or translate == "never":
            return prepared
        by_lang: dict[str, list[int]] = defaultdict(list)
        for i, (lang, score) in enumerate(detected):
            wanted = (lang != "en" if translate == "always"
                      else self.router.route("prose", lang, score) == ROUTE_TRANSLATE)
            if wanted:
                by_lang[lang].append(i)
        from operators.translate import TranslationUnavailable

        for lang, indices in by_lang.items():
            try:
                translations = self.translator.translate_many([queries[i] for i in indices], lang)
            except TranslationUnavailable as err:
                if self.translation.on_failure == "reject":
                    raise
                logger.warning("queries in %s searched untranslated: %s", lang, err)  # as ingest's direct_fallback
                continue
            for i, translation in zip(indices, translations):
                prepared[i] = PreparedQuery(translation.text, prepared[i].lang, True)
        return prepared

    def embed_queries(self, texts: list[str], prompt: str | None = None) -> np.ndarray:
        """Query vectors with the table's query prompt (or the given one: "" = no instruction)."""
        prompt = self.query_prompt if prompt is None else prompt
        return self.model.embed(texts, prompt=prompt, truncate=True).vectors

    # ------------------------------------------------------------ table side

    def search(self, query: str, mode: Mode = "vector", k: int = 10, lang: str | None = None) -> list[Hit]:
        return self.search_many([query], mode, k, lang)[0]

    def search_many(self, queries: list[str], mode: Mode = "vector", k: int = 10, lang: str | None = None,
                    translate: TranslatePolicy = "route") -> list[list[Hit]]:
        if lang and not LANG_CODE.fullmatch(lang):
            raise ValueError(f"--lang {lang!r}: expected a language code such as 'de', 'zh' or 'code'")
        texts = [p.text for p in self.prepare(queries, translate)]
        where = f"lang = '{lang}'" if lang else None
        if mode == "fts":
            return [self._full_text(text, k, where) for text in texts]
        if mode == "vector":
            return self.vector_search(self.embed_queries(texts), k, where)
        # Hybrid: fuse ranks, not scores (cosines and BM25 are on different scales).
        depth = max(50, 4 * k)
        by_vector = self.vector_search(self.embed_queries(texts), depth, where)
        return [self._fuse([ranked, self._full_text(text, depth, where)], k) for text, ranked in zip(texts, by_vector)]

    def vector_search(self, vectors: np.ndarray, k: int, where: str | None = None,
                      exact: bool = False) -> list[list[Hit]]:
        """Nearest chunks of each query vector; `exact` bypasses an ANN index."""
        results: list[list[Hit]] = [[] for _ in range(len(vectors))]
        for first in range(0, len(vectors), VECTOR_QUERIES_PER_CALL):
            part = vectors[first:first + VECTOR_QUERIES_PER_CALL]
            query = self.table.search(list(part) if len(part) > 1 else part[0]).distance_type("cosine").limit(k)
            query = query.select([*RESULT_COLUMNS, "_distance"])  # named: unnamed is deprecated in Lance
            if exact:
                query = query.bypass_vector_index()
            if where:
                query = query.where(where, prefilter=True)
            for row in query.to_list():
                results[first + row.get("query_index", 0)].append(_hit(row, 1.0 - row["_distance"]))
        for ranked in results:
            ranked.sort(key=lambda hit: hit.score, reverse=True)
        return results

    @staticmethod
    def _fuse(rankings: list[list[Hit]], k: int) -> list[Hit]:
        fused: dict[str, float] = {}
        hits: dict[str, Hit] = {}
        for ranked in rankings:
            for rank, hit in enumerate(ranked, start=1):
                fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
                hits.setdefault(hit.chunk_id, hit)
        best = sorted(fused, key=fused.get, reverse=True)[:k]
        return [Hit(**{**hits[chunk].as_dict(), "score": fused[chunk]}) for chunk in best]

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


def build_ann_index(table, ann_type: str) -> str:
    """An ANN index sized by LanceDB's own defaults (partitions and sub-vectors from the
    row count and dimension). Returns what it indexed: IVF_PQ trains nothing below 256 rows."""
    config = (IvfPq if ann_type == "IVF_PQ" else IvfHnswSq)(distance_type="cosine")
    table.create_index("vector", config=config, replace=True)
    stats = table.index_stats(next(index.name for index in table.list_indices() if index.columns == ["vector"]))
    return f"{ann_type} index over {stats.num_indexed_rows} of {stats.num_indexed_rows + stats.num_unindexed_rows} rows"


def _refuse_mixed_fingerprints(table, metadata: dict) -> None:
    """Rows embedded with another config than the table's are on another scale: refuse, do not rank them."""
    column = FINGERPRINT_FIELD.name
    if column not in table.schema.names:
        return  # written before rows carried it: one config by construction (runs refused others)
    fingerprint = str(metadata.get("fingerprint", ""))
    others = table.count_rows(f"{column} IS NULL OR {column} != {sql_string(fingerprint)}")
    if others:
        raise ValueError(f"table {table.name!r} mixes vectors of several configs ({others} rows were not embedded "
                         f"with its fingerprint {fingerprint}): re-embed it (`babelray reembed`) before searching")


def build_indexes(cfg: Config, table_name: str | None = None, keep_current: bool = False) -> list[str]:
    """Full-text indexes on the chunk text and the original of translated chunks; an ANN index
    once the table is big enough for it to beat exact search. Returns what was done.
    `table_name`: a physical table; default: the one `sink.table` points at. `keep_current`: leave
    an index that already covers every row (a re-run that changed nothing)."""
    table = connect(cfg.sink).open_table(table_name or resolve_tables(cfg.sink).chunks)
    done = []
    current = {tuple(index.columns) for index in table.list_indices()
               if index.num_unindexed_rows == 0} if keep_current else set()
    if cfg.index.full_text:
        for column in FTS_COLUMNS:
            if (column,) in current:
                done.append(f"full-text index on {column} kept: it covers every row")
                continue
            # Multilingual text: no English stemming or stop words.
            table.create_index(column, config=FTS(stem=False, remove_stop_words=False, ascii_folding=True),
                               replace=True)
            done.append(f"full-text index on {column}")
    rows = table.count_rows()
    if rows < cfg.index.ann_min_rows:
        done.append(f"no ANN index: {rows} rows < index.ann_min_rows={cfg.index.ann_min_rows}, "
                    "exact search is fast and exact at this size")
        return done
    if ("vector",) in current:
        done.append("ANN index kept: it covers every row")
        return done
    done.append(build_ann_index(table, cfg.index.ann_type))
    return done
