"""Ingest job: files -> what changed -> language ID -> routing -> [translation] -> chunks
-> embeddings -> LanceDB.

Composes the operators into one streaming Ray Data plan; the stages and their
resources are listed in `stages()` so `--dry-run` prints exactly what runs. The
driver feeds the plan's output to the sink's `TableWriter`, which commits it in
rounds (see `operators/sink.py` for why that makes runs resumable).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray

from babelray import __version__
from babelray.config import Config
from babelray.embedding_model import load_model_spec
from babelray.runtime import actor_options, add_stage_times, cluster_has_gpus, init_ray, stage_times
from operators.chunk import ChunkDocuments
from operators.embed import EmbedChunks
from operators.incremental import ClassifyChanges, RunLedger
from operators.langid import DetectLanguage
from operators.read import list_sources, read_sources
from operators.route import route_documents
from operators.schema import REJECT_WORKER_CRASHED
from operators.sink import TableState, TableWriter, connect, open_table, read_table_metadata, table_uri
from operators.summary import new_run_id, write_summary
from operators.table_alias import TableNames, resolve_tables, switch_to, versioned_names
from operators.table_lock import table_lock
from operators.translate import TranslateDocuments, assert_models_available
from pipelines.search import build_indexes

logger = logging.getLogger(__name__)


# Reading and routing are light; a whole CPU per task would starve the model actors on small nodes.
LIGHT_TASK_CPUS = 0.25
# A dictionary lookup per document: it reserves no CPU, so it never holds back the read tasks.
INCREMENTAL_CPUS = 0


@dataclass(frozen=True)
class Stage:
    name: str
    operator: Any
    kwargs: dict  # map_batches keyword arguments
    # Re-cut the input into blocks of at most this many rows first. Ray Data never splits a block
    # between tasks, so one block of many documents' chunks would be one long task on one actor, and
    # its output would reach the sink only when all of it is done.
    rows_per_block: int | None = None


def stages(cfg: Config, has_gpus: bool | None, known: TableState | None = None, ledger=None,
           only_docs: frozenset[str] | None = None, redo: frozenset[str] = frozenset(),
           isolate: bool = False) -> list[Stage]:
    """`known`: what the target table holds (None in a dry run: everything counts as new);
    `ledger`: the run's RunLedger; `only_docs`: read only these ids; `redo`: embed these even when
    unchanged; `isolate`: one document per task (the retry of documents a crashed worker lost)."""
    known = known or TableState.empty()
    retries = cfg.run.task_retries

    def actors(resources):
        return actor_options(resources, has_gpus, retries, one_task_at_a_time=isolate)

    return [
        Stage("read", read_sources, {"fn_kwargs": {"input_cfg": cfg.input, "only_docs": only_docs},
                                     "batch_size": 1 if isolate else 8, "batch_format": "pyarrow",
                                     "num_cpus": LIGHT_TASK_CPUS, "max_retries": retries}),
        # One actor: it must see every id of the run to find duplicates; a lookup per document is cheap.
        # Its CPU share also differs from the read tasks': Ray Data fuses a task stage into the next
        # actor stage when their resources match, which would make this one actor do all reading.
        Stage("incremental", ClassifyChanges, {"fn_constructor_args": (known.embedded, known.rejected,
                                                                       cfg.fingerprint(), ledger, redo),
                                               "compute": ray.data.ActorPoolStrategy(size=1),
                                               "num_cpus": INCREMENTAL_CPUS, "batch_size": None,
                                               "batch_format": "pyarrow"}),  # blocks as the reads made them
        Stage("language_id", DetectLanguage, {"fn_constructor_args": (cfg.langid,),
                                              **actors(cfg.langid.resources)}),
        Stage("route", route_documents, {"fn_kwargs": {"routing_cfg": cfg.routing}, "batch_format": "pyarrow",
                                         "num_cpus": LIGHT_TASK_CPUS, "max_retries": retries}),
        *([Stage("translate", TranslateDocuments, {"fn_constructor_args": (cfg.translation,),
                                                   **actors(cfg.translation.resources)})]
          if cfg.translation.enabled else []),
        Stage("chunk", ChunkDocuments, {"fn_constructor_args": (cfg.chunking, cfg.embedding, True),
                                        **actors(cfg.chunking.resources)}),
        Stage("embed", EmbedChunks, {"fn_constructor_args": (cfg.embedding,), **actors(cfg.embedding.resources)},
              rows_per_block=cfg.embedding.resources.batch_size),
    ]


def isolated(cfg: Config) -> Config:
    """The same job with one document per batch, to retry documents a crashed worker lost."""
    cfg = cfg.model_copy(deep=True)
    for section in (cfg.langid, cfg.translation, cfg.chunking, cfg.embedding):
        section.resources.batch_size = 1
    return cfg


@contextlib.contextmanager
def failure_budget(cfg: Config, one_row_blocks: bool = False):
    """Ray Data settings for one pass: how many blocks may fail for good (their documents are
    found through the ledger and rejected), and, to isolate documents, one row per block."""
    context = ray.data.DataContext.get_current()
    saved = context.max_errored_blocks, context.target_max_block_size
    context.max_errored_blocks = cfg.run.max_failed_blocks
    if one_row_blocks:
        context.target_max_block_size = 1
    try:
        yield
    finally:
        context.max_errored_blocks, context.target_max_block_size = saved


def recut(ds: ray.data.Dataset, rows_per_block: int) -> ray.data.Dataset:
    """Ray Data's streaming re-cut into blocks of at most `rows_per_block` rows, in light tasks.
    `Dataset.repartition` offers no resource arguments, and its tasks asked for a whole CPU each: on a
    small node, while the read and route tasks held fractions of every CPU, none ran, and the embedding
    actors starved for minutes (2.5 min of a 1M-document run). Slicing blocks is light work."""
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    ds._logical_plan.dag.ray_remote_args["num_cpus"] = LIGHT_TASK_CPUS  # the StreamingRepartition just made
    return ds


def stream_into(writer: TableWriter, sources: list[dict], plan: list[Stage]) -> dict[str, dict]:
    """Run the plan over `sources` into the writer; returns Ray Data's time per operator."""
    ds = ray.data.from_items(sources)
    for stage in plan:
        if stage.rows_per_block:
            ds = recut(ds, stage.rows_per_block)
        ds = ds.map_batches(stage.operator, **stage.kwargs)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        writer.add(batch)
    return stage_times(ds)


