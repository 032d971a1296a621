"""Drift job: the statistics on synthetic windows (no Ray), then whole runs of `babelray drift`
over LanceDB tables built here, with the probe embedded by a real (tiny, random-weight) model."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import yaml

from babelray import testing
from babelray.cli import main as cli
from babelray.config import ConfigError, DriftConfig, load_drift_config
from babelray.drift.actions import drifted_slices
from babelray.drift.evaluate import ALERT, TWO_SAMPLE_STATISTICS, evaluate_windows, worst
from babelray.drift.probe import ProbeVectors, load_sentences, probe_statistics
from babelray.drift.windows import WindowSummary
from operators.drift_sample import summarize_block

LANGS = ["en", "de", "fr", "ja"]
DIMENSIONS = 64  # the tiny Qwen3 model's
SPACE = testing.SyntheticSpace(DIMENSIONS, LANGS, seed=1)
DRIFT = DriftConfig(ingest_config="unused.yaml")


def summarize(vectors: np.ndarray, langs: list[str], prefix: str, block_rows: int = 500,
              rows_per_group: int = 2000) -> WindowSummary:
    """A window as the drift job sees it: blocks through the drift stage, merged."""
    n = len(vectors)
    table = pa.table({
        "chunk_id": [f"{prefix}{i}#0" for i in range(n)], "doc_id": [f"{prefix}{i}" for i in range(n)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
        "raw_norm": pa.array(np.random.default_rng(n).normal(5.0, 0.1, n), pa.float32()),
        "lang": langs, "route": ["direct"] * n, "model": ["m"] * n, "embedding_fingerprint": ["f"] * n})
    summary = WindowSummary(vectors.shape[1], rows_per_group)
    for start in range(0, n, block_rows):
        summary.add(summarize_block(table.slice(start, block_rows), rows_per_group=rows_per_group, seed=0))
    return summary


def shifted(kind: str, rng: np.random.Generator, vectors: np.ndarray) -> np.ndarray:
    if kind == "offset":  # a constant added before normalization (a serving bug, a changed prompt)
        return testing.normalize(vectors + 0.15 * testing.normalize(rng.standard_normal((1, DIMENSIONS))))
    if kind == "rotated_subspace":  # an 8-dimensional subspace turned by 0.6 rad
        basis, _ = np.linalg.qr(rng.standard_normal((DIMENSIONS, 8)))
        turn = np.eye(8)
        for k in range(0, 8, 2):
            turn[k:k + 2, k:k + 2] = [[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]]
        projected = vectors @ basis
        return testing.normalize(vectors + (projected @ turn.T - projected) @ basis.T)
    if kind == "other_model":  # the same texts, another model's space
        rotation, _ = np.linalg.qr(rng.standard_normal((DIMENSIONS, DIMENSIONS)))
        return testing.normalize(vectors @ rotation)
    raise ValueError(kind)


@pytest.mark.parametrize("seed", range(5))
def test_same_distribution_raises_no_alert(seed):
    rng = np.random.default_rng(seed)
    reference, current = SPACE.sample(rng, 3000), SPACE.sample(rng, 400)
    stats = evaluate_windows(summarize(*reference, "r"), summarize(*current, "c"), DRIFT)
    assert worst(stat.status for stat in stats) != ALERT, [s for s in stats if s.status == ALERT]
    auc = next(s for s in stats if s.group == "all" and s.name == "domain_classifier_auc")
    assert 0.35 < auc.value < 0.65


def test_small_batches_from_the_same_distribution_raise_not_even_a_warning():
    # 25 new rows: shares and means differ by chance; significance and bootstrap thresholds absorb it.
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        stats = evaluate_windows(summarize(*SPACE.sample(rng, 1000), "r"), summarize(*SPACE.sample(rng, 25), "c"),
                                 DRIFT)
        assert [(s.group, s.name) for s in stats if s.status in ("warn", "alert")] == [], seed


@pytest.mark.parametrize("kind", ["offset", "rotated_subspace", "other_model"])
def test_shifted_current_window_alerts_where_the_bands_do_not(kind):
    rng = np.random.default_rng(7)
    reference, (vectors, langs) = SPACE.sample(rng, 3000), SPACE.sample(rng, 400)
    stats = evaluate_windows(summarize(*reference, "r"), summarize(shifted(kind, rng, vectors), langs, "c"), DRIFT)
    by_name = {stat.name: stat for stat in stats if stat.group == "all"}
    assert by_name["centroid_shift_ratio"].status == ALERT or by_name["mmd2"].status == ALERT
    assert by_name["domain_classifier_auc"].value > 0.8
    # The bands users know see nothing: norms and neighbour cosines are those of a healthy model.
    assert {by_name[name].status for name in ("raw_norm_cv", "consecutive_cosine_mean",
                                              "consecutive_cosine_min")} == {"ok"}


def test_language_mix_change_alerts():
    rng = np.random.default_rng(3)
    reference = SPACE.sample(rng, 3000)
    current = SPACE.sample(rng, 400, weights=[0.7, 0.1, 0.1, 0.1])
    stats = evaluate_windows(summarize(*reference, "r"), summarize(*current, "c"), DRIFT)
    mix = next(stat for stat in stats if stat.name == "language_mix_distance")
    assert mix.status == ALERT and mix.value > 0.3
    # Every language on its own is as it was, and so is the whole once the reference is drawn in the
    # current mix; re-embedding would not change which languages arrive.
    assert all(stat.status != ALERT for stat in stats if stat.group.startswith("lang="))
    assert all(stat.status != ALERT for stat in stats if stat.group == "all" and stat.name in TWO_SAMPLE_STATISTICS)
    assert drifted_slices([stat for stat in stats if stat.name == "language_mix_distance"]) == []


def test_drift_in_one_language_names_that_slice():
    rng = np.random.default_rng(5)
    reference = SPACE.sample(rng, 3000)
    vectors, langs = SPACE.sample(rng, 800)
    german = np.array(langs) == "de"
    vectors[german] = shifted("offset", rng, vectors[german])
    stats = evaluate_windows(summarize(*reference, "r"), summarize(vectors, langs, "c"), DRIFT)
    assert drifted_slices(stats) == ["lang=de"]
    assert all(stat.status != ALERT for stat in stats if stat.group in ("lang=en", "lang=fr", "lang=ja"))


def test_sample_and_sums_do_not_depend_on_block_layout():
    rng = np.random.default_rng(11)
    vectors, langs = SPACE.sample(rng, 1500)
    one, many = summarize(vectors, langs, "x", block_rows=1500, rows_per_group=100), \
        summarize(vectors, langs, "x", block_rows=97, rows_per_group=100)
    for group in one.samples:
        assert list(one.samples[group].chunk_ids) == list(many.samples[group].chunk_ids)
        assert one.sums[group].rows == many.sums[group].rows
        assert one.sums[group].raw_norm_sum == pytest.approx(many.sums[group].raw_norm_sum)
    assert len(one.slice_sample("all", "all")) == 100  # the bottom-k of the window, not of each group


def test_probe_statistics_catch_other_vectors_for_the_same_sentences():
    sentences = load_sentences(None)
    assert len(sentences) >= 10 and all(len(texts) >= 6 for texts in sentences.values())
    rng = np.random.default_rng(0)
    rows = [(sid, lang, text) for sid, texts in sentences.items() for lang, text in texts.items()]
    meaning = {sid: rng.standard_normal(DIMENSIONS) for sid in sentences}
    aligned = testing.normalize(np.array([meaning[sid] + 0.3 * rng.standard_normal(DIMENSIONS)
                                          for sid, _, _ in rows]))
    before = ProbeVectors(*map(list, zip(*rows)), aligned)
    same = probe_statistics(before, before, DRIFT.thresholds, "r1")
    assert {s.name: s.status for s in same if s.group == "all"} == {
        "probe_alignment": "info", "probe_alignment_drop": "ok", "probe_stability": "ok"}
    scrambled = ProbeVectors(before.ids, before.langs, before.texts, testing.normalize(
        rng.standard_normal(aligned.shape)))
    changed = {s.name: s for s in probe_statistics(scrambled, before, DRIFT.thresholds, "r1") if s.group == "all"}
    assert changed["probe_stability"].status == ALERT and changed["probe_alignment_drop"].status == ALERT


def test_drift_config_errors_name_the_key(tmp_path):
    (tmp_path / "ingest.yaml").write_text((testing.REPO / "configs" / "local.yaml").read_text())
    bad = {"ingest_config": "ingest.yaml", "thresholds": {"domain_classifier_auc": {"warn": 0.9, "alert": 0.8}}}
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="thresholds.*domain_classifier_auc: warn must lie below alert"):
        load_drift_config(tmp_path / "drift.yaml")
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({"ingest_config": "ingest.yaml", "window": {"splt": "x"}}))
    with pytest.raises(ConfigError, match="window.splt: unknown key"):
        load_drift_config(tmp_path / "drift.yaml")
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({"ingest_config": "missing.yaml"}))
    with pytest.raises(ConfigError, match="ingest_config: .*missing.yaml does not exist"):
        load_drift_config(tmp_path / "drift.yaml")
    drift, cfg = load_drift_config(testing.REPO / "configs" / "drift.yaml")
    assert cfg.sink.table == "chunks" and drift.window.split == "version"


# ---------------------------------------------------------------- whole runs


class Webhook:
    """A local HTTP endpoint that records what it is sent."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"


