"""`babelray submit`: run a job on a Ray cluster through the Ray Jobs API.

The job's driver runs on the cluster (the head node, unless entrypoint resources place it
elsewhere) with this checkout as its working directory, so the cluster runs exactly the code and
configs that were submitted. What a submission carries, and what it never carries:

- the project folder (minus what `.gitignore` and UPLOAD_EXCLUDES name), unpacked on every node;
- pinned requirements: each dependency of the project at the version installed here, so the
  job runs with the libraries it was tested with. Ray and torch are not pinned: they come with
  the cluster's image (Ray cannot be changed per job, and torch's CUDA build must match the nodes);
- the Ray auth token only as an HTTP header, never in the runtime environment, the metadata or a
  log line; object-store credentials not at all (the nodes have them from their environment).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import logging
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from packaging.requirements import Requirement

from babelray import __version__
from babelray.config import load_config, load_drift_config

logger = logging.getLogger(__name__)

COMMANDS = ("run", "reembed", "drift")
# Ray is the cluster's own; torch's build (CUDA or CPU) belongs to the image.
NOT_PINNED = {"ray", "torch"}
# Never uploaded: environments, local outputs, caches (on top of the project's .gitignore).
UPLOAD_EXCLUDES = [".venv", ".git", "data", "runs", "drift-reports", "eval-report", "**/__pycache__",
                   "*.egg-info", ".pytest_cache", ".hypothesis"]
# Ray's answer (HTTP 500) while the head's job agent is still starting.
AGENT_NOT_READY = "No available agent to submit job"
EXIT_REFUSED = 5  # the cluster refused the submission or could not be reached


class SubmitError(RuntimeError):
    """The submission did not reach a running job: no token, refused, unreachable."""


@dataclass
class Submission:
    command: str
    config: str  # path relative to the working directory
    working_dir: Path
    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    submission_id: str
    entrypoint_num_cpus: float = 0
    entrypoint_num_gpus: float = 0
    entrypoint_memory: int | None = None


def project_root() -> Path:
    """The checkout this CLI runs from (an editable install), else the current directory."""
    for folder in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (folder / "pyproject.toml").is_file() and (folder / "babelray").is_dir():
            return folder
    raise SubmitError("babelray submit uploads the project folder: run it from a checkout of babelray "
                      "(or pass --working-dir)")


def pinned_requirements() -> list[str]:
    """`name==version` for every runtime dependency of the project, at the version installed here."""
    pins = []
    for line in importlib.metadata.requires("babelray") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue  # test-only dependencies
        name = requirement.name.lower()
        if name in NOT_PINNED:
            continue
        pins.append(f"{name}=={importlib.metadata.version(name)}")
    return pins


def read_token(token_file: str | None) -> str | None:
    """The Ray auth token, looked up as Ray does: --token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token. None when there is none (a cluster without token auth)."""
    if token_file:
        return _token_from(Path(token_file), "--token-file")
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return _token_from(Path(os.environ["RAY_AUTH_TOKEN_PATH"]), "RAY_AUTH_TOKEN_PATH")
    default = Path.home() / ".ray" / "auth_token"
    return _token_from(default, str(default)) if default.is_file() else None


def _token_from(path: Path, named_by: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise SubmitError(f"cannot read the auth token file named by {named_by}: {err.strerror}") from None
    if not token:
        raise SubmitError(f"the auth token file named by {named_by} is empty")
    return token


def _sent_in_clear(address: str) -> bool:
    parsed = urlparse(address)
    return parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1")


def build_submission(command: str, config_path: str, *, working_dir: str | None = None, pip: bool = True,
                     entrypoint_num_cpus: float = 0, entrypoint_num_gpus: float = 0,
                     entrypoint_memory_gb: float | None = None, table: str | None = None,
                     extra_args: list[str] | None = None, now: datetime | None = None) -> Submission:
    """Validate the config here (a bad one fails before anything is sent) and describe the job.
    `table`: the command's --table override (a name, or <db uri>/<name>)."""
    from babelray.cli import apply_overrides

    if command not in COMMANDS:
        raise ValueError(f"babelray submit: command must be one of {', '.join(COMMANDS)}, not {command!r}")
    root = Path(working_dir).resolve() if working_dir else project_root()
    config = Path(config_path).resolve()
    drift, cfg = load_drift_config(config) if command == "drift" else (None, load_config(config))
    cfg = apply_overrides(cfg, None, table)
    if not config.is_relative_to(root):
        raise ValueError(f"{config_path}: the config must be inside the uploaded working directory {root}")
    extra_args = [*(["--table", table] if table else []), *(extra_args or [])]
    if "://" not in cfg.sink.uri and not Path(cfg.sink.uri).is_absolute():
        raise ValueError(f"{config_path}: sink.uri {cfg.sink.uri!r} is relative: on the cluster it would resolve inside "
                         "the job's temporary working directory and be lost. Use an object store URI or an absolute "
                         "path that every node shares")
    outputs = [("run.summary_dir", cfg.run.summary_dir), *([("report_dir", drift.report_dir)] if drift else [])]
    for key, folder in outputs:
        # Made absolute when the config is read: on the cluster, against the job's own copy of the project.
        if "://" not in folder and Path(folder).is_relative_to(root):
            logger.warning("%s %s is inside the project: on the cluster it lands in the job's temporary working "
                           "directory (the summary is in the job's log either way)", key, folder)
    relative = config.relative_to(root).as_posix()
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    table = re.sub(r"[^a-z0-9-]+", "-", cfg.sink.table.lower()).strip("-")
    runtime_env: dict = {"working_dir": str(root), "excludes": UPLOAD_EXCLUDES}
    if pip:
        runtime_env["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    return Submission(
        command=command, config=relative, working_dir=root,
        entrypoint=shlex.join(["python", "-m", "babelray.cli", command, "--config", relative, *extra_args]),
        runtime_env=runtime_env,
        metadata={"babelray_command": command, "config": relative,
                  "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
                  "fingerprint": cfg.fingerprint(), "table": cfg.sink.table, "babelray_version": __version__},
        submission_id=f"babelray-{command}-{table}-{stamp}-{secrets.token_hex(3)}",
        entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
        entrypoint_memory=int(entrypoint_memory_gb * 2**30) if entrypoint_memory_gb else None,
    )


