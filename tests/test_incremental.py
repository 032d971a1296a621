"""Incremental, resumable and model-aware runs on the real pipeline (sample corpus, bundled e5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import yaml

from babelray.cli import main
from babelray.testing import local_config
from operators.incremental import ClassifyChanges
from operators.schema import DOCUMENT_SCHEMA
from pipelines.ingest import run_ingest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "samples" / "corpus" / "docs"
COMPARED = ["doc_id", "chunk_id", "chunk_index", "n_chunks", "text", "start_char", "end_char", "content_hash",
            "lang", "route", "embedding_fingerprint"]


def _config(tmp: Path, corpus: Path, db: str = "lancedb"):
    cfg = local_config(tmp, [corpus], db)
    cfg.index.after_ingest = False
    return cfg


def _rows(cfg, table: str | None = None) -> dict[str, dict]:
    from operators.table_alias import resolve_tables

    name = table or resolve_tables(cfg.sink).chunks
    rows = lancedb.connect(cfg.sink.uri).open_table(name).to_arrow().to_pylist()
    by_chunk = {row["chunk_id"]: row for row in rows}
    assert len(by_chunk) == len(rows), "duplicate chunk ids"
    return by_chunk


def _assert_same_table(left: dict[str, dict], right: dict[str, dict]) -> None:
    assert left.keys() == right.keys()
    for chunk, row in left.items():
        assert {k: row[k] for k in COMPARED} == {k: right[chunk][k] for k in COMPARED}, chunk
        # Batches are composed differently, so the floats may differ in the last bits only.
        assert float(np.dot(row["vector"], right[chunk]["vector"])) > 0.9999, chunk


@pytest.fixture(scope="module")
def from_scratch(ray_cluster, tmp_path_factory):
    """The sample corpus embedded once, into a fresh table."""
    tmp = tmp_path_factory.mktemp("scratch")
    corpus = tmp / "docs"
    shutil.copytree(CORPUS, corpus)
    cfg = _config(tmp, corpus)
    return cfg, run_ingest(cfg)


def test_classify_changes_labels_and_finds_duplicate_ids():
    embedded = pa.table({"doc_id": ["a", "b", "c"], "content_hash": ["ha", "hb", "hc"],
                         "embedding_fingerprint": ["fp", "fp", "old-fp"]})
    rejected = pa.table({"doc_id": ["r"], "content_hash": ["hr"]})
    stage = ClassifyChanges(embedded, rejected, "fp")
    rows = [{"doc_id": d, "source": f"src/{d}{i}", "text": "some text", "content_hash": h}
            for i, (d, h) in enumerate([("a", "ha"), ("b", "hb-edited"), ("c", "hc"), ("r", "hr"), ("n", "hn"),
                                        ("a", "ha")])]
    out = stage(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)).to_pylist()
    assert [row["change"] for row in out] == ["unchanged", "changed", "changed", "unchanged", "new", "unchanged"]
    # Only a document embedded from the same content with the same config is skipped (its text dropped).
    assert [row["reject_reason"] for row in out] == ["unchanged", None, None, None, None, "duplicate_id"]
    assert out[0]["text"] is None and out[1]["text"] == "some text"
    assert "src/a0" in out[5]["reject_detail"]


def test_rerun_skips_every_unchanged_document(from_scratch):
    cfg, first = from_scratch
    again = run_ingest(cfg)
    assert again["documents_skipped"] == first["documents_embedded"] and again["documents_embedded"] == 0
    assert again["documents_unchanged"] == again["documents_in"] == first["documents_in"]
    assert again["tokens"] == 0 and again["tokens_saved"] == first["tokens"]
    assert again["table_rows"] == first["table_rows"]


def test_edit_delete_add_matches_a_run_from_scratch(from_scratch, tmp_path):
    cfg_scratch, first = from_scratch
    corpus = tmp_path / "docs"
    shutil.copytree(Path(cfg_scratch.input.paths[0]), corpus)
    shutil.copytree(Path(cfg_scratch.sink.uri), tmp_path / "lancedb")  # the first run, already done
    cfg = _config(tmp_path, corpus)

    for name in ["en/bicycle-chain.md", "de/fahrradkette.md", "ja/jishin-sonae.md"]:
        path = corpus / name
        path.write_text(path.read_text(encoding="utf-8") + "\n\nEdited: one more paragraph at the end.\n",
                        encoding="utf-8")
    for name in ["fr/pierre-de-rosette.md", "es/volcanes.md"]:
        (corpus / name).unlink()
    new_docs = {"en/new-tides.md": "# Tides\n\nThe moon's pull raises two bulges of water on the oceans.\n",
                "de/neu-gezeiten.md": "# Gezeiten\n\nDer Mond zieht das Wasser der Ozeane zu zwei Bergen.\n",
                "it/nuovo-maree.md": "# Maree\n\nLa luna solleva due rigonfiamenti d'acqua sugli oceani.\n",
                "zh/xin-chaoxi.md": "# 潮汐\n\n月球的引力在海洋上形成两个水隆起。\n"}
    for name, text in new_docs.items():
        (corpus / name).parent.mkdir(exist_ok=True)
        (corpus / name).write_text(text, encoding="utf-8")

    summary = run_ingest(cfg, prune=True)
    assert (summary["documents_new"], summary["documents_changed"], summary["documents_deleted"]) == (4, 3, 2)
    assert summary["documents_unchanged"] == first["documents_in"] - 3 - 2
    assert summary["documents_embedded"] == 7 and summary["documents_skipped"] == summary["documents_unchanged"]
    assert 0 < summary["tokens"] < summary["tokens_saved"]

    scratch_cfg = _config(tmp_path, corpus, db="scratch-db")
    run_ingest(scratch_cfg)
    _assert_same_table(_rows(cfg), _rows(scratch_cfg))


def test_a_killed_run_resumes_without_duplicates_or_redoing_committed_work(from_scratch, ray_cluster, tmp_path):
    cfg_scratch, first = from_scratch
    cfg = _config(tmp_path, Path(cfg_scratch.input.paths[0]))
    cfg.run.commit_rows = 4  # small rounds and small blocks, so the kill lands between commits
    for stage in (cfg.langid, cfg.chunking, cfg.embedding):
        stage.resources.batch_size = 4
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "babelray.cli", "run", "--config", str(config_path)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table_dir = tmp_path / "lancedb" / "chunks.lance"
    deadline = time.monotonic() + 300
    committed = 0
    while time.monotonic() < deadline and driver.poll() is None:
        if table_dir.exists():
            committed = lancedb.connect(cfg.sink.uri).open_table("chunks").count_rows()
            if committed:
                break
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 0 < committed < first["table_rows"], "the kill must land after a commit and before the end"

    resumed = run_ingest(cfg)  # takes over the dead run's lock
    assert resumed["documents_skipped"] > 0
    assert resumed["documents_skipped"] + resumed["documents_embedded"] == first["documents_embedded"]
    _assert_same_table(_rows(cfg), _rows(cfg_scratch))


def test_reembed_builds_a_new_table_switches_and_rolls_back(ray_cluster, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ["en/bicycle-chain.md", "de/fahrradkette.md", "en/sourdough-bread.md"]:
        shutil.copy(CORPUS / name, corpus / Path(name).name)
    cfg = _config(tmp_path, corpus)
    run_ingest(cfg)
    old = _rows(cfg, "chunks")

    smaller = cfg.model_copy(deep=True)
    smaller.embedding.dimensions = 128  # MRL: other vectors, so another table
    with pytest.raises(ValueError, match="babelray reembed"):
        run_ingest(smaller)
    config_path = tmp_path / "smaller.yaml"
    config_path.write_text(yaml.safe_dump(smaller.model_dump(mode="json")))
    assert main(["reembed", "--config", str(config_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    new_name = f"chunks--{smaller.fingerprint()}"
    assert summary["switched"]["current"]["chunks"] == new_name
    assert summary["documents_embedded"] == 3

    from pipelines.search import Searcher

    assert {len(row["vector"]) for row in _rows(smaller).values()} == {128}
    assert Searcher(smaller).search("Fahrradkette ölen", k=1)[0].doc_id == "corpus/fahrradkette.md"
    with pytest.raises(ValueError, match="dimensions"):
        Searcher(cfg)  # the name now stands for the 128-dimension table
    assert _rows(cfg, "chunks") == old  # the old table is untouched, ready for rollback

    assert main(["rollback", "--config", str(config_path)]) == 0
    assert "-> chunks (rejects: rejects)" in capsys.readouterr().out
    assert Searcher(cfg).search("Fahrradkette ölen", k=1)[0].doc_id == "corpus/fahrradkette.md"
    assert main(["rollback", "--config", str(config_path)]) == 0  # and forward again
    assert Searcher(smaller).table.name == new_name


def test_search_refuses_a_table_that_mixes_configs(from_scratch, tmp_path):
    from pipelines.search import Searcher

    cfg_scratch, _ = from_scratch
    shutil.copytree(Path(cfg_scratch.sink.uri), tmp_path / "lancedb")
    cfg = _config(tmp_path, Path(cfg_scratch.input.paths[0]))
    table = lancedb.connect(cfg.sink.uri).open_table("chunks")
    table.update(where="lang = 'de'", values={"embedding_fingerprint": "another-config"})
    with pytest.raises(ValueError, match="mixes vectors of several configs"):
        Searcher(cfg)


def test_a_rerun_that_changes_nothing_keeps_the_indexes(from_scratch):
    cfg, _ = from_scratch
    cfg = cfg.model_copy(deep=True)
    cfg.index.after_ingest = True
    first = run_ingest(cfg)  # the fixture built none: they are built now, although nothing changed
    assert "full-text index on text" in first["indexes"]
    again = run_ingest(cfg)
    assert "full-text index on text kept: it covers every row" in again["indexes"]


def _chunk_row(doc_id: str, index: int, n_chunks: int, dims: int = 8) -> dict:
    from operators.chunk import chunk_id

    vector = np.zeros(dims, dtype=np.float32)
    vector[index % dims] = 1.0
    return {"doc_id": doc_id, "source": f"/src/{doc_id}", "kind": "prose", "text": f"{doc_id} part {index}",
            "content_hash": "h-" + doc_id, "change": "new", "lang": "en", "route": "direct", "translated": False,
            "chunk_id": chunk_id(doc_id, index), "chunk_index": index, "n_chunks": n_chunks, "token_count": 3,
            "vector": vector.tolist(), "model": "m"}


def test_table_writer_drops_redelivered_rows_and_rejects_documents_missing_chunks(tmp_path):
    from babelray.config import SinkConfig
    from operators.schema import chunk_schema
    from operators.sink import TableWriter
    from operators.table_alias import TableNames

    sink = SinkConfig(uri=str(tmp_path / "db"))
    names = TableNames("chunks", "rejects")
    writer = TableWriter(sink, names, run_id="run-1", metadata={"fingerprint": "fp", "model": "m", "dimensions": "8"},
                         dimensions=8, commit_rows=1)
    schema = chunk_schema(8)
    # a.txt: chunk 0 twice (a retried task re-delivered it) before chunk 1; b.txt: chunk 1 of 2 never arrives.
    for rows in ([_chunk_row("a.txt", 0, 2)], [_chunk_row("a.txt", 0, 2), _chunk_row("b.txt", 0, 2)],
                 [_chunk_row("a.txt", 1, 2)]):
        writer.add(pa.Table.from_pylist(rows, schema=schema))
    writer.finish(prune=False)

    db = lancedb.connect(sink.uri)
    table = db.open_table("chunks").to_arrow()
    assert sorted(zip(table.column("doc_id").to_pylist(), table.column("chunk_index").to_pylist())) == \
        [("a.txt", 0), ("a.txt", 1)]
    assert set(table.column("embedding_fingerprint").to_pylist()) == {"fp"}
    [reject] = db.open_table("rejects").to_arrow().to_pylist()
    assert (reject["doc_id"], reject["reason"]) == ("b.txt", "incomplete")
    summary = writer.tally.summary()
    assert (summary["documents_embedded"], summary["chunks"], summary["documents_rejected"]) == (1, 2, 1)