@pytest.fixture()
def drift_setup(tmp_path, ray_cluster):
    """A model folder, an ingest config using it, a drift config naming that ingest config."""
    model = testing.build_tiny_qwen3(tmp_path / "model")
    ingest = yaml.safe_load((testing.REPO / "configs" / "local.yaml").read_text())
    ingest["embedding"]["model"] = str(model)
    ingest["sink"]["uri"] = str(tmp_path / "db")
    ingest["run"]["summary_dir"] = str(tmp_path / "runs")
    ingest["input"]["paths"] = [str(testing.SAMPLE_CORPUS / "de"), str(testing.SAMPLE_CORPUS / "fr")]
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(ingest))
    drift = {"ingest_config": "ingest.yaml", "report_dir": str(tmp_path / "reports"),
             "sample": {"rows_per_group": 500, "permutations": 100, "bootstraps": 200},
             "actions": {"webhook_url_env": "BABELRAY_TEST_WEBHOOK"}}
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump(drift))
    return tmp_path


def _append(setup: Path, vectors, langs, at: datetime, prefix: str) -> None:
    testing.write_vector_rows(str(setup / "db"), "chunks", vectors, langs, at, model=str(setup / "model"),
                              doc_prefix=prefix)


def _runs(setup: Path) -> list[dict]:
    history = lancedb.connect(setup / "db").open_table("drift_history").to_lance().to_table().to_pylist()
    return sorted((row for row in history if row["statistic"] == "run"), key=lambda row: row["run_at"])


