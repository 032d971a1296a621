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
                                              max_tasks_in_flight_per_actor=1 if one_task_at_a_time else None),
        "num_cpus": resources.num_cpus,
        "num_gpus": num_gpus,
        "batch_size": resources.batch_size,
        "batch_format": "pyarrow",
        "max_task_retries": task_retries,
    }