def connect(address: str, token: str | None):
    """A JobSubmissionClient that sends the token as a bearer header (the way Ray's own clients do)."""
    from ray.job_submission import JobSubmissionClient

    if token and _sent_in_clear(address):
        logger.warning("the auth token goes to %s over plain HTTP: reach the dashboard through an SSH tunnel or "
                       "`kubectl port-forward` (localhost), or HTTPS", urlparse(address).hostname)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as err:  # noqa: BLE001 - Ray raises AuthenticationError, ConnectionError, RuntimeError
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ("" if token else "; no token was sent: pass --token-file, or set RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH")
        raise SubmitError(f"{address} refused the connection ({type(err).__name__}: {first_line}){hint}") from None


def submit(client, job: Submission, agent_wait_seconds: float = 60) -> str:
    """Submit; a head that has no job agent yet (a cluster still starting) is asked again until
    `agent_wait_seconds` have passed."""
    deadline = time.monotonic() + agent_wait_seconds
    while True:
        try:
            return client.submit_job(
                entrypoint=job.entrypoint, submission_id=job.submission_id, runtime_env=job.runtime_env,
                metadata=job.metadata, entrypoint_num_cpus=job.entrypoint_num_cpus or None,
                entrypoint_num_gpus=job.entrypoint_num_gpus or None, entrypoint_memory=job.entrypoint_memory,
            )
        except RuntimeError as err:
            if AGENT_NOT_READY not in str(err):
                raise
            if time.monotonic() > deadline:
                raise SubmitError(f"the head has had no job agent for {agent_wait_seconds:.0f} s: its dashboard agent "
                                  "is not running (on a host with more than one Ray node, give each its own "
                                  "--dashboard-agent-listen-port)") from None
            logger.info("the head has no job agent yet; submitting again in 2 s")
            time.sleep(2)


def follow(client, submission_id: str, out=sys.stdout) -> int:
    """Stream the job's logs until it ends; the job's exit code (its driver's), else 1 if it failed."""

    async def stream():
        async for lines in client.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    asyncio.run(stream())
    info = client.get_job_info(submission_id)
    while not info.status.is_terminal():  # the log stream can close a moment before the status is final
        time.sleep(0.5)
        info = client.get_job_info(submission_id)
    if info.driver_exit_code is not None:
        return info.driver_exit_code
    return 0 if info.status == "SUCCEEDED" else 1
