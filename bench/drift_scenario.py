"""The drift job on the sample table: no change, then a batch from a very different domain.

    python bench/drift_scenario.py --data ../shared/data --work /tmp/drift-scenario

Builds the `make run` table (sample corpus + the project's code) under --work, runs
`babelray drift` with configs/drift.yaml twice (nothing changed in between), ingests a batch
of short conversational English sentences (Tatoeba, one sentence per document: a domain the
table has never seen), and runs it again. Prints each run's status, exit code, windows, the
statistics that fired and the report folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from babelray import testing
from babelray.config import load_drift_config
from pipelines.drift import run_drift
from pipelines.ingest import run_ingest


def drift_once(drift, cfg, label: str) -> dict:
    started = time.perf_counter()
    result = run_drift(drift, cfg)
    run = result["run"]
    fired = sorted({(s["group"], s["name"]) for s in result["statistics"] if s["status"] == "alert"})
    print(f"\n{label}: {run['status'].upper()} (exit {run['exit_code']}) in {time.perf_counter() - started:.1f} s; "
          f"table v{run['table_version']}; reference {run['reference']['rows']} rows "
          f"({run['reference']['description']}), current {run['current']['rows']} rows")
    by_name = {s["name"]: s for s in result["statistics"] if s["group"] == "all"}
    print("  all rows: " + ", ".join(f"{name} {by_name[name]['value']:.3f} ({by_name[name]['status']})"
                                      for name in ("raw_norm_cv", "consecutive_cosine_mean", "centroid_shift_ratio",
                                                   "mmd2", "domain_classifier_auc", "language_mix_distance",
                                                   "probe_alignment", "probe_stability")
                                      if name in by_name and by_name[name]["value"] is not None))
    print(f"  alerts: {fired[:12]}{' ...' if len(fired) > 12 else ''}")
    print(f"  report: {result['files']['markdown']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the shared evaluation data folder (tatoeba/)")
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--sentences", type=int, default=300, help="documents in the new-domain batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    drift, _ = load_drift_config(testing.REPO / "configs" / "drift.yaml")
    drift.report_dir = str(args.work / "reports")
    cfg = testing.local_config(args.work, [testing.SAMPLE_CORPUS, *(testing.REPO / name for name in
                                                                   ("operators", "pipelines", "babelray"))])
    if not (args.work / "lancedb" / "chunks.lance").exists():
        summary = run_ingest(cfg)
        print(f"sample table: {summary['documents_embedded']} documents, {summary['chunks']} chunks, "
              f"{summary['wall_seconds']:.0f} s")

    drift_once(drift, cfg, "run 1 (first look)")
    drift_once(drift, cfg, "run 2 (nothing changed)")

    lines = (Path(args.data) / "tatoeba" / "tatoeba.fra-eng.eng").read_text(encoding="utf-8").splitlines()
    batch = args.work / "chat.jsonl"
    batch.write_text("".join(json.dumps({"id": f"chat-{i}", "text": line}) + "\n"
                             for i, line in enumerate(lines[:args.sentences])), encoding="utf-8")
    cfg.input.paths = [str(batch)]
    summary = run_ingest(cfg)
    print(f"\nbatch: {summary['documents_embedded']} short English sentences (Tatoeba) ingested, "
          f"{summary['chunks']} chunks")
    drift_once(drift, cfg, "run 3 (after the new-domain batch)")


if __name__ == "__main__":
    main()
