"""Eval job: the evaluation suites over a data folder, then the report.

Composes `babelray.evaluation` suites; each suite reads the user's config for the
model, prompts, chunking, routing and translation, and uses scratch tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from babelray import __version__
from babelray.config import Config
from babelray.embedding_model import load_model_spec, pick_device, pick_dtype
from babelray.evaluation import data as eval_data
from babelray.evaluation import suites as eval_suites
from babelray.evaluation.report import write_report

SUITES = ("xquad", "tatoeba", "language_id", "fastapi")
SUITE_DATA = {"xquad": "xquad", "tatoeba": "tatoeba", "language_id": "lid", "fastapi": "docs_fastapi"}


@dataclass
class EvalOptions:
    suites: tuple[str, ...] = SUITES
    mrl_dims: list[int] = field(default_factory=lambda: [256, 128, 64])
    tatoeba_pairs: int | None = 100  # None: every pair (up to 1000); 100 keeps a 2-core run to minutes
    lid_lines: int | None = None
    ann_types: tuple[str, ...] = eval_suites.ANN_TYPES
    keep_work: bool = False
    config_path: str = "<dict>"


def run_eval(cfg: Config, data: Path, out: Path, options: EvalOptions | None = None) -> dict:
    options = options or EvalOptions()
    unknown = set(options.suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown eval suite(s) {sorted(unknown)}; choose from {list(SUITES)}")
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"evaluation data folder {data} does not exist")
    code_commit = _git_commit()  # before LanceDB starts its runtime: forking after it is unsafe
    work = Path(tempfile.mkdtemp(prefix="babelray-eval-"))
    ctx = eval_suites.EvalContext(cfg, data, work)
    started = time.perf_counter()
    results: dict = {}
    seconds: dict[str, float] = {}
    run_suite = {
        "xquad": lambda: eval_suites.xquad(ctx, options.mrl_dims, options.ann_types),
        "tatoeba": lambda: eval_suites.tatoeba(ctx, options.tatoeba_pairs),
        "language_id": lambda: eval_suites.language_id(ctx, options.lid_lines),
        "fastapi": lambda: eval_suites.fastapi_docs(ctx, options.ann_types),
    }
    try:
        for name in options.suites:
            suite_started = time.perf_counter()
            results[name] = run_suite[name]()
            seconds[name] = time.perf_counter() - suite_started
    finally:
        if not options.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    spec = load_model_spec(cfg.embedding)
    device = pick_device(cfg.embedding.device)
    results["run"] = {
        "model": cfg.embedding.model, "model_revision": spec.revision, "dimensions": spec.dimensions(cfg.embedding),
        "full_dimensions": spec.full_dimensions, "pooling": spec.pooling, "device": device,
        "dtype": str(pick_dtype(cfg.embedding.dtype, device)).removeprefix("torch."),
        "document_prompt": spec.document_prompt, "query_prompt": spec.query_prompt,
        "config": options.config_path, "fingerprint": cfg.fingerprint(), "babelray_version": __version__,
        "code_commit": code_commit, "data": str(data),
        "data_fingerprint": eval_data.fingerprint([data / SUITE_DATA[name] for name in options.suites]),
        "suites": list(options.suites), "suite_seconds": seconds,
        "wall_seconds": time.perf_counter() - started, "cpus": os.cpu_count(),
        "work": str(work) if options.keep_work else None,
    }
    results["files"] = {kind: str(path) for kind, path in write_report(results, Path(out)).items()}
    return results


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() or None