def test_drift_runs_healthy_then_alert_with_history_reports_and_exit_codes(drift_setup, monkeypatch, capsys):
    webhook = Webhook()
    monkeypatch.setenv("BABELRAY_TEST_WEBHOOK", webhook.url)
    config = str(drift_setup / "drift.yaml")
    rng, start = np.random.default_rng(0), datetime.now(timezone.utc) - timedelta(hours=3)
    _append(drift_setup, *SPACE.sample(rng, 600), start, "old")

    assert cli(["drift", "--config", config]) == 0  # first look: the whole table is the reference
    _append(drift_setup, *SPACE.sample(rng, 300), start + timedelta(hours=1), "same")
    assert cli(["drift", "--config", config]) == 0  # new rows from the same distribution
    vectors, langs = SPACE.sample(rng, 300)
    _append(drift_setup, shifted("offset", rng, vectors), langs, start + timedelta(hours=2), "shifted")
    capsys.readouterr()
    assert cli(["drift", "--config", config]) == 4
    assert "# Drift report: ALERT" in capsys.readouterr().out
    assert cli(["drift", "--config", config]) == 4  # compared with the last healthy run until accepted

    runs = _runs(drift_setup)
    assert [run["status"] for run in runs] == ["healthy", "healthy", "alert", "alert"]
    assert [run["rows_current"] for run in runs] == [0, 300, 300, 300]
    assert [run["rows_reference"] for run in runs] == [600, 600, 900, 900]
    assert runs[2]["table_version"] > runs[0]["table_version"]
    report = json.loads((drift_setup / "reports" / runs[2]["run_id"] / "report.json").read_text())
    alerts = {(s["group"], s["name"]) for s in report["statistics"] if s["status"] == "alert"}
    assert ("all", "centroid_shift_ratio") in alerts and ("lang=de", "centroid_shift_ratio") in alerts
    folder = drift_setup / "reports" / runs[2]["run_id"]
    for name in ("report.json", "report.md", "history.png", "projection.png"):
        assert (folder / name).stat().st_size > 1000, name
    assert [post["status"] for post in webhook.received] == ["alert", "alert"]  # webhook_on: [alert]
    assert webhook.received[0]["flagged"] and webhook.received[0]["exit_code"] == 4
    history_rows = lancedb.connect(drift_setup / "db").open_table("drift_history").count_rows(
        f"run_id = '{runs[2]['run_id']}'")
    assert history_rows == len(report["statistics"]) + 1

    # Accept the new state; a dead webhook is reported, not fatal.
    monkeypatch.setenv("BABELRAY_TEST_WEBHOOK", "http://127.0.0.1:9/unreachable")
    assert cli(["drift", "--config", config, "--save-baseline"]) == 0
    drift, cfg = load_drift_config(config)
    drift.window.split = "baseline"
    from pipelines.drift import run_drift, run_every

    run_every(drift, cfg, "1s", runs=1)  # nothing new since the baseline
    assert _runs(drift_setup)[-1]["status"] == "healthy"
    _append(drift_setup, *SPACE.sample(rng, 300, weights=[0.05, 0.05, 0.05, 0.85]), datetime.now(timezone.utc),
            "japanese")
    result = run_drift(drift, cfg)
    assert result["run"]["exit_code"] == 4 and result["run"]["reference"]["rows"] == 1200
    assert {s["name"] for s in result["statistics"] if s["status"] == "alert"} >= {"language_mix_distance"}
    assert result["actions"] == ["webhook: POST to 127.0.0.1 failed: [Errno 111] Connection refused"]


