"""Chunk stage: document rows -> chunk rows (the splitting itself is in `chunking`).

Token windows are counted with the embedding model's own tokenizer, and the
budget is net of the model's document prompt and special tokens, so no chunk
is truncated by the embedding stage.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from babelray.config import ChunkingConfig, EmbeddingConfig
from babelray.embedding_model import load_model_spec
from babelray.metrics import count_each, timed_stage
from operators.chunking import chunk_document
from operators.schema import (
    CHUNK_FIELDS,
    DOCUMENT_SCHEMA,
    LANGID_FIELDS,
    REJECT_EMPTY,
    ROUTE_FIELDS,
    TRANSLATION_FIELDS,
)
from operators.translate import original_span

STAGE = "chunk"
DEFAULT_MAX_TOKENS = 8192
DEFAULT_OVERLAP = 256
CHUNKED_SCHEMA = pa.schema(list(DOCUMENT_SCHEMA) + LANGID_FIELDS + ROUTE_FIELDS + TRANSLATION_FIELDS + CHUNK_FIELDS)


def chunk_budget(cfg: ChunkingConfig, model_max_tokens: int, prompt_overhead: int) -> tuple[int, int]:
    """(max_tokens, overlap) for chunk text: the configured size capped by what the
    model takes, minus its prompt; overlap defaults to 256 scaled down for small windows."""
    max_tokens = min(cfg.max_tokens or DEFAULT_MAX_TOKENS, model_max_tokens) - prompt_overhead
    if max_tokens < 16:
        raise ValueError(f"chunk budget of {max_tokens} tokens is too small (model limit {model_max_tokens}, "
                         f"prompt and special tokens {prompt_overhead})")
    overlap = cfg.overlap if cfg.overlap is not None else min(DEFAULT_OVERLAP, max_tokens // 8)
    if overlap >= max_tokens // 2:
        raise ValueError(f"chunking.overlap={overlap} must be below half the chunk size ({max_tokens})")
    return max_tokens, overlap


def chunk_id(doc_id: str, index: int) -> str:
    """Deterministic: the same document and position always give the same id."""
    return hashlib.sha256(f"{doc_id}\x00{index}".encode()).hexdigest()[:32]


class ChunkDocuments:
    def __init__(self, chunking: ChunkingConfig, embedding: EmbeddingConfig, longest_first: bool = False):
        """`longest_first`: return a batch's rows by token count, longest first, rather than in
        document order. The pipeline asks for it: the blocks the embedding stage then takes hold
        chunks of like length (little padding), and a run ends on short embedding tasks."""
        self.longest_first = longest_first
        spec = load_model_spec(embedding)
        self.tokenizer = spec.tokenizer(trust_remote_code=embedding.trust_remote_code)
        self.max_tokens, self.overlap = chunk_budget(chunking, spec.max_seq_length,
                                                     spec.prompt_overhead(self.tokenizer))

    @timed_stage("chunk")
    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for doc in batch.to_pylist():
            rows.extend(self.chunk_rows(doc))
        count_each("babelray_chunks_total", [row["kind"] for row in rows if row["reject_reason"] is None], "kind")
        table = pa.Table.from_pylist(rows, schema=CHUNKED_SCHEMA)
        return table.sort_by([("token_count", "descending")]) if self.longest_first else table

    def chunk_rows(self, doc: dict) -> list[dict]:
        # Without a translate stage in the plan these columns do not exist yet.
        doc.setdefault("translated", False)
        original = doc.pop("text_original", None)
        spans = doc.pop("translation_spans", None)
        if doc["reject_reason"] is not None:
            return [doc]
        text = doc["text"]
        chunks = chunk_document(text, kind=doc["kind"], language=doc["code_language"],
                                is_markdown=doc["is_markdown"], tokenizer=self.tokenizer,
                                max_tokens=self.max_tokens, overlap=self.overlap)
        if not chunks:
            return [{**doc, "text": None, "reject_stage": STAGE, "reject_reason": REJECT_EMPTY,
                     "reject_detail": "no content to chunk"}]
        return [
            {
                **doc,
                "text": text[chunk.start_char:chunk.end_char],
                "chunk_id": chunk_id(doc["doc_id"], index),
                "chunk_index": index,
                "n_chunks": len(chunks),
                "start_line": chunk.start_line,
                "end_line": chunk.end_line,
                "start_char": chunk.start_char,
                "end_char": chunk.end_char,
                "doc_section": chunk.section,
                "token_count": chunk.token_count,
                "text_original": _original_text(original, spans, chunk.start_char, chunk.end_char),
            }
            for index, chunk in enumerate(chunks)
        ]


def _original_text(original: str | None, spans: str | None, start: int, end: int) -> str | None:
    """For a translated document: the original sentences this chunk's translation came from."""
    span = original_span(spans, start, end) if original is not None else None
    return original[span[0]:span[1]] if span else None
