"""What a benchmarked process tree used while it ran: RSS and CPU seconds per role, sampled.

A role is what a process is for: the driver (the tree's root), Ray's own services, or a Ray
worker named by what it runs (Ray titles a worker `ray::<task or actor>`; a task worker runs
different tasks over its life, so each interval's CPU goes to what it was running then). The
machine's own busy and idle CPU seconds over the same time say how much of the cores the tree
left unused.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Ray's services by program (binary or script) or by process title. By program, not by any word of
# the command line: a worker that is still starting has `--raylet-name=…/raylet` among its arguments.
RAY_SERVICE_PROGRAMS = {"gcs_server": "gcs_server", "raylet": "raylet", "dashboard.py": "dashboard",
                        "log_monitor.py": "log_monitor", "monitor.py": "monitor.py",
                        "agent.py": "DashboardAgent", "main.py": "RuntimeEnvAgent"}  # …/runtime_env/agent/main.py
RAY_SERVICE_TITLES = ("DashboardAgent", "RuntimeEnvAgent")
SERVICE = "ray service: "
# A worker process before it takes its `ray::` title: importing Ray, connecting to the raylet.
STARTING_WORKER = "ray worker, starting"
RAY_TITLE = re.compile(r"^ray::(?:MapWorker\()?(?:MapBatches\()?([\w.\[\]=,]+)")


@dataclass
class TreeUsage:
    # (seconds since the start, MiB of: the driver, all workers, the largest worker, Ray's services)
    samples: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # role -> CPU s
    machine: dict[str, float] = field(default_factory=dict)  # busy / idle CPU s of the whole machine
    idle: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the start, idle CPU s since)

    @property
    def peak_mib(self) -> float:
        """Largest sum over the whole tree seen."""
        return max((row[1] + row[2] + row[4] for row in self.samples), default=0.0)

    def idle_by_window(self, window: float = 10.0) -> list[float]:
        """The machine's idle CPU seconds in each `window` seconds since the start."""
        totals = [0.0] * (int(self.idle[-1][0] // window) + 1 if self.idle else 0)
        for at, seconds in self.idle:
            totals[int(at // window)] += seconds
        return [round(total, 1) for total in totals]

    def peaks(self, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        inside = [row for row in self.samples if start <= row[0] < end] or [(0.0,) * 5]
        return {"driver": round(max(row[1] for row in inside)), "workers": round(max(row[2] for row in inside)),
                "largest_worker": round(max(row[3] for row in inside))}


def program_name(args: list[str]) -> str:
    """What a command line runs: the script when the program is a Python interpreter, else the binary."""
    if not args:
        return ""
    if "python" in Path(args[0]).name:
        return Path(next((arg for arg in args[1:] if not arg.startswith("-")), "")).name
    return Path(args[0]).name


def role(process: psutil.Process, root: psutil.Process, last: str | None) -> str:
    if process.pid == root.pid:
        return "driver"
    args = process.cmdline()
    title = RAY_TITLE.match(" ".join(args))
    if title:
        name = title.group(1)
        if name in RAY_SERVICE_TITLES:
            return f"{SERVICE}{name}"
        return (last or "idle ray worker") if name == "IDLE" else name
    name = program_name(args)
    if name == "default_worker.py":
        return last or STARTING_WORKER
    if name in RAY_SERVICE_PROGRAMS:
        return f"{SERVICE}{RAY_SERVICE_PROGRAMS[name]}"
    return last or "other"


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def sampled(root: psutil.Process | None = None, interval: float = 0.5):
    """Yields a TreeUsage that fills while the block runs, with `root` (default: this process)."""
    root = root or psutil.Process()
    usage, done, started = TreeUsage(), threading.Event(), time.perf_counter()
    seen: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds at the last sample)
    for process in [root, *root.children(recursive=True)]:  # what they used before is not the block's
        with contextlib.suppress(psutil.Error):
            seen[process.pid] = (role(process, root, None), _cpu(process))
    machine_before = last_machine = psutil.cpu_times()

    def idle_seconds(times) -> float:
        return times.idle + times.iowait

    def sample_once() -> None:
        nonlocal last_machine
        driver = workers = largest = services = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                name, cpu_before = seen.get(process.pid, (None, 0.0))
                name = role(process, root, name)
                cpu, rss = _cpu(process), process.memory_info().rss / 2**20
                usage.cpu_seconds[name] += cpu - cpu_before
                seen[process.pid] = (name, cpu)
                if name == "driver":
                    driver = rss
                elif name.startswith(SERVICE):
                    services += rss
                else:
                    workers, largest = workers + rss, max(largest, rss)
        now, machine = time.perf_counter() - started, psutil.cpu_times()
        usage.samples.append((now, driver, workers, largest, services))
        usage.idle.append((now, idle_seconds(machine) - idle_seconds(last_machine)))
        last_machine = machine

    def loop() -> None:
        while not done.is_set():
            sample_once()
            done.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(psutil.Error):
            sample_once()  # the CPU of processes still alive, up to the end
        machine_after = psutil.cpu_times()
        idle = idle_seconds(machine_after) - idle_seconds(machine_before)
        total = sum(machine_after) - sum(machine_before)
        usage.machine = {"busy": round(total - idle, 1), "idle": round(idle, 1)}
        usage.cpu_seconds = {name: round(value, 1) for name, value in
                             sorted(usage.cpu_seconds.items(), key=lambda item: -item[1])}
