"""Tokens/s of the embedding model alone over the chunks of a table, for a few batch settings.

    python bench/embed_speed.py --table ./data/lancedb/chunks --limit 80
"""

from __future__ import annotations

import argparse
import json
import time

import lancedb

from babelray.config import EmbeddingConfig
from babelray.embedding_model import EmbeddingModel

SETTINGS = [(2, 2048, 16), (2, 4096, 32), (2, 16384, 64), (1, 2048, 16)]  # threads, batch_tokens, max rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="./data/lancedb/chunks", help="<db uri>/<table name>")
    parser.add_argument("--limit", type=int, default=80, help="chunks to embed per setting")
    args = parser.parse_args()
    uri, name = args.table.rstrip("/").rsplit("/", 1)
    table = lancedb.connect(uri).open_table(name)
    model_id = json.loads(table.schema.metadata[b"babelray"])["model"]
    texts = table.to_arrow().column("text").to_pylist()[: args.limit]
    for threads, batch_tokens, rows in SETTINGS:
        model = EmbeddingModel(EmbeddingConfig(model=model_id, torch_threads=threads,
                                               batch_tokens=batch_tokens, max_batch_rows=rows))
        model.embed(texts[:4])  # warm-up
        started = time.perf_counter()
        tokens = int(model.embed(texts).token_counts.sum())
        seconds = time.perf_counter() - started
        print(f"threads={threads} batch_tokens={batch_tokens} max_rows={rows}: "
              f"{tokens / seconds:,.0f} tokens/s ({tokens} tokens, {seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
