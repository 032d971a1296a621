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
its commits, the last commit, the indexes); and the CPU seconds of those processes by role
(bench/processes.py). Cost should grow linearly with the documents and memory stay flat, since
Ray Data streams the documents and the sink commits them in rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from processes import sampled

DOCS_PER_FILE = 1_000


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
    # A model this small gains nothing from a second thread; two one-thread actors instead.
    cfg.embedding.torch_threads = 1
    cfg.embedding.resources.max_actors = cfg.embedding.resources.min_actors = 2
    # Chunking is as much of the work as the tiny model here: two actors for each.
    cfg.chunking.resources.max_actors = cfg.chunking.resources.min_actors = 2
    with sampled() as usage:
        summary = run_ingest(cfg)
    phases, start = {}, 0.0
    for phase, length in summary["seconds"].items():
        phases[phase], start = usage.peaks(start, start + length), start + length
    result = {"docs": args.docs, "wall_s": summary["wall_seconds"], "docs_per_s": summary["documents_per_second"],
              "seconds": summary["seconds"], "chunks": summary["chunks"],
              "documents_embedded": summary["documents_embedded"], "documents_rejected": summary["documents_rejected"],
              "table_rows": summary["table_rows"], "commits": summary["commits"],
              "peak_rss_mib": usage.peaks(), "peak_rss_mib_by_phase": phases,
              "cpu_seconds": usage.cpu_seconds, "machine_cpu_seconds": usage.machine}
    print(json.dumps(result, indent=2))
    (work / f"result-{args.docs}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
