"""The chunk and embed operators on pyarrow batches, outside Ray (same code the actors run)."""

import numpy as np
import pyarrow as pa
import pytest

from babelray.config import ChunkingConfig, EmbeddingConfig
from operators.chunk import ChunkDocuments, chunk_budget, chunk_id
from operators.embed import EmbedChunks
from operators.schema import DOCUMENT_SCHEMA, LANGID_FIELDS, ROUTE_FIELDS


def _documents(rows: list[dict]) -> pa.Table:
    base = {name: None for name in DOCUMENT_SCHEMA.names}
    full = [{**base, "kind": "prose", "is_markdown": False, "lang": "en", "lang_score": 0.9,
             "route": "direct", **row} for row in rows]
    return pa.Table.from_pylist(full, schema=pa.schema(list(DOCUMENT_SCHEMA) + LANGID_FIELDS + ROUTE_FIELDS))


def test_chunk_budget_caps_at_model_limit_and_scales_overlap():
    assert chunk_budget(ChunkingConfig(), model_max_tokens=512, prompt_overhead=4) == (508, 63)
    assert chunk_budget(ChunkingConfig(), model_max_tokens=32768, prompt_overhead=1) == (8191, 256)
    assert chunk_budget(ChunkingConfig(max_tokens=300, overlap=10), 512, 4) == (296, 10)
    with pytest.raises(ValueError, match="overlap"):
        chunk_budget(ChunkingConfig(max_tokens=100, overlap=60), 512, 4)


def test_chunk_operator_splits_passes_rejects_and_ids(tiny_qwen3_dir):
    chunker = ChunkDocuments(ChunkingConfig(max_tokens=40, overlap=8), EmbeddingConfig(model=str(tiny_qwen3_dir)))
    text = "\n\n".join(f"Paragraph {i} talks about kettles, tea and the boiling point of water." for i in range(12))
    out = chunker(_documents([
        {"doc_id": "a.txt", "text": text},
        {"doc_id": "b.txt", "text": None, "reject_stage": "read", "reject_reason": "empty", "reject_detail": "0 bytes"},
    ])).to_pylist()
    chunks = [r for r in out if r["doc_id"] == "a.txt"]
    assert len(chunks) > 3 and all(c["token_count"] <= 40 for c in chunks)
    assert [c["chunk_id"] for c in chunks] == [chunk_id("a.txt", i) for i in range(len(chunks))]
    assert {c["n_chunks"] for c in chunks} == {len(chunks)}
    assert chunks[0]["start_char"] == 0 and chunks[-1]["end_char"] == len(text)
    [rejected] = [r for r in out if r["doc_id"] == "b.txt"]
    assert rejected["reject_reason"] == "empty" and rejected["chunk_id"] is None


def test_embed_operator_isolates_a_poison_row(tiny_qwen3_dir):
    embedder = EmbedChunks(EmbeddingConfig(model=str(tiny_qwen3_dir), dimensions=32))
    batch = _documents([
        {"doc_id": "ok1", "text": "Tea is brewed with hot water."},
        # A row the model cannot take (text is not a string) must not sink its neighbours.
        {"doc_id": "poison", "text": None},
        {"doc_id": "ok2", "text": "Kettles switch off at the boil."},
        {"doc_id": "gone", "text": None, "reject_stage": "read", "reject_reason": "binary"},
    ])
    out = embedder(batch)
    assert out.schema.field("vector").type == pa.list_(pa.float32(), 32)
    rows = {r["doc_id"]: r for r in out.to_pylist()}
    assert rows["poison"]["reject_reason"] == "model_error" and rows["poison"]["reject_stage"] == "embed"
    assert rows["poison"]["vector"] is None and rows["gone"]["vector"] is None
    assert rows["gone"]["reject_reason"] == "binary"
    for doc in ("ok1", "ok2"):
        assert rows[doc]["reject_reason"] is None and rows[doc]["model"] == str(tiny_qwen3_dir)
        assert np.linalg.norm(rows[doc]["vector"]) == pytest.approx(1.0, abs=1e-5)
        assert rows[doc]["raw_norm"] > 0 and rows[doc]["embedded_at"] is not None
