"""The evaluation suites of `babelray eval`. Each takes an EvalContext and returns a
JSON-able dict: rows per language, the averages, notes, and its wall time.

Retrieval suites ingest with `run_ingest` into a scratch table and query with the
`Searcher` parts that `babelray search` composes (prepare -> embed_queries ->
vector_search), keeping the query vectors for the ablations in the same run."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from babelray.config import Config
from babelray.embedding_model import EmbeddingModel, mrl_truncate
from babelray.evaluation import data as eval_data
from babelray.evaluation.metrics import (METRIC_NAMES, average, exact_document_rankings, ranking_metrics,
                                         unique_in_order)

logger = logging.getLogger(__name__)

FIRST_DEPTH = 50  # chunks fetched per query at first; deepened where they hold fewer than 10 documents
ANN_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
# lid.176 labels Norwegian Bokmål "no"; the lingua test files call it "nb".
LID_ALIASES = {"nb": {"no"}}


@dataclass
class EvalContext:
    cfg: Config
    data: Path
    work: Path  # a fresh folder per eval run (scratch tables, run summaries): every table starts empty
    _model: EmbeddingModel | None = field(default=None, repr=False)

    @property
    def model(self) -> EmbeddingModel:
        if self._model is None:
            self._model = EmbeddingModel(self.cfg.embedding)
        return self._model

    def table_config(self, table: str, path: Path, **input_overrides) -> Config:
        """The user's config (model, prompts, chunking, routing) over one data file/folder
        and a fresh scratch table."""
        cfg = self.cfg.model_copy(deep=True)
        cfg.input = cfg.input.model_copy(update={"paths": [str(path)], **input_overrides})
        cfg.sink = cfg.sink.model_copy(update={"uri": str(self.work / "lancedb"), "table": table,
                                               "rejects_table": f"{table}_rejects", "storage_options": {}})
        cfg.run = cfg.run.model_copy(update={"summary_dir": str(self.work / "runs")})
        cfg.index = cfg.index.model_copy(update={"after_ingest": False})
        return cfg


def _ingest(cfg: Config) -> dict:
    from pipelines.ingest import run_ingest

    summary = run_ingest(cfg)
    if summary["documents_rejected"]:
        logger.warning("%s: %d documents rejected %s", cfg.sink.table, summary["documents_rejected"],
                       summary["rejected_by_reason"])
    return {key: summary[key] for key in ("documents_in", "documents_embedded", "documents_rejected",
                                          "chunks", "tokens", "wall_seconds", "tokens_per_second")}


def document_search(searcher, vectors: np.ndarray, exact: bool = True, limit: int = 10,
                    depth: int = FIRST_DEPTH) -> tuple[list[list[str]], list]:
    """Documents ranked by their best chunk, and the chunk hits behind them. A query whose
    chunks fill the depth but name fewer than `limit` documents (long pages: dozens of chunks)
    is searched again deeper, so no document is missed for want of depth."""
    hits = searcher.vector_search(vectors, depth, exact=exact)
    pending = list(range(len(vectors)))
    while True:
        rankings = [unique_in_order((hit.doc_id for hit in ranked), limit) for ranked in hits]
        pending = [i for i in pending if len(rankings[i]) < limit and len(hits[i]) == depth]
        if not pending:
            return rankings, hits
        depth *= 4
        for i, ranked in zip(pending, searcher.vector_search(vectors[pending], depth, exact=exact)):
            hits[i] = ranked


def _search_queries(searcher, queries, translate: str = "route"):
    """Queries the way `babelray search` runs them (language ID and routing, query prompt, vector
    search), keeping each step's output for the ablations: prepared, vectors, rankings, hits."""
    prepared = searcher.prepare([q.text for q in queries], translate=translate)
    vectors = searcher.embed_queries([p.text for p in prepared])
    rankings, hits = document_search(searcher, vectors)
    return prepared, vectors, rankings, hits


def _table_vectors(searcher) -> tuple[np.ndarray, list[str]]:
    chunks = searcher.table.to_lance().to_table(columns=["doc_id", "vector"])  # not the text
    vectors = chunks.column("vector").combine_chunks()
    matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(len(chunks), vectors.type.list_size)
    return matrix.astype(np.float32), chunks.column("doc_id").to_pylist()


# ---------------------------------------------------------------- XQuAD


