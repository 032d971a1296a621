"""Starting or attaching to Ray, and resources that depend on the cluster."""

from __future__ import annotations

import logging
import os

import ray

from babelray.config import RayConfig, StageResources

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> None:
    """Attach to RAY_ADDRESS / ray.address when given, else start a local cluster."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
    log.info("ray: %s", ray.cluster_resources())


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def actor_options(resources: StageResources, has_gpus: bool | None, task_retries: int,
                  one_task_at_a_time: bool = False) -> dict:
    """map_batches keyword arguments for an actor-pool stage; `has_gpus=None`
    (a dry run, no cluster yet) leaves num_gpus 'auto' unresolved. A dead actor is
    restarted, but its task retried only `task_retries` times (Ray Data's default
    retries forever, so one document that crashes the model would stall the run).
    `one_task_at_a_time`: no tasks queued on an actor, so a crash takes down only its own."""
    num_gpus = resources.num_gpus
    if num_gpus == "auto" and has_gpus is not None:
        num_gpus = 1 if has_gpus else 0
    return {
        "compute": ray.data.ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors,
                                              max_tasks_in_flight_per_actor=1 if one_task_at_a_time
                                              else resources.tasks_in_flight),
        "num_cpus": resources.num_cpus,
        "num_gpus": num_gpus,
        "memory": int(resources.memory) if resources.memory is not None else None,
        "batch_size": resources.batch_size,
        "batch_format": "pyarrow",
        "max_task_retries": task_retries,
    }


def stage_times(ds) -> dict[str, dict]:
    """Per operator of an executed dataset: its tasks, the seconds they ran (summed over tasks, so
    busy time, not wall time: stages overlap) and their CPU seconds; from Ray Data's own stats."""
    times = {}

    def collect(summary) -> None:  # the plan's earlier operators sit in the parents' summaries
        for parent in summary.parents:
            collect(parent)
        for op in summary.operators_stats:
            if op.wall_time is not None and op.wall_time.count:
                times[op.operator_name] = {"tasks": int(op.wall_time.count),
                                           "task_seconds": round(op.wall_time.sum, 3),
                                           "cpu_seconds": round(op.cpu_time.sum, 3) if op.cpu_time else None}

    collect(ds.get_stats_summary())
    return times


def add_stage_times(total: dict[str, dict], more: dict[str, dict]) -> dict[str, dict]:
    """Two passes' `stage_times` added up (a run's retry pass runs the same operators again)."""
    merged = {name: dict(values) for name, values in total.items()}
    for name, values in more.items():
        into = merged.setdefault(name, {"tasks": 0, "task_seconds": 0.0, "cpu_seconds": 0.0})
        for key, value in values.items():
            into[key] = round((into[key] or 0) + (value or 0), 3)
    return merged
