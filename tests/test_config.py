import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from babelray.cli import apply_overrides
from babelray.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


def _local() -> dict:
    return yaml.safe_load((REPO / "configs" / "local.yaml").read_text())


@pytest.mark.parametrize("name", ["local.yaml", "qwen3-embedding-4b.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.embedding.model


def test_unknown_key_is_named():
    data = _local()
    data["embedding"]["modle"] = "x"
    with pytest.raises(ConfigError, match=r"embedding\.modle: unknown key"):
        parse_config(data)


def test_bad_value_is_named():
    data = _local()
    data["chunking"]["resources"]["max_actors"] = 0
    with pytest.raises(ConfigError, match=r"chunking\.resources\.max_actors"):
        parse_config(data)


def test_credentials_in_config_are_refused():
    data = _local()
    data["sink"]["storage_options"] = {"aws_secret_access_key": "abc"}
    with pytest.raises(ConfigError, match="environment") as err:
        parse_config(data)
    assert "abc" not in str(err.value)


def test_cli_reports_bad_config_without_starting_ray(tmp_path):
    data = _local()
    data["routing"]["direct_languages"] = "en"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    # A fresh process, so "Ray was not started" is not confused with the test session's cluster.
    # -X importtime lists every module imported, on stderr.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "babelray.cli", "run", "--config", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "routing.direct_languages" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
    assert "babelray.config" in imported and "ray" not in imported


def test_table_override_splits_uri_and_name():
    cfg = parse_config(_local())
    assert apply_overrides(cfg, None, "s3://bucket/db/chunks_v2").sink.model_dump()["uri"] == "s3://bucket/db"
    assert apply_overrides(cfg, None, "s3://bucket/db/chunks_v2").sink.table == "chunks_v2"
    assert apply_overrides(cfg, None, "other").sink.uri == cfg.sink.uri
    assert apply_overrides(cfg, "in.jsonl", None).input.paths == ["in.jsonl"]


def test_fingerprint_follows_what_changes_vectors():
    base = parse_config(_local())
    data = _local()
    data["embedding"]["resources"]["max_actors"] = 4
    assert parse_config(data).fingerprint() == base.fingerprint()
    data["embedding"]["dimensions"] = 128
    assert parse_config(data).fingerprint() != base.fingerprint()


def test_config_reference_is_current():
    from babelray.config import render_reference

    assert (REPO / "docs" / "config.md").read_text() == render_reference(), \
        "docs/config.md is stale: python -m babelray.config > docs/config.md"