def xquad(ctx: EvalContext, dims: list[int], ann_types: tuple[str, ...] = ANN_TYPES) -> dict:
    from pipelines.search import Searcher

    started = time.perf_counter()
    cfg = ctx.table_config("xquad", eval_data.xquad_passages_path(ctx.data), format="jsonl",
                           id_column="pid", text_column="text", metadata_columns=["title"])
    ingest = _ingest(cfg)
    searcher = Searcher(cfg, model=ctx.model)
    chunk_vectors, chunk_docs = _table_vectors(searcher)
    stored_dims = chunk_vectors.shape[1]
    mrl_dims = [stored_dims] + sorted({d for d in dims if d < stored_dims}, reverse=True)
    too_big = sorted(d for d in dims if d > stored_dims)
    notes = [f"MRL sizes above the table's {stored_dims} dimensions skipped: {too_big}"] if too_big else []

    rows, no_instruction, mrl, translation, exact_hits, all_vectors, all_golds = [], [], {}, [], [], [], []
    for lang in eval_data.xquad_langs(ctx.data):
        queries = eval_data.xquad_queries(ctx.data, lang)
        golds = [q.gold for q in queries]
        prepared, vectors, rankings, hits = _search_queries(searcher, queries)
        texts = [p.text for p in prepared]
        rows.append({"lang": lang, "queries": len(queries), **ranking_metrics(rankings, golds),
                     "query_langid": 100.0 * sum(p.lang == lang for p in prepared) / len(prepared),
                     "translated": sum(p.translated for p in prepared)})
        logger.info("xquad %s: R@5 %.1f over %d queries", lang, rows[-1]["R@5"], len(queries))
        exact_hits += [[hit.chunk_id for hit in ranked[:10]] for ranked in hits]
        all_vectors.append(vectors)
        all_golds += golds

        bare, _ = document_search(searcher, searcher.embed_queries(texts, prompt=""))
        no_instruction.append({"lang": lang, **ranking_metrics(bare, golds)})

        # MRL: the embed stage's own truncation applied to the stored vectors and the query vectors.
        for d in mrl_dims:
            rankings = exact_document_rankings(mrl_truncate(vectors, d)[0], mrl_truncate(chunk_vectors, d)[0],
                                               chunk_docs)
            mrl.setdefault(d, []).append(ranking_metrics(rankings, golds))

        if searcher.translator is not None and lang != "en":
            translation.append(_translate_vs_direct(searcher, lang, queries))

    result = {
        "ingest": ingest, "rows": rows, "average": average(_metric_part(r) for r in rows),
        "instruction": {"query_prompt": searcher.query_prompt, "rows": no_instruction,
                        "average": average(_metric_part(r) for r in no_instruction)},
        "mrl": _mrl_table(mrl, ctx.model.full_dimensions),
        "translate_vs_direct": translation or None,
        "notes": notes,
    }
    if searcher.translator is None:
        result["notes"].append("translate-first vs direct: no translator configured (translation.enabled is false)")
    vectors = np.concatenate(all_vectors)
    result["ann"] = [_ann_vs_exact(searcher, ann_type, vectors, exact_hits, all_golds)
                     for ann_type in ann_types]
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _metric_part(row: dict) -> dict:
    return {name: row[name] for name in METRIC_NAMES}


def _mrl_table(per_dims: dict[int, list[dict]], full_dimensions: int) -> list[dict]:
    table = []
    baseline = None
    for d, per_lang in per_dims.items():
        avg = average(per_lang)
        baseline = baseline or avg
        change = {f"{m}_change": 100.0 * (avg[m] - baseline[m]) / max(baseline[m], 1e-9) for m in ("R@5", "nDCG@10")}
        table.append({"dims": d, **avg, "storage_saved": 100.0 * (1 - d / full_dimensions), **change})
    return table


def _translate_vs_direct(searcher, lang: str, queries) -> dict:
    golds = [q.gold for q in queries]
    row = {"lang": lang}
    for policy, label in (("never", "direct"), ("always", "translated")):
        prepared, _, rankings, _ = _search_queries(searcher, queries, translate=policy)
        row[f"{label}_R@5"] = ranking_metrics(rankings, golds)["R@5"]
        if policy == "always":
            row["queries_translated"] = sum(p.translated for p in prepared)
    row["change"] = row["translated_R@5"] - row["direct_R@5"]
    return row


def _ann_vs_exact(searcher, ann_type: str, vectors: np.ndarray, exact_hits: list[list[str]],
                  golds: list[str]) -> dict:
    """The queries of the exact run again, now through the ANN index."""
    from pipelines.search import build_ann_index

    built = build_ann_index(searcher.table, ann_type)
    started = time.perf_counter()
    rankings, hits = document_search(searcher, vectors, exact=False)
    seconds = time.perf_counter() - started
    overlap = [len({hit.chunk_id for hit in ranked[:10]} & set(exact)) / max(len(exact), 1)
               for ranked, exact in zip(hits, exact_hits)]
    quality = ranking_metrics(rankings, golds)
    return {"table": searcher.table.name, "index": ann_type, "built": built,
            "recall@10_vs_exact": 100.0 * float(np.mean(overlap)),
            "ann_R@5": quality["R@5"], "ann_nDCG@10": quality["nDCG@10"],
            "ms_per_query": 1000.0 * seconds / len(vectors)}


# ---------------------------------------------------------------- Tatoeba


