"""The issue-5 scenario on a copy of the sample corpus, with the figures it produces.

    python bench/incremental_scenario.py [--work /tmp/incremental] [--config configs/local.yaml]

1. `babelray run` from scratch; 2. the same again (everything unchanged);
3. edit 3 documents, delete 2, add 4, `babelray run --prune`;
4. a run from scratch of the changed corpus into another folder, compared chunk for chunk;
5. a run killed (SIGKILL of the driver) after its first commit, then run again.
Prints each run's summary line and wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def babelray(config: Path, *extra: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "babelray.cli", "run", "--config", str(config), "--json", *extra],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    summary = json.loads(out)
    summary["command_seconds"] = time.perf_counter() - started
    return summary


def report(label: str, s: dict) -> None:
    print(f"{label:<28} {s['command_seconds']:6.1f} s  in {s['documents_in']:>3} = new {s['documents_new']} + "
          f"changed {s['documents_changed']} + unchanged {s['documents_unchanged']}; embedded "
          f"{s['documents_embedded']}, skipped {s['documents_skipped']}, rejected {s['documents_rejected']}, "
          f"deleted {s['documents_deleted']}; tokens {s['tokens']}, saved {s['tokens_saved']}; "
          f"commits {s['commits']}; rows {s['table_rows']}")


def write_config(base: dict, work: Path, name: str, corpus: Path, small_rounds: bool = False) -> Path:
    cfg = json.loads(json.dumps(base))
    run = {}
    if small_rounds:  # blocks of 4 documents and a commit per block, so a kill lands between commits
        run = {"commit_rows": 4}
        for section in ("langid", "chunking", "embedding"):
            cfg[section]["resources"]["batch_size"] = 4
    cfg["input"]["paths"] = [str(corpus)]
    cfg["sink"]["uri"] = str(work / name)
    cfg["run"] = {**cfg.get("run", {}), "summary_dir": str(work / "runs"), **run}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def table_rows(db: Path) -> dict[str, dict]:
    rows = lancedb.connect(str(db)).open_table("chunks").to_arrow().to_pylist()
    return {row["chunk_id"]: row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/babelray-incremental")
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    corpus = work / "docs"
    shutil.copytree(REPO / "samples" / "corpus" / "docs", corpus)
    base = yaml.safe_load(Path(args.config).read_text())
    config = write_config(base, work, "db", corpus)

    report("1. from scratch", babelray(config))
    report("2. again, nothing changed", babelray(config))
    for name in ["en/bicycle-chain.md", "de/fahrradkette.md", "ja/jishin-sonae.md"]:
        path = corpus / name
        path.write_text(path.read_text(encoding="utf-8") + "\n\nEdited: one more paragraph.\n", encoding="utf-8")
    for name in ["fr/pierre-de-rosette.md", "es/volcanes.md"]:
        (corpus / name).unlink()
    for name, text in {"en/new-tides.md": "# Tides\n\nThe moon raises two bulges of water.\n",
                       "de/neu-gezeiten.md": "# Gezeiten\n\nDer Mond hebt zwei Wasserberge.\n",
                       "it/nuovo-maree.md": "# Maree\n\nLa luna solleva due rigonfiamenti.\n",
                       "zh/xin-chaoxi.md": "# 潮汐\n\n月球形成两个水隆起。\n"}.items():
        (corpus / name).parent.mkdir(exist_ok=True)
        (corpus / name).write_text(text, encoding="utf-8")
    report("3. edit 3, delete 2, add 4", babelray(config, "--prune"))

    scratch = babelray(write_config(base, work, "scratch-db", corpus))
    report("4. changed corpus, scratch", scratch)
    left, right = table_rows(work / "db"), table_rows(work / "scratch-db")
    same_text = all(left[c]["text"] == right[c]["text"] for c in left) if left.keys() == right.keys() else False
    cosine = min(float(np.dot(left[c]["vector"], right[c]["vector"])) for c in left) if same_text else float("nan")
    print(f"   incremental vs scratch: {len(left)} vs {len(right)} chunks, same ids and text: {same_text}, "
          f"lowest cosine between the two vectors of a chunk: {cosine:.6f}")

    killed = write_config(base, work, "killed-db", corpus, small_rounds=True)
    started = time.perf_counter()
    driver = subprocess.Popen([sys.executable, "-m", "babelray.cli", "run", "--config", str(killed)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    while driver.poll() is None and not committed:
        time.sleep(0.5)
        if (work / "killed-db" / "chunks.lance").exists():
            committed = lancedb.connect(str(work / "killed-db")).open_table("chunks").count_rows()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    print(f"5. killed after {time.perf_counter() - started:.1f} s with {committed} chunks committed")
    report("   run again", babelray(killed))
    resumed = table_rows(work / "killed-db")
    print(f"   resumed table: {len(resumed)} chunks, same ids as scratch: {resumed.keys() == right.keys()}")


if __name__ == "__main__":
    main()
