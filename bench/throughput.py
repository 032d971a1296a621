"""Throughput of the full job against what a user would write and against the model's own limit.

    python bench/throughput.py --data ../shared/data --work /tmp/throughput [--scale 1.0]
    python bench/throughput.py --data ../shared/data --only babelray --set embedding.torch_threads=2 ...

Same model (the bundled e5-small), same chunks, same machine, one run each, each variant in a
process of its own (so its peak RSS is its own):

1. limit: the model's forward pass over pre-tokenized chunks, sorted by length and cut into
   token-budget batches (tokenization not timed; no I/O, no Ray), in the dtype babelray's config
   picks on this machine (bf16 on a CPU with AMX or AVX-512 BF16, else fp32), once in one process with a thread
   per core and once in one-thread processes, one per core, started together; the faster of the
   two is the limit the ratios use;
2. sentence-transformers `encode` over the same chunks in one process, as a user would write it
   (fp32, its default): at its default batch size (32), the baseline, and at 8; and at 8 in bf16,
   the best a user could write by hand on such a CPU;
3. naive Ray Data: `map_batches` of 64 rows into an actor running `encode` (fp32), no length
   sorting across batches;
4. babelray: the whole job (read, incremental, language ID, routing, chunking, embedding, LanceDB
   write, full-text indexes), from the corpus folder to the table, with configs/local.yaml.

The chunks of 1-3 are the ones babelray wrote, with the prompt its table names. Tokens are the
model's count for every row. Padding is padded tokens per real token: measured for the limit
and babelray (its run summary), computed from `encode`'s batching rule for 2 and 3. Peak RSS is
the largest sum over the variant's process and its descendants (Ray's workers and services
included), sampled every 0.5 s, as are the CPU seconds of babelray's processes by role
(bench/processes.py). babelray's time per phase and per operator comes from its run summary.
With a limit row, the report ends with the CPU budget of 0.85 × the limit: the CPU-seconds that
leaves for everything but the forward pass, against what babelray spent on everything else.
The corpus: FastAPI's English docs, the real code files and the XQuAD passages, `--scale`
copies of each (a fraction keeps every n-th file).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from processes import sampled

THREADS = 2


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


def override(cfg, assignment: str) -> None:
    """`embedding.torch_threads=2`: set one config key (the value parsed as YAML)."""
    import yaml

    key, _, value = assignment.partition("=")
    *path, name = key.split(".")
    section = cfg
    for part in path:
        section = getattr(section, part)
    setattr(section, name, yaml.safe_load(value))  # validated: the config models check assignments


def babelray_config(work: Path, settings: list[str]):
    """configs/local.yaml over the corpus under `work`, indexes on, with the `--set` assignments."""
    from babelray.testing import local_config

    cfg = local_config(work, [work / "corpus"])
    cfg.index.after_ingest = True
    for assignment in settings:
        override(cfg, assignment)
    return cfg


def run_babelray(work: Path, settings: list[str]) -> dict:
    from pipelines.ingest import run_ingest

    cfg = babelray_config(work, settings)
    started = time.perf_counter()
    summary = run_ingest(cfg)
    return {"wall": time.perf_counter() - started, "chunks": summary["chunks"], "table": summary["table"],
            "padding": summary["padding"], "seconds": summary["seconds"], "operators": summary["operators"]}


def load_model(threads: int = THREADS, dtype: str = "float32"):
    from sentence_transformers import SentenceTransformer

    from babelray.bundled_e5 import ensure_bundled_model

    torch.set_num_threads(threads)
    return SentenceTransformer(str(ensure_bundled_model("multilingual-e5-small")), device="cpu",
                               model_kwargs={"dtype": getattr(torch, dtype)})


def packed_batches(model, texts: list[str], batch_tokens: int = 2048, max_rows: int = 16) -> tuple[list, int, int]:
    """Pre-tokenized, length-sorted token-budget batches; returns them, the real and the padded tokens."""
    from babelray.embedding_model import pad_multiple, padded_length, token_budget_batches

    ids = model.tokenizer(texts, add_special_tokens=True)["input_ids"]
    lengths = np.array([len(row) for row in ids])
    multiple = pad_multiple(model.dtype)  # babelray's rule: half precision pads to a multiple of 16
    batches = [model.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding="max_length",
                                   max_length=padded_length(int(lengths[rows].max()), multiple, model.max_seq_length),
                                   return_tensors="pt")
               for rows in token_budget_batches(lengths, batch_tokens, max_rows)]
    return batches, int(lengths.sum()), sum(int(batch["input_ids"].numel()) for batch in batches)


def forward_all(model, batches: list) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        for batch in batches:
            model(dict(batch))
        return time.perf_counter() - started


def run_limit(texts: list[str], dtype: str) -> dict:
    model = load_model(dtype=dtype)
    batches, tokens, padded = packed_batches(model, texts)
    return {"wall": forward_all(model, batches), "chunks": len(texts), "tokens": tokens, "padding": padded / tokens}


def _limit_worker(texts: list[str], dtype: str, ready, go, results) -> None:
    model = load_model(threads=1, dtype=dtype)
    batches, tokens, padded = packed_batches(model, texts)
    ready.release()
    go.wait()
    results.put({"wall": forward_all(model, batches), "end": time.time(), "tokens": tokens, "padded": padded})


def run_limit_processes(texts: list[str], dtype: str, processes: int = THREADS) -> dict:
    """The same forward pass in `processes` one-thread processes, each over every n-th chunk (so
    each gets a like mix of lengths), started together once all have loaded and tokenized."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.Queue()
    workers = [context.Process(target=_limit_worker, args=(texts[i::processes], dtype, ready, go, results))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.acquire()
    started = time.time()
    go.set()
    parts = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    tokens, padded = sum(p["tokens"] for p in parts), sum(p["padded"] for p in parts)
    return {"wall": max(p["end"] for p in parts) - started, "chunks": len(texts), "tokens": tokens,
            "padding": padded / tokens}


def sorted_batch_padding(model, texts: list[str], batch_size: int, block_rows: int | None = None) -> float:
    """Padding of `encode`'s batching, computed from its rule: each call sorts its texts by length in
    characters (longest first) and pads each batch of `batch_size` to its longest; `block_rows`: the
    texts reach it in calls of that many rows (the naive Ray pipeline) instead of one call."""
    lengths = np.array([len(row) for row in model.tokenizer(texts, add_special_tokens=True)["input_ids"]])
    chars = np.array([len(text) for text in texts])
    padded = 0
    for start in range(0, len(texts), block_rows or len(texts)):
        block = np.arange(start, min(len(texts), start + (block_rows or len(texts))))
        order = block[np.argsort(-chars[block], kind="stable")]
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            padded += len(rows) * int(lengths[rows].max())
    return padded / lengths.sum()


def run_encode(texts: list[str], batch_size: int, dtype: str = "float32") -> dict:
    model = load_model(dtype=dtype)
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    wall = time.perf_counter() - started
    return {"wall": wall, "chunks": len(texts), "padding": sorted_batch_padding(model, texts, batch_size)}


class EncodeBatch:
    """What a Ray Data batch-inference example does: one model per actor, encode each batch."""

    def __init__(self):
        self.model = load_model()

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = self.model.encode(list(batch["text"]), batch_size=len(batch["text"]))
        return batch


def run_naive_ray(texts: list[str], rows: int = 64) -> dict:
    import ray

    ray.init(num_cpus=THREADS, include_dashboard=False)
    started = time.perf_counter()
    ds = ray.data.from_items([{"text": text} for text in texts])
    ds.map_batches(EncodeBatch, batch_size=rows, concurrency=1, num_cpus=THREADS).materialize()
    wall = time.perf_counter() - started
    ray.shutdown()
    return {"wall": wall, "chunks": len(texts), "padding": sorted_batch_padding(load_model(), texts, rows, rows)}


VARIANTS = {
    "babelray": "babelray (read → language ID → chunk → embed → LanceDB, indexes included)",
    "limit": f"limit: forward pass only, one process, {THREADS} threads, pre-tokenized, length-sorted token-budget "
             "batches, babelray's dtype",
    "limit-processes": f"limit: the same in {THREADS} one-thread processes at once",
    "encode-32": "sentence-transformers `encode`, batch 32 (its default): the baseline",
    "encode-8": "sentence-transformers `encode`, batch 8",
    "encode-8-bf16": "sentence-transformers `encode`, batch 8, the model in bf16",
    "naive-ray": "naive Ray Data: `map_batches` of 64 rows into an `encode` actor",
}


def run_variant(variant: str, work: Path, settings: list[str]) -> dict:
    """One variant, in this process (the parent runs each in its own, so peak RSS is its own)."""
    if variant == "babelray":
        return run_babelray(work, settings)
    texts = json.loads((work / "chunks.json").read_text())
    dtype = json.loads((work / "chunks-counted.json").read_text())["dtype"]
    runs = {"limit": lambda t: run_limit(t, dtype), "limit-processes": lambda t: run_limit_processes(t, dtype),
            "naive-ray": run_naive_ray, "encode-32": lambda t: run_encode(t, 32),
            "encode-8": lambda t: run_encode(t, 8), "encode-8-bf16": lambda t: run_encode(t, 8, "bfloat16")}
    return runs[variant](texts)


def pipeline_dtype(work: Path, settings: list[str]) -> str:
    """The dtype babelray's embedding actors pick on this machine with these settings."""
    from babelray.embedding_model import pick_dtype

    return str(pick_dtype(babelray_config(work, settings).embedding.dtype, "cpu")).removeprefix("torch.")


def in_subprocess(variant: str, work: Path, settings: list[str]) -> dict:
    out = work / f"{variant}.json"
    out.unlink(missing_ok=True)
    process = psutil.Popen([sys.executable, __file__, "--variant", variant, "--work", str(work),
                            *(f"--set={assignment}" for assignment in settings)])
    with sampled(process) as usage:
        if process.wait() != 0:
            raise SystemExit(f"variant {variant} failed (exit {process.returncode})")
    return {**json.loads(out.read_text()), "rss": usage.peak_mib, "cpu_seconds": usage.cpu_seconds,
            "machine": usage.machine, "idle_by_10s": usage.idle_by_window(10)}


def model_tokens(texts: list[str]) -> int:
    """The model's own token count over the chunks, prompt and special tokens included."""
    from transformers import AutoTokenizer

    from babelray.bundled_e5 import ensure_bundled_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_bundled_model("multilingual-e5-small")))
    return sum(len(row) for row in tokenizer(texts, add_special_tokens=True)["input_ids"])