def lost_documents(ledger, writer: TableWriter, sources: list[dict]) -> dict[str, str]:
    """doc_id -> source of the documents that went in but never came out whole (their block failed
    for good; the writer forgets any part of them it holds), and of the folder files whose read task
    failed for good."""
    writer.drop_incomplete()
    read = ray.get(ledger.read.remote())
    lost = {doc: source for doc, source in read.items() if doc not in writer.seen and doc not in writer.duplicates}
    read_paths = set(read.values())
    lost.update({row["doc_id"]: row["fs_path"] for row in sources
                 if row["format"] == "folder" and row["fs_path"] not in read_paths})
    return lost


def describe_plan(cfg: Config, sources: list[dict], plan: list[Stage]) -> str:
    lines = [f"input: {len(sources)} source files from {cfg.input.paths}"]
    for stage in plan:
        kwargs = stage.kwargs
        if stage.rows_per_block:
            lines.append(f"  {'':<12} {'(re-cut)':<16} {'tasks':<12} cpus={LIGHT_TASK_CPUS} "
                         f"blocks of at most {stage.rows_per_block} rows")
        pool = kwargs.get("compute")
        runs_as = f"actors {pool.min_size}..{pool.max_size}" if pool else "tasks"
        memory = f" memory={kwargs['memory'] / 2**30:.2g}GiB" if kwargs.get("memory") else ""
        lines.append(f"  {stage.name:<12} {stage.operator.__name__:<16} {runs_as:<12} "
                     f"cpus={kwargs.get('num_cpus', 1)} gpus={kwargs.get('num_gpus', 0)}{memory} "
                     f"batch_rows={kwargs.get('batch_size', 'default')}")
    names = resolve_tables(cfg.sink)
    lines.append(f"sink: {table_uri(cfg.sink, names.chunks)} (rejects: {names.rejects}), "
                 f"committed every {cfg.run.commit_rows} chunks")
    return "\n".join(lines)


