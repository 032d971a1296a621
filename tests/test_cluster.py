"""The job on a real multi-node Ray cluster: two `ray start` nodes on this machine (one CPU each,
token authentication on), `babelray submit run` through the Jobs API, the table it writes, the
work of both nodes and the custom metrics their metrics agents serve to Prometheus.

One ingest job runs for the whole module (a few minutes on two cores); the nodes are stopped at
the end also when a test fails (`LocalCluster` owns their process groups).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

import lancedb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from babelray import submit
from babelray.metrics import PROMETHEUS_NAMES
from babelray.testing import REPO, SAMPLE_CORPUS, LocalCluster

CONFIG = "configs/local.yaml"
SAMPLE_FILES = ["en/sourdough-bread.md", "de/fahrradkette.md", "fr/marees.txt", "es/volcanes.md", "ja/ryokucha.txt",
                "zh/taijiquan.md", "ru/baikal.txt", "sw/mlima-kilimanjaro.txt"]


def _corpus(folder: Path) -> Path:
    """Prose in several languages, one Python file and one empty file (a reject)."""
    for name in SAMPLE_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / name, target)
    shutil.copy(REPO / "operators" / "route.py", folder / "route.py")
    (folder / "empty.txt").write_text("")
    return folder


def _babelray(*args: str, home: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, without this session's Ray settings or the user's token."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(home), **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "babelray.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def _summary_from_logs(logs: str) -> dict:
    """The `--json` summary the job printed last."""
    start = logs.rindex('{\n  "documents_in"')
    return json.JSONDecoder().raw_decode(logs[start:])[0]


def _scrape(url: str) -> dict[str, list]:
    """name -> samples of the babelray metrics one node's metrics agent serves."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_babelray_"):
                samples.setdefault(sample.name, []).append(sample)
    return samples


def _total(scrapes: list[dict], name: str, by: str | None = None):
    samples = [sample for scrape in scrapes for sample in scrape.get(name, [])]
    if by is None:
        return sum(sample.value for sample in samples)
    totals = Counter()
    for sample in samples:
        totals[sample.labels[by]] += sample.value
    return {key: value for key, value in totals.items() if value}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=2, cpus_per_node=1) as local_cluster:
        yield local_cluster


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")  # no ~/.ray/auth_token in it


@pytest.fixture(scope="module")
def job(cluster, home, tmp_path_factory):
    work = tmp_path_factory.mktemp("job")
    corpus = _corpus(work / "corpus")
    table = work / "lancedb" / "chunks"
    submitted = _babelray("submit", "run", "--config", CONFIG, "--table", str(table),
                          "--address", cluster.dashboard_url, "--token-file", str(cluster.token_path),
                          "--follow", "--", "--input", str(corpus), "--json", home=home)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    submission_id = next(line.split()[1].rstrip(":") for line in submitted.stderr.splitlines()
                         if line.startswith("submitted "))
    return {"submitted": submitted, "submission_id": submission_id, "corpus": corpus, "table": table,
            "summary": _summary_from_logs(submitted.stdout)}


def test_submitted_job_writes_the_table_with_both_nodes_working(cluster, job):
    summary = job["summary"]
    files = [path for path in job["corpus"].rglob("*") if path.is_file()]
    assert summary["documents_in"] == len(files) == 10
    assert summary["documents_embedded"] == 9 and summary["rejected_by_reason"] == {"empty": 1}
    table = lancedb.connect(str(job["table"].parent)).open_table("chunks")
    assert table.count_rows() == summary["chunks"] >= 9
    assert set(table.to_arrow().column("doc_id").to_pylist()) == {
        f"{job['corpus'].name}/{path.relative_to(job['corpus']).as_posix()}" for path in files
        if path.name != "empty.txt"}
    # One CPU per node and stages asking for 0.25 + 0.5 + 1 CPU of actors: both nodes must host some.
    per_node = [_total([_scrape(url)], "ray_babelray_stage_rows_total", by="stage") for url in cluster.metrics_urls]
    assert all(per_node), f"a node did no pipeline work: {per_node}"
    assert set(per_node[0]) | set(per_node[1]) >= {"read", "incremental", "language_id", "route", "chunk", "embed"}


