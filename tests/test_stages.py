"""The chunk and embed operators on pyarrow batches, outside Ray (same code the actors run)."""

import numpy as np
import pyarrow as pa
import pytest

from babelray.config import ChunkingConfig, EmbeddingConfig
from babelray.embedding_model import padded_length
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


def test_chunk_operator_can_order_a_batch_longest_first(tiny_qwen3_dir):
    """What the pipeline asks for: like lengths end up side by side for the embedding stage."""
    chunker = ChunkDocuments(ChunkingConfig(max_tokens=40, overlap=8), EmbeddingConfig(model=str(tiny_qwen3_dir)),
                             longest_first=True)
    docs = _documents([{"doc_id": "short.txt", "text": "Tea."},
                       {"doc_id": "long.txt", "text": " ".join(["Kettles boil water for tea."] * 30)}])
    out = chunker(docs).to_pylist()
    counts = [row["token_count"] for row in out]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) > 1
    assert out[-1]["doc_id"] == "short.txt"
    assert sorted(row["chunk_index"] for row in out if row["doc_id"] == "long.txt") == list(range(len(out) - 1))


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
    assert rows["poison"]["model_tokens"] is None and rows["poison"]["padded_tokens"] is None


def test_embed_operator_reports_model_and_padded_tokens(tiny_qwen3_dir):
    """Each row says what the model read for it and the padded length of the batch it went in."""
    embedder = EmbedChunks(EmbeddingConfig(model=str(tiny_qwen3_dir), batch_tokens=10_000, max_batch_rows=2))
    texts = ["Tea.", "Tea is brewed with hot water from a kettle that switches off at the boil.",
             "Kettles.", "A much longer sentence about kettles, tea, water and the boiling point."]
    rows = embedder(_documents([{"doc_id": f"d{i}", "text": text} for i, text in enumerate(texts)])).to_pylist()
    lengths = [len(embedder.model.tokenizer(text)["input_ids"]) for text in texts]
    assert [row["model_tokens"] for row in rows] == lengths
    # Sorted by length and two rows a batch: the two short texts together, the two long ones together.
    short, long = sorted(range(4), key=lengths.__getitem__)[:2], sorted(range(4), key=lengths.__getitem__)[2:]
    # Half precision (bf16 on a CPU with AMX or AVX-512 BF16) pads up to a multiple of 16, fp32 to the longest
    # row: the rule `padded_length` holds (its own test pins it).
    model = embedder.model
    for pair in (short, long):
        expected = padded_length(max(lengths[i] for i in pair), model.pad_to_multiple_of, model.max_seq_length)
        assert [rows[i]["padded_tokens"] for i in pair] == [expected] * 2