def test_probe_catches_a_model_changed_under_the_same_name_and_reembeds(drift_setup):
    from pipelines.drift import run_drift
    from pipelines.ingest import run_ingest

    drift, cfg = load_drift_config(drift_setup / "drift.yaml")
    drift.actions.webhook_url_env = None
    ingested = run_ingest(cfg)
    assert ingested["documents_embedded"] == 6
    table = lancedb.connect(drift_setup / "db").open_table("chunks")
    before = table.to_lance().to_table(columns=["chunk_id", "vector", "embedded_at"]).to_pylist()

    assert run_drift(drift, cfg)["run"]["exit_code"] == 0
    testing.build_tiny_qwen3(drift_setup / "model", seed=1)  # new weights, same folder and name
    drift.actions.on_alert = "reembed"
    result = run_drift(drift, cfg)
    stats = {s["name"]: s for s in result["statistics"] if s["group"] == "all"}
    assert result["run"]["exit_code"] == 4 and result["run"]["current"]["rows"] == 0  # no document changed
    assert stats["probe_stability"]["status"] == "alert" and stats["probe_stability"]["value"] < 0.9
    assert result["run"]["slices"] == ["table"]
    assert "re-embedded ['table']: 6 of 6 documents" in result["actions"][0]

    table.checkout_latest()
    after = {row["chunk_id"]: row for row in table.to_lance().to_table(
        columns=["chunk_id", "vector", "embedded_at"]).to_pylist()}
    assert set(after) == {row["chunk_id"] for row in before}
    for row in before:
        assert after[row["chunk_id"]]["embedded_at"] > row["embedded_at"]
        assert float(np.dot(row["vector"], after[row["chunk_id"]]["vector"])) < 0.99  # the new model's vectors
    # The alert stays (the reference probe is the old model's) but is not re-embedded a second time.
    again = run_drift(drift, cfg)
    assert again["run"]["exit_code"] == 4 and "skipped" in again["actions"][0]