def test_metrics_report_the_counts_of_the_run_summary(cluster, job):
    summary = job["summary"]
    expected = {
        "ray_babelray_documents_read_total": summary["documents_in"],
        "ray_babelray_documents_embedded_total": summary["documents_embedded"],
        "ray_babelray_chunks_total": summary["chunks"],
        "ray_babelray_tokens_embedded_total": summary["tokens"],
    }
    deadline = time.monotonic() + 60  # metrics agents export every few seconds
    while True:
        scrapes = [_scrape(url) for url in cluster.metrics_urls]
        found = {name: _total(scrapes, name) for name in expected}
        rejected = _total(scrapes, "ray_babelray_documents_rejected_total", by="reason")
        if (found == expected and rejected == summary["rejected_by_reason"]) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert found == expected
    assert rejected == summary["rejected_by_reason"]
    languages = _total(scrapes, "ray_babelray_documents_language_total", by="lang")
    prose = {lang: n for lang, n in summary["documents_by_language"].items() if not lang.startswith("code")}
    assert {lang: n for lang, n in languages.items() if lang != "code"} == prose
    assert languages["code"] == 1
    assert _total(scrapes, "ray_babelray_stage_batch_seconds_count", by="stage")["embed"] >= 1
    names = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
             for scrape in scrapes for name in scrape}
    assert names <= set(PROMETHEUS_NAMES)


def test_job_status_logs_and_metadata_come_back(cluster, job):
    client = submit.connect(cluster.dashboard_url, cluster.token_path.read_text())
    info = client.get_job_info(job["submission_id"])
    assert info.status == "SUCCEEDED" and info.driver_exit_code == 0
    assert info.metadata["config_sha256"] == hashlib.sha256((REPO / CONFIG).read_bytes()).hexdigest()
    assert info.metadata["fingerprint"] == job["summary"]["fingerprint"]
    assert info.entrypoint.startswith(f"python -m babelray.cli run --config {CONFIG} --table ")
    assert '"documents_embedded": 9' in client.get_job_logs(job["submission_id"])
    token = cluster.token_path.read_text()
    for text in (job["submitted"].stdout, job["submitted"].stderr, json.dumps(info.runtime_env),
                 json.dumps(info.metadata)):
        assert token not in text


@pytest.fixture(scope="module")
def drift_job(cluster, home, job):
    submitted = _babelray("submit", "drift", "--config", "configs/drift.yaml", "--table", str(job["table"]),
                          "--address", cluster.dashboard_url, "--token-file", str(cluster.token_path),
                          "--follow", "--", "--json", home=home)
    assert submitted.returncode in (0, 4), submitted.stdout[-4000:] + submitted.stderr[-4000:]  # 4: an alert
    start = submitted.stdout.rindex('{\n  "run": {')
    return json.JSONDecoder().raw_decode(submitted.stdout[start:])[0]


def test_drift_job_exports_its_verdict_and_statistics_as_gauges(cluster, drift_job):
    status = {"alert": 2, "warn": 1}.get(drift_job["run"]["status"], 0)
    reported = {(stat["group"], stat["name"]): stat["value"] for stat in drift_job["statistics"]
                if stat["value"] is not None}
    assert any(name == "probe_alignment" for _, name in reported)
    deadline = time.monotonic() + 60
    while True:
        samples = [sample for url in cluster.metrics_urls for name, found in _scrape(url).items()
                   for sample in found if name in ("ray_babelray_drift_status", "ray_babelray_drift_statistic")]
        verdicts = [sample.value for sample in samples if sample.name == "ray_babelray_drift_status"]
        gauges = {(sample.labels["slice"], sample.labels["statistic"]): sample.value for sample in samples
                  if sample.name == "ray_babelray_drift_statistic"}
        if (verdicts and gauges.keys() >= reported.keys()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert verdicts == [status]
    stamps = [sample.value for url in cluster.metrics_urls
              for sample in _scrape(url).get("ray_babelray_drift_run_timestamp_seconds", [])]
    assert stamps == [pytest.approx(datetime.fromisoformat(drift_job["run"]["run_at"]).timestamp(), abs=1)]
    assert {key: gauges.get(key) for key in reported} == pytest.approx(reported)


def test_submission_without_the_token_is_refused(cluster, job, home, tmp_path):
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    args = ["submit", "run", "--config", CONFIG, "--table", str(tmp_path / "lancedb" / "chunks"),
            "--address", cluster.dashboard_url, "--follow"]
    missing = _babelray(*args, home=home)
    assert missing.returncode == 5, missing.stderr
    assert "refused" in missing.stderr and "no token was sent" in missing.stderr
    rejected = _babelray(*args, "--token-file", str(wrong), home=home)
    assert rejected.returncode == 5, rejected.stderr
    assert "refused" in rejected.stderr and "not-the-token" not in rejected.stderr
    client = submit.connect(cluster.dashboard_url, cluster.token_path.read_text())
    assert not [details.submission_id for details in client.list_jobs()
                if details.submission_id.startswith("babelray-run-") and details.submission_id != job["submission_id"]]
