"""Throughput of the full job against what a user would write and against the model's own limit.

    python bench/throughput.py --data ../shared/data --work /tmp/throughput [--scale 1.0]

Same model (the bundled e5-small), same chunks, same machine, one run each:

1. limit: the model's forward pass over pre-tokenized chunks, sorted by length and cut into
   token-budget batches (tokenization not timed; no I/O, no Ray);
2. sentence-transformers `encode` over the same chunks in one process, at its default batch size
   (32) and at 8;
3. naive Ray Data: `map_batches` of 64 rows into an actor running `encode`, no length sorting
   across batches;
4. babelray: the whole job (read, incremental, language ID, routing, chunking, embedding, LanceDB
   write, full-text indexes), from the corpus folder to the table.

The chunks of 1-3 are the ones babelray wrote. Peak RSS is the largest sum over the process and
all its descendants (Ray's workers included), sampled every 0.2 s. The corpus: FastAPI's English
docs, the real code files and the XQuAD passages, `--scale` copies of each (a fraction keeps
every n-th file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

THREADS = 2


@contextlib.contextmanager
def peak_rss():
    """Yields a dict whose "mib" is the peak RSS (MiB) of this process and its descendants."""
    result, done = {"mib": 0.0}, threading.Event()
    me = psutil.Process()

    def sample():
        while not done.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            result["mib"] = max(result["mib"], total / 2**20)
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()


def build_corpus(data: Path, folder: Path, scale: float) -> Path:
    sources = sorted((data / "docs_fastapi" / "en").rglob("*.md"))
    sources += sorted(path for path in (data / "code").rglob("*") if path.is_file() and "licenses" not in path.parts)
    passages = [json.loads(line) for line in (data / "xquad" / "passages.en.jsonl").read_text().splitlines()]
    shutil.rmtree(folder, ignore_errors=True)
    copies = max(1, math.ceil(scale))
    step = max(1, round(1 / scale)) if scale < 1 else 1
    for copy in range(copies):
        root = folder / f"copy{copy}"
        for path in sources[::step]:
            target = root / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        for passage in passages[::step]:
            target = root / "xquad" / f"{passage['pid']}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"{passage['title']}\n\n{passage['text']}\n", encoding="utf-8")
    return folder


def run_babelray(corpus: Path, work: Path) -> dict:
    from babelray.testing import local_config
    from pipelines.ingest import run_ingest

    cfg = local_config(work, [corpus])
    cfg.index.after_ingest = True
    with peak_rss() as rss:
        started = time.perf_counter()
        summary = run_ingest(cfg)
        wall = time.perf_counter() - started
    return {"wall": wall, "chunks": summary["chunks"], "rss": rss["mib"], "table": summary["table"]}


def load_model():
    from sentence_transformers import SentenceTransformer

    from babelray.bundled_e5 import ensure_bundled_model

    torch.set_num_threads(THREADS)
    return SentenceTransformer(str(ensure_bundled_model("multilingual-e5-small")), device="cpu")


def run_limit(model, texts: list[str], batch_tokens: int = 2048, max_rows: int = 16) -> dict:
    from babelray.embedding_model import token_budget_batches

    ids = model.tokenizer(texts, add_special_tokens=True)["input_ids"]
    lengths = np.array([len(row) for row in ids])
    batches = [model.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")
               for rows in token_budget_batches(lengths, batch_tokens, max_rows)]
    padded = sum(int(batch["input_ids"].numel()) for batch in batches)
    with peak_rss() as rss, torch.inference_mode():
        started = time.perf_counter()
        for batch in batches:
            model(dict(batch))
        wall = time.perf_counter() - started
    return {"wall": wall, "chunks": len(texts), "tokens": int(lengths.sum()), "rss": rss["mib"],
            "padding": padded / lengths.sum()}


def run_encode(model, texts: list[str], batch_size: int) -> dict:
    tokens = sum(len(row) for row in model.tokenizer(texts, add_special_tokens=True)["input_ids"])
    with peak_rss() as rss:
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        wall = time.perf_counter() - started
    return {"wall": wall, "chunks": len(texts), "tokens": tokens, "rss": rss["mib"]}


class EncodeBatch:
    """What a Ray Data batch-inference example does: one model per actor, encode each batch."""

    def __init__(self):
        self.model = load_model()

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = self.model.encode(list(batch["text"]), batch_size=len(batch["text"]))
        return batch


def run_naive_ray(texts: list[str], tokens: int) -> dict:
    import ray

    with peak_rss() as rss:
        started = time.perf_counter()
        ds = ray.data.from_items([{"text": text} for text in texts])
        ds.map_batches(EncodeBatch, batch_size=64, concurrency=1, num_cpus=THREADS).materialize()
        wall = time.perf_counter() - started
    return {"wall": wall, "chunks": len(texts), "tokens": tokens, "rss": rss["mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the shared data folder (docs_fastapi/, code/, xquad/)")
    parser.add_argument("--work", default="/tmp/throughput", help="scratch folder (corpus, table, results)")
    parser.add_argument("--scale", type=float, default=1.0, help="copies of the corpus (below 1: a share of it)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work / "lancedb", ignore_errors=True)
    corpus = build_corpus(Path(args.data), work / "corpus", args.scale)
    files = sum(1 for path in corpus.rglob("*") if path.is_file())

    import lancedb
    import ray

    results = {"babelray": run_babelray(corpus, work)}
    uri, name = results["babelray"]["table"].rsplit("/", 1)
    prompt = "passage: "  # e5's document prompt, as babelray's table metadata says
    texts = [prompt + text for text in lancedb.connect(uri).open_table(name.removesuffix(".lance"))
             .to_arrow().column("text").to_pylist()]
    model = load_model()
    results["limit"] = run_limit(model, texts)
    # One token count for every row: the model's, prompt and special tokens included.
    results["babelray"]["tokens"] = results["limit"]["tokens"]
    results["encode, batch 32"] = run_encode(model, texts, 32)
    results["encode, batch 8"] = run_encode(model, texts, 8)
    results["naive Ray Data"] = run_naive_ray(texts, results["limit"]["tokens"])
    ray.shutdown()

    limit = results["limit"]["tokens"] / results["limit"]["wall"]
    baseline = results["encode, batch 32"]["tokens"] / results["encode, batch 32"]["wall"]
    print(f"\n{files} files, {len(texts)} chunks, {results['limit']['tokens']:,} tokens "
          f"(padding of the limit's batches: {results['limit']['padding']:.3f}x real tokens)\n")
    print("| variant | wall s | chunks/s | tokens/s | x limit | x baseline | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, row in results.items():
        rate = row["tokens"] / row["wall"]
        print(f"| {variant} | {row['wall']:.1f} | {row['chunks'] / row['wall']:.1f} | {rate:,.0f} | "
              f"{rate / limit:.2f} | {rate / baseline:.2f} | {row['rss']:,.0f} |")
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
