"""Scale: the whole job over generated documents, with a tiny embedding model so the run
measures the pipeline (reading, language ID, chunking, the LanceDB commits), not the model.

    python bench/scale.py --data ../shared/data --work /tmp/scale --docs 100000
    python bench/scale.py --data ../shared/data --work /tmp/scale --docs 1000000

Documents: a sentence drawn at random from the language-ID sentences of 75 languages
(`lid/sentences/`) and up to three more of its language (mostly one or two sentences in all),
written as Parquet files of 1,000 documents (generated once per size, kept under --work).
Model: a random-weight Qwen3 (hidden size 64, two layers) with the real Qwen3 tokenizer,
built by `babelray.testing.build_tiny_qwen3`. Config: configs/local.yaml with two chunking
actors and two embedding actors taking tasks of 1,024 rows (see below), indexes included.

Reports wall time, documents/s and peak RSS, sampled every 0.5 s: the driver alone, the Ray
workers together (every process below the driver except Ray's own services), and the largest
single worker; over the whole run and per phase of the run summary (startup, the stream with
its commits, the last commit, the indexes). Cost should grow linearly with the documents and memory stay flat, since Ray
Data streams the documents and the sink commits them in rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

DOCS_PER_FILE = 1_000
RAY_SERVICES = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env", "DashboardAgent",
                "RuntimeEnvAgent")


def generate(data: Path, folder: Path, docs: int, seed: int = 0) -> list[Path]:
    files = [folder / f"part-{index:05d}.parquet" for index in range(-(-docs // DOCS_PER_FILE))]
    if all(path.exists() for path in files) and (folder / "docs").read_text() == str(docs):
        return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sentences = [(path.stem, line) for path in sorted((data / "lid" / "sentences").glob("*.txt"))
                 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    for index, path in enumerate(files):
        n = min(DOCS_PER_FILE, docs - index * DOCS_PER_FILE)
        ids, texts = [], []
        for row in range(n):
            lang, first = rng.choice(sentences)
            # Mostly one language per document, as real pages are.
            same = [line for code, line in rng.sample(sentences, 40) if code == lang][:3]
            ids.append(f"doc-{index * DOCS_PER_FILE + row:08d}")
            texts.append(" ".join([first, *same[: rng.randint(0, 3)]]))
        pq.write_table(pa.table({"id": ids, "text": texts}), path)
    (folder / "docs").write_text(str(docs))
    return files


@contextlib.contextmanager
def memory_samples():
    """Yields a list that fills with (seconds since start, driver MiB, all workers MiB, largest worker MiB)
    every 0.5 s; a worker is any process below this one but Ray's own services."""
    samples, done = [], threading.Event()
    me, started = psutil.Process(), time.perf_counter()

    def sample():
        while not done.is_set():
            workers = []
            for process in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if not any(name in " ".join(process.cmdline()) for name in RAY_SERVICES):
                        workers.append(process.memory_info().rss / 2**20)
            with contextlib.suppress(psutil.Error):
                samples.append((time.perf_counter() - started, me.memory_info().rss / 2**20, sum(workers),
                                max(workers, default=0.0)))
            done.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def peaks_by_phase(samples: list[tuple], seconds: dict[str, float]) -> dict[str, dict]:
    """Peak driver / workers / largest-worker RSS within each phase of the run summary."""
    peaks, start = {}, 0.0
    for phase, length in seconds.items():
        inside = [row for row in samples if start <= row[0] < start + length] or [(0, 0.0, 0.0, 0.0)]
        peaks[phase] = {"driver": round(max(row[1] for row in inside)), "workers": round(max(row[2] for row in inside)),
                        "largest_worker": round(max(row[3] for row in inside))}
        start += length
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the shared data folder (lid/sentences/)")
    parser.add_argument("--work", default="/tmp/scale", help="scratch folder (documents, model, table)")
    parser.add_argument("--docs", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(args.work)

    from babelray.testing import build_tiny_qwen3, local_config
    from pipelines.ingest import run_ingest

    started = time.perf_counter()
    files = generate(Path(args.data), work / f"docs-{args.docs}", args.docs)
    print(f"{args.docs:,} documents in {len(files)} Parquet files ({time.perf_counter() - started:.0f} s to make)")
    model = work / "tiny-qwen3"
    if not (model / "modules.json").exists():
        build_tiny_qwen3(model)
    run_dir = work / f"run-{args.docs}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = local_config(run_dir, files)
    cfg.embedding.model = str(model)
    # The local config's embedding tasks (64 rows, one queued per actor) are sized for e5-small, whose
    # tasks take seconds; the tiny model's take milliseconds, and would wait on Ray's task round trips.
    cfg.embedding.resources.batch_size = 1024
    cfg.embedding.resources.tasks_in_flight = None
    # Chunking is as much of the work as the tiny model here: two actors for each.
    cfg.chunking.resources.max_actors = cfg.chunking.resources.min_actors = 2
    with memory_samples() as samples:
        summary = run_ingest(cfg)
    result = {"docs": args.docs, "wall_s": summary["wall_seconds"], "docs_per_s": summary["documents_per_second"],
              "seconds": summary["seconds"], "chunks": summary["chunks"],
              "documents_embedded": summary["documents_embedded"], "documents_rejected": summary["documents_rejected"],
              "table_rows": summary["table_rows"], "commits": summary["commits"],
              "peak_rss_mib": {"driver": round(max(row[1] for row in samples)),
                               "workers": round(max(row[2] for row in samples)),
                               "largest_worker": round(max(row[3] for row in samples))},
              "peak_rss_mib_by_phase": peaks_by_phase(samples, summary["seconds"])}
    print(json.dumps(result, indent=2))
    (work / f"result-{args.docs}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