def run_ingest(cfg: Config, *, dry_run: bool = False, prune: bool = False, tables: TableNames | None = None,
               switch: bool = False, redo: frozenset[str] | None = None) -> dict | str:
    """Run the job; returns the summary (or, with dry_run, the plan without starting work).
    `prune`: the input is the complete source, so documents the table holds but the run did not
    see are deleted in its last commit. `tables`: write there instead of where `sink.table` points;
    with `switch`, point `sink.table` at them once they are complete (a re-embedding). `redo`: embed
    only these documents, also when unchanged (the drift job's re-embedding of a slice)."""
    if redo is not None and prune:
        raise ValueError("a run that re-embeds some documents does not see the complete source: no prune")
    redo_ids = redo or frozenset()
    started = time.perf_counter()
    sources = [row for path in cfg.input.paths for row in list_sources(path, cfg.input)
               if redo is None or row["format"] != "folder" or row["doc_id"] in redo]
    spec = load_model_spec(cfg.embedding)
    if cfg.translation.enabled and cfg.translation.fail_on_missing_model:
        assert_models_available(cfg.translation)  # before any work starts
    dimensions = spec.dimensions(cfg.embedding)
    if dry_run:
        return describe_plan(cfg, sources, stages(cfg, has_gpus=None))
    if not sources:
        raise ValueError(f"no input files under {cfg.input.paths}")
    init_ray(cfg.ray)
    seconds = {"startup": time.perf_counter() - started}
    run_id = new_run_id()
    metadata = {**spec.table_metadata(cfg.embedding), "fingerprint": cfg.fingerprint(),
                "pipeline_version": __version__}

    with table_lock(cfg.sink, run_id):  # one writer per table, from reading its state to the switch
        names = tables or resolve_tables(cfg.sink)
        writer = TableWriter(cfg.sink, names, run_id=run_id, metadata=metadata, dimensions=dimensions,
                             commit_rows=cfg.run.commit_rows)  # refuses another config's table
        known = writer.known
        ledger, has_gpus = RunLedger.remote(), cluster_has_gpus()
        streaming = time.perf_counter()
        with failure_budget(cfg):
            operators = stream_into(writer, sources, stages(cfg, has_gpus, known, ledger, only_docs=redo,
                                                             redo=redo_ids))
        lost = lost_documents(ledger, writer, sources)
        if lost:  # a worker died on their block, retries included: find the culprit, spare the rest
            logger.warning("%d documents were in blocks whose worker died; retrying them one at a time", len(lost))
            lost_paths = set(lost.values())
            retry = [row for row in sources if row["doc_id"] in lost or row["fs_path"] in lost_paths]
            with failure_budget(cfg, one_row_blocks=True):
                operators = add_stage_times(operators, stream_into(
                    writer, retry, stages(isolated(cfg), has_gpus, known, ledger, frozenset(lost), redo_ids,
                                          isolate=True)))
            writer.reject(lost_documents(ledger, writer, retry), "pipeline", REJECT_WORKER_CRASHED,
                          f"the worker process died on it {cfg.run.task_retries + 1} times, also alone in "
                          "its batch; its error is in the Ray worker logs")
        ray.kill(ledger)
        seconds["stream"] = time.perf_counter() - streaming  # the rounds committed on the way included
        finishing = time.perf_counter()
        commit = writer.finish(prune=prune)
        seconds["last_commit"] = time.perf_counter() - finishing
        indexing = time.perf_counter()
        indexes = (build_indexes(cfg, names.chunks, keep_current=True)
                   if cfg.index.after_ingest and commit.table_rows else [])
        seconds["indexes"] = time.perf_counter() - indexing
        alias = switch_to(cfg.sink, names, run_id) if switch else None

    wall = time.perf_counter() - started
    summary = writer.tally.summary()
    summary.update({
        "run_id": run_id,
        "table": table_uri(cfg.sink, names.chunks),
        "table_version": commit.table_version,
        "table_rows": commit.table_rows,
        "commits": commit.commits,
        "documents_deleted": commit.documents_deleted,
        "indexes": indexes,
        "switched": alias,
        "sources_listed": len(sources),
        "model": cfg.embedding.model,
        "fingerprint": metadata["fingerprint"],
        "dimensions": dimensions,
        "wall_seconds": round(wall, 3),
        "documents_per_second": summary["documents_in"] / wall,
        "tokens_per_second": summary["tokens"] / wall,
        "seconds": {phase: round(value, 3) for phase, value in seconds.items()},
        "operators": operators,
    })
    summary["summary_path"] = str(write_summary(summary, cfg.run.summary_dir, run_id))
    return summary


def reembed(cfg: Config) -> dict:
    """A config that changes the vectors: build `<table>--<fingerprint>` from the complete input
    while the current table keeps serving, then switch `sink.table` to it. Started again after a
    crash it carries on where it stopped (the half-built table is its checkpoint)."""
    fingerprint = cfg.fingerprint()
    current = resolve_tables(cfg.sink)
    table = open_table(connect(cfg.sink), current.chunks)
    if table is not None and read_table_metadata(table).get("fingerprint") == fingerprint:
        raise ValueError(f"{current.chunks!r} is already embedded with this config (fingerprint {fingerprint}): "
                         "`babelray run` updates it")
    return run_ingest(cfg, prune=True, tables=versioned_names(cfg.sink, fingerprint), switch=True)
