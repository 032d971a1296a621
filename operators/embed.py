"""Embedding stage: chunk rows -> rows with `vector`, `raw_norm`, `model`, `embedded_at`.

Runs in an actor pool (one model per actor, GPU when the cluster has one).
A batch that makes the model fail is retried row by row, so one poison chunk
becomes one reject instead of failing the run or losing its neighbours.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from babelray.config import EmbeddingConfig
from babelray.embedding_model import EmbeddingModel
from babelray.metrics import count, timed_stage
from operators.schema import REJECT_MODEL_ERROR, append_columns, embedding_fields

STAGE = "embed"
log = logging.getLogger(__name__)


class EmbedChunks:
    def __init__(self, cfg: EmbeddingConfig):
        self.model = EmbeddingModel(cfg)
        self.fields = dict(embedding_fields(self.model.dimensions))

    @timed_stage(STAGE)
    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        vectors = np.zeros((n, self.model.dimensions), dtype=np.float32)
        norms = np.zeros(n, dtype=np.float32)
        embedded = np.zeros(n, dtype=bool)
        reasons = batch.column("reject_reason").to_pylist()
        stages = batch.column("reject_stage").to_pylist()
        details = batch.column("reject_detail").to_pylist()
        texts = batch.column("text").to_pylist()

        model_tokens = np.zeros(n, dtype=np.int64)
        padded_tokens = np.zeros(n, dtype=np.int64)
        todo = [i for i in range(n) if reasons[i] is None]
        for rows, result in self._embed_rows(todo, texts):
            if isinstance(result, Exception):
                for i in rows:
                    reasons[i], stages[i], details[i] = REJECT_MODEL_ERROR, STAGE, f"{type(result).__name__}: {result}"
                continue
            vectors[rows] = result.vectors
            norms[rows] = result.raw_norms
            model_tokens[rows] = result.token_counts
            padded_tokens[rows] = result.padded_lengths
            embedded[rows] = True

        # The chunker's counts, which the run summary adds up; the model's own (prompt included) for
        # batches that come without them.
        tokens = (batch.column("token_count").to_numpy(zero_copy_only=False) if "token_count" in batch.column_names
                  else model_tokens)
        count("babelray_tokens_embedded_total", int(tokens[embedded].sum()), model=self.model.model_id)
        now = datetime.now(timezone.utc)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        vector_column = pa.FixedSizeListArray.from_arrays(flat, self.model.dimensions, mask=pa.array(~embedded))
        return append_columns(batch, {
            "reject_reason": pa.array(reasons, pa.string()),
            "reject_stage": pa.array(stages, pa.string()),
            "reject_detail": pa.array(details, pa.string()),
            "vector": vector_column.cast(self.fields["vector"]),
            "raw_norm": pa.array(norms, pa.float32(), mask=~embedded),
            "model": pa.array([self.model.model_id if ok else None for ok in embedded], pa.string()),
            "embedded_at": pa.array([now if ok else None for ok in embedded], self.fields["embedded_at"]),
            # What the model was fed and what it computed, padding included: the run's padding waste.
            "model_tokens": pa.array(model_tokens, self.fields["model_tokens"], mask=~embedded),
            "padded_tokens": pa.array(padded_tokens, self.fields["padded_tokens"], mask=~embedded),
        })

    def _embed_rows(self, rows: list[int], texts: list[str]):
        """Yield (rows, EmbeddingBatch | Exception); falls back to one row at a time on failure."""
        if not rows:
            return
        try:
            yield rows, self.model.embed([texts[i] for i in rows])
            return
        except Exception as err:  # noqa: BLE001 - any model failure is isolated below
            if len(rows) == 1:
                log.warning("embedding failed for one chunk: %s", err)
                yield rows, err
                return
            log.warning("embedding batch of %d failed (%s); retrying row by row", len(rows), err)
        for i in rows:
            yield from self._embed_rows([i], texts)