def tatoeba(ctx: EvalContext, max_pairs: int | None) -> dict:
    """Bitext mining: each sentence's nearest neighbour on the other side must be its translation.
    Both sides get the query prompt (a symmetric task: e5 and Qwen3 both say so)."""
    started = time.perf_counter()
    model, direct = ctx.model, set(ctx.cfg.routing.direct_languages)
    prompt = model.query_prompt
    rows = []
    for lang in eval_data.tatoeba_langs(ctx.data):
        bitext = eval_data.tatoeba_bitext(ctx.data, lang, max_pairs)
        source = model.embed(bitext.source, prompt=prompt, truncate=True).vectors
        english = model.embed(bitext.english, prompt=prompt, truncate=True).vectors
        similarity = source @ english.T
        truth = np.arange(len(bitext.source))
        iso1 = eval_data.TATOEBA_ISO1.get(lang)
        rows.append({"lang": lang, "iso639_1": iso1, "routed": iso1 not in direct, "pairs": len(truth),
                     "xx->en": 100.0 * float(np.mean(similarity.argmax(axis=1) == truth)),
                     "en->xx": 100.0 * float(np.mean(similarity.argmax(axis=0) == truth))})
        logger.info("tatoeba %s: xx->en %.1f over %d pairs", lang, rows[-1]["xx->en"], len(truth))
    groups = {}
    split = {"direct": [r for r in rows if not r["routed"]], "routed": [r for r in rows if r["routed"]], "all": rows}
    for name, members in split.items():
        if members:
            groups[name] = {"languages": len(members), **average({k: r[k] for k in ("xx->en", "en->xx")}
                                                                 for r in members)}
    return {"prompt": prompt, "max_pairs": max_pairs, "rows": rows, "groups": groups,
            "wall_seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- language ID


def language_id(ctx: EvalContext, max_lines: int | None, short_words: int = 3) -> dict:
    from operators.langid import DetectLanguage

    started = time.perf_counter()
    detector = DetectLanguage(ctx.cfg.langid)
    rows, confusions = [], Counter()
    for lang, lines in eval_data.lid_samples(ctx.data, max_lines).items():
        accepted = {lang} | LID_ALIASES.get(lang, set())
        row = {"lang": lang, "lines": len(lines)}
        for label, texts in (("full", lines), ("short", [eval_data.first_words(t, short_words) for t in lines])):
            predicted = [detector.detect(text)[0] for text in texts]
            wrong = [p for p in predicted if p not in accepted]
            row[label] = 100.0 * (1 - len(wrong) / len(predicted))
            confusions.update((label, lang, p) for p in wrong)
            if label == "full":
                row["top_error"] = Counter(wrong).most_common(1)[0][0] if wrong else None
        rows.append(row)
    top = [{"input": kind, "true": true, "predicted": pred, "count": n}
           for (kind, true, pred), n in confusions.most_common(15)]
    cjk = [{"input": kind, "true": true, "predicted": pred, "count": confusions[(kind, true, pred)]}
           for kind in ("full", "short") for true, pred in (("zh", "ja"), ("ja", "zh"))]
    return {"short_words": short_words, "rows": rows,
            "average": {"full": float(np.mean([r["full"] for r in rows])),
                        "short": float(np.mean([r["short"] for r in rows]))},
            "confusions": top, "cjk_confusions": cjk, "wall_seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- FastAPI docs


def fastapi_docs(ctx: EvalContext, ann_types: tuple[str, ...] = ANN_TYPES) -> dict:
    from pipelines.search import Searcher

    started = time.perf_counter()
    cfg = ctx.table_config("fastapi", ctx.data / "docs_fastapi" / "en", format="folder")
    ingest = _ingest(cfg)
    searcher = Searcher(cfg, model=ctx.model)
    rows, exact_hits, all_vectors, all_golds = [], [], [], []
    for lang in eval_data.FASTAPI_LANGS:
        queries = eval_data.fastapi_queries(ctx.data, lang, doc_prefix="en/")
        if not queries:
            continue
        _, vectors, rankings, hits = _search_queries(searcher, queries)
        golds = [q.gold for q in queries]
        rows.append({"lang": lang, "queries": len(queries), **ranking_metrics(rankings, golds)})
        logger.info("fastapi %s: R@5 %.1f over %d pages", lang, rows[-1]["R@5"], len(queries))
        exact_hits += [[hit.chunk_id for hit in ranked[:10]] for ranked in hits]
        all_vectors.append(vectors)
        all_golds += golds
    # Over a thousand chunks, enough for IVF_PQ to train (it needs 256 rows), unlike XQuAD's 240.
    ann = [_ann_vs_exact(searcher, ann_type, np.concatenate(all_vectors), exact_hits, all_golds)
           for ann_type in ann_types] if rows else []
    return {"ingest": ingest, "rows": rows, "average": average(_metric_part(r) for r in rows), "ann": ann,
            "wall_seconds": time.perf_counter() - started}
