"""Memory and time of the drift job over a large synthetic table (default one million rows).

    python bench/drift_memory.py --work /tmp/drift-memory [--rows 1000000] [--dimensions 384]

Writes `--rows` synthetic unit vectors (8 languages) in fragments of 100k rows, then a tenth
more, shifted, an hour later; runs the drift job twice (first look, then with the new rows as
the current window) and prints, per run, the wall time, rows read and the driver's peak
resident memory above its level before the run (sampled every 50 ms). The driver holds only
sums and the bounded samples (`sample.rows_per_group` per language/route group and window),
so its peak should not grow with the table; the table itself is several times larger.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psutil
import yaml

from babelray import testing
from babelray.config import load_drift_config

LANGS = ["en", "de", "fr", "es", "ru", "zh", "ja", "ar"]
FRAGMENT_ROWS = 100_000


class PeakMemory:
    """The process's peak RSS while the block runs, sampled in a thread."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = self.start = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def write_rows(db: Path, model: Path, rows: int, dimensions: int, at: datetime, prefix: str, shift: bool) -> None:
    space = testing.SyntheticSpace(dimensions, LANGS, seed=1)
    rng = np.random.default_rng(len(prefix))
    for start in range(0, rows, FRAGMENT_ROWS):
        vectors, langs = space.sample(rng, min(FRAGMENT_ROWS, rows - start))
        if shift:
            vectors = testing.normalize(vectors + 0.1 * testing.normalize(rng.standard_normal((1, dimensions))))
        testing.write_vector_rows(str(db), "chunks", vectors, langs, at, model=str(model),
                                  doc_prefix=f"{prefix}{start}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dimensions", type=int, default=384)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    # The probe needs a model of the table's size: a tiny random one whose hidden size is --dimensions.
    model = testing.build_tiny_qwen3(args.work / "model", hidden_size=args.dimensions)
    ingest = yaml.safe_load((testing.REPO / "configs" / "local.yaml").read_text())
    ingest["embedding"]["model"] = str(model)
    ingest["sink"]["uri"] = str(args.work / "db")
    (args.work / "ingest.yaml").write_text(yaml.safe_dump(ingest))
    (args.work / "drift.yaml").write_text(yaml.safe_dump({"ingest_config": "ingest.yaml",
                                                          "report_dir": str(args.work / "reports")}))
    drift, cfg = load_drift_config(args.work / "drift.yaml")

    started = time.perf_counter()
    before = datetime.now(timezone.utc) - timedelta(hours=2)
    write_rows(args.work / "db", model, args.rows, args.dimensions, before, "old", shift=False)
    new_rows = args.rows // 10
    write_rows(args.work / "db", model, new_rows, args.dimensions, before + timedelta(hours=1), "new", shift=True)
    size = sum(path.stat().st_size for path in (args.work / "db").rglob("*") if path.is_file())
    print(f"table: {args.rows + new_rows:,} rows x {args.dimensions} dims, {size / 2**30:.2f} GiB on disk, "
          f"written in {time.perf_counter() - started:.0f} s")

    from pipelines.drift import run_drift

    drift.window.split = "embedded_at"
    drift.window.current_period = "90m"
    drift.window.reference_period = "1d"
    for label in ("run 1", "run 2"):
        with PeakMemory() as memory:
            started = time.perf_counter()
            result = run_drift(drift, cfg)
            wall = time.perf_counter() - started
        run = result["run"]
        read = run["reference"]["rows"] + run["current"]["rows"]
        print(f"{label}: {run['status']} (exit {run['exit_code']}), read {read:,} rows in {wall:.1f} s "
              f"({read / wall:,.0f} rows/s); driver RSS before {memory.start / 2**20:,.0f} MiB, "
              f"peak {memory.peak / 2**20:,.0f} MiB (+{(memory.peak - memory.start) / 2**20:,.0f} MiB); "
              f"sample {drift.sample.rows_per_group} rows per group and window")


if __name__ == "__main__":
    main()