def chunk_texts(table_uri: str) -> list[str]:
    """The chunks babelray wrote, with e5's document prompt as babelray's table metadata says."""
    import lancedb

    uri, name = table_uri.rsplit("/", 1)
    table = lancedb.connect(uri).open_table(name.removesuffix(".lance"))
    prompt = json.loads(table.schema.metadata[b"babelray"])["document_prompt"]
    return [prompt + text for text in table.to_arrow().column("text").to_pylist()]


def report(results: dict, files: int, chunks: int, tokens: int, dtype: str) -> str:
    """The table of the variants that ran, with ratios to the limit and the baseline when they ran too."""
    limits = [variant for variant in ("limit", "limit-processes") if variant in results]
    limit_variant = min(limits, key=lambda v: results[v]["wall"]) if limits else None
    limit = tokens / results[limit_variant]["wall"] if limit_variant else None
    baseline = tokens / results["encode-32"]["wall"] if "encode-32" in results else None
    lines = [f"{files} files, {chunks} chunks, {tokens:,} tokens (the model's count, prompt and special "
             f"tokens included); babelray's dtype here: {dtype}; the limit is the faster of the limit rows "
             f"({limit_variant or 'not run'})", "",
             "| variant | wall s | chunks/s | tokens/s | × limit | × baseline | padding | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, title in VARIANTS.items():
        if variant not in results:
            continue
        row = results[variant]
        rate = tokens / row["wall"]
        ratio_limit = f"{rate / limit:.2f}" if limit else "–"
        ratio_baseline = f"{rate / baseline:.2f}" if baseline else "–"
        lines.append(f"| {title} | {row['wall']:.1f} | {chunks / row['wall']:.1f} | {rate:,.0f} | "
                     f"{ratio_limit} | {ratio_baseline} | {row['padding']:.3f} | {row['rss']:,.0f} |")
    if "babelray" in results:
        babelray = results["babelray"]
        lines += ["", "babelray, where the time went (seconds):", "",
                  "| phase or operator | wall s | task s (summed over tasks) | CPU s |", "|---|---:|---:|---:|"]
        lines += [f"| {phase} | {value:.1f} | | |" for phase, value in babelray["seconds"].items()]
        lines += [f"| {name} | | {values['task_seconds']:.1f} ({values['tasks']} tasks) | "
                  f"{values['cpu_seconds']:.1f} |" for name, values in babelray["operators"].items()]
        lines += ["", cpu_table(babelray)]
        if limit_variant:
            lines += ["", cpu_budget(babelray, results[limit_variant]["wall"])]
    return "\n".join(lines)


def cpu_budget(babelray: dict, limit_wall: float, target: float = 0.85) -> str:
    """What `target` × the limit leaves for everything but the forward pass, against what the run spent.
    The limit keeps its THREADS cores busy with the forward pass, so `cores × its wall` is the forward's
    CPU time; babelray at `target` may take `cores × limit wall / target` (idle time included)."""
    cores = THREADS
    allowed_wall = limit_wall / target
    allowed, forward, spent = cores * allowed_wall, cores * limit_wall, cores * babelray["wall"]
    embedding = babelray["operators"]["MapBatches(EmbedChunks)"]["cpu_seconds"]
    return (f"CPU budget at {target} × the limit: {cores} cores × {allowed_wall:.1f} s = {allowed:.0f} CPU-s, of which "
            f"the forward pass takes {forward:.0f} (the limit's), leaving {allowed - forward:.0f} for everything else. "
            f"This run had {cores} × {babelray['wall']:.1f} = {spent:.0f}: {embedding:.0f} in its embedding tasks "
            f"({embedding / forward:.2f} × the limit's forward pass) and {spent - embedding:.0f} for everything else, "
            f"idle included.")


def cpu_table(row: dict) -> str:
    """Where the machine's CPU seconds went while a variant ran: its processes by role, and idle."""
    lines = [f"CPU seconds over {row['wall']:.1f} s of wall time, the whole machine: {row['machine']['busy']:.1f} busy, "
             f"{row['machine']['idle']:.1f} idle; idle by 10-second window: "
             f"{' '.join(f'{seconds:g}' for seconds in row['idle_by_10s'])}", "", "| process | CPU s |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in row["cpu_seconds"].items() if seconds >= 0.1]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the shared data folder (docs_fastapi/, code/, xquad/)")
    parser.add_argument("--work", default="/tmp/throughput", help="scratch folder (corpus, table, results)")
    parser.add_argument("--scale", type=float, default=1.0, help="copies of the corpus (below 1: a share of it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configs/local.yaml key for the babelray run, e.g. embedding.torch_threads=2")
    parser.add_argument("--only", type=lambda text: text.split(","), default=list(VARIANTS),
                        help="comma-separated variants to run (default: all), e.g. babelray to compare its "
                             f"settings; the others need an earlier babelray run's chunks. Variants: {', '.join(VARIANTS)}")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    work = Path(args.work)
    if args.variant:
        (work / f"{args.variant}.json").write_text(json.dumps(run_variant(args.variant, work, args.set), default=str))
        return
    if not args.data:
        parser.error("--data is required")
    unknown = set(args.only) - set(VARIANTS)
    if unknown:
        parser.error(f"--only: no variant {', '.join(sorted(unknown))}")
    corpus = build_corpus(Path(args.data), work / "corpus", args.scale)
    files = sum(1 for path in corpus.rglob("*") if path.is_file())

    results = {}
    if "babelray" in args.only:
        shutil.rmtree(work / "lancedb", ignore_errors=True)
        results["babelray"] = in_subprocess("babelray", work, args.set)
        texts = chunk_texts(results["babelray"]["table"])
        (work / "chunks.json").write_text(json.dumps(texts))
        (work / "chunks-counted.json").write_text(json.dumps({"chunks": len(texts), "tokens": model_tokens(texts),
                                                              "dtype": pipeline_dtype(work, args.set)}))
    elif not (work / "chunks-counted.json").exists():
        parser.error(f"no chunks in {work} yet: run the babelray variant first")
    for variant in args.only:
        if variant != "babelray":
            results[variant] = in_subprocess(variant, work, [])
    counted = json.loads((work / "chunks-counted.json").read_text())
    print("\n" + report(results, files, counted["chunks"], counted["tokens"], counted["dtype"]))
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
