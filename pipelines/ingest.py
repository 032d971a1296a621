"""Ingest job: files -> language ID -> routing -> [translation] -> chunks -> embeddings -> LanceDB.

Composes the operators into one streaming Ray Data plan; the stages and their
resources are listed in `stages()` so `--dry-run` prints exactly what runs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import ray

from babelray import __version__
from babelray.config import Config
from babelray.embedding_model import load_model_spec
from babelray.runtime import actor_options, cluster_has_gpus, init_ray
from operators.chunk import ChunkDocuments
from operators.embed import EmbedChunks
from operators.langid import DetectLanguage
from operators.read import ReadSources, list_sources
from operators.route import RouteDocuments
from operators.schema import chunk_schema
from operators.sink import commit_run, staging_uri, table_uri, write_staging
from operators.summary import summarize_staging, write_summary
from operators.table_lock import table_lock
from operators.translate import TranslateDocuments, assert_models_available
from pipelines.search import build_indexes


# Reading and routing are light; a whole CPU per task would starve the model actors on small nodes.
LIGHT_TASK_CPUS = 0.25


def read_sources(batch, *, input_cfg):
    # Reading holds no model, so it runs as plain tasks rather than actors.
    yield from ReadSources(input_cfg)(batch)


def route_documents(batch, *, routing_cfg):
    return RouteDocuments(routing_cfg)(batch)


@dataclass(frozen=True)
class Stage:
    name: str
    operator: Any
    kwargs: dict  # map_batches keyword arguments


def stages(cfg: Config, has_gpus: bool | None) -> list[Stage]:
    return [
        Stage("read", read_sources, {"fn_kwargs": {"input_cfg": cfg.input}, "batch_size": 8,
                                     "batch_format": "pyarrow", "num_cpus": LIGHT_TASK_CPUS}),
        Stage("language_id", DetectLanguage, {"fn_constructor_args": (cfg.langid,),
                                              **actor_options(cfg.langid.resources, has_gpus)}),
        Stage("route", route_documents, {"fn_kwargs": {"routing_cfg": cfg.routing}, "batch_format": "pyarrow",
                                             "num_cpus": LIGHT_TASK_CPUS}),
        *([Stage("translate", TranslateDocuments, {"fn_constructor_args": (cfg.translation,),
                                                   **actor_options(cfg.translation.resources, has_gpus)})]
          if cfg.translation.enabled else []),
        Stage("chunk", ChunkDocuments, {"fn_constructor_args": (cfg.chunking, cfg.embedding),
                                        **actor_options(cfg.chunking.resources, has_gpus)}),
        Stage("embed", EmbedChunks, {"fn_constructor_args": (cfg.embedding,),
                                     **actor_options(cfg.embedding.resources, has_gpus)}),
    ]


def describe_plan(cfg: Config, sources: list[dict], plan: list[Stage]) -> str:
    lines = [f"input: {len(sources)} source files from {cfg.input.paths}"]
    for stage in plan:
        kwargs = stage.kwargs
        pool = kwargs.get("compute")
        runs_as = f"actors {pool.min_size}..{pool.max_size}" if pool else "tasks"
        lines.append(f"  {stage.name:<12} {stage.operator.__name__:<16} {runs_as:<12} "
                     f"cpus={kwargs.get('num_cpus', 1)} gpus={kwargs.get('num_gpus', 0)} "
                     f"batch_rows={kwargs.get('batch_size', 'default')}")
    lines.append(f"sink: {table_uri(cfg.sink, cfg.sink.table)} (rejects: {cfg.sink.rejects_table})")
    return "\n".join(lines)


def run_ingest(cfg: Config, *, dry_run: bool = False, prune: bool = False) -> dict | str:
    """Run the job; returns the summary (or, with dry_run, the plan without starting work).
    `prune`: the input is the complete source, so documents the table holds but the run did not
    see are deleted in the same commit."""
    started = time.perf_counter()
    sources = [row for path in cfg.input.paths for row in list_sources(path, cfg.input)]
    spec = load_model_spec(cfg.embedding)
    if cfg.translation.enabled and cfg.translation.fail_on_missing_model:
        assert_models_available(cfg.translation)  # before any work starts
    dimensions = spec.dimensions(cfg.embedding)
    if dry_run:
        return describe_plan(cfg, sources, stages(cfg, has_gpus=None))
    init_ray(cfg.ray)
    plan = stages(cfg, has_gpus=cluster_has_gpus())

    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    if not sources:
        raise ValueError(f"no input files under {cfg.input.paths}")
    ds = ray.data.from_items(sources)
    for stage in plan:
        ds = ds.map_batches(stage.operator, **stage.kwargs)

    with table_lock(cfg.sink, run_id):  # the plan is lazy: nothing has run before this point
        staging = staging_uri(cfg.sink, run_id, cfg.run.staging_dir)
        write_staging(ds, staging, chunk_schema(dimensions), cfg.sink.storage_options, num_cpus=LIGHT_TASK_CPUS)
        summary = summarize_staging(staging, cfg.sink.storage_options)
        metadata = {**spec.table_metadata(cfg.embedding), "fingerprint": cfg.fingerprint(),
                    "pipeline_version": __version__}
        commit = commit_run(staging, cfg.sink, run_id, metadata, prune=prune)
        indexes = build_indexes(cfg) if cfg.index.after_ingest and commit.table_rows else []

    wall = time.perf_counter() - started
    summary.update({
        "run_id": run_id,
        "table": table_uri(cfg.sink, cfg.sink.table),
        "table_version": commit.table_version,
        "table_rows": commit.table_rows,
        "documents_deleted": commit.documents_deleted,
        "indexes": indexes,
        "sources_listed": len(sources),
        "model": cfg.embedding.model,
        "dimensions": dimensions,
        "wall_seconds": round(wall, 3),
        "documents_per_second": summary["documents_in"] / wall,
        "tokens_per_second": summary["tokens"] / wall,
    })
    summary["summary_path"] = str(write_summary(summary, cfg.run.summary_dir, run_id))
    return summary
