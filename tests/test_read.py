import json

import pyarrow as pa
import pyarrow.parquet as pq

from babelray.config import InputConfig
from operators.read import ReadSources, decode_text, list_sources


def _read(cfg: InputConfig, path) -> list[dict]:
    sources = list_sources(str(path), cfg)
    batches = list(ReadSources(cfg)(pa.Table.from_pylist(sources)))
    return [row for batch in batches for row in batch.to_pylist()]


def test_folder_rejects_bad_files_with_reasons(bad_input_dir):
    rows = {row["doc_id"]: row for row in _read(InputConfig(paths=["x"]), bad_input_dir)}
    assert set(rows) == {"bad/good.md", "bad/empty.txt", "bad/blob.bin", "bad/latin1.txt"}
    assert rows["bad/empty.txt"]["reject_reason"] == "empty"
    assert rows["bad/blob.bin"]["reject_reason"] == "binary"
    assert rows["bad/latin1.txt"]["reject_reason"] == "undecodable"
    assert "UTF-8" in rows["bad/latin1.txt"]["reject_detail"]
    good = rows["bad/good.md"]
    assert good["reject_reason"] is None and good["is_markdown"] and good["kind"] == "prose"
    assert good["text"].startswith("# Kettles") and len(good["content_hash"]) == 64


def test_code_files_are_labelled_and_excludes_apply(tmp_path):
    (tmp_path / "src" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "app.go").write_text("package main\n\nfunc main() {}\n")
    (tmp_path / "src" / "__pycache__" / "x.pyc").write_bytes(b"\x00\x01")
    (tmp_path / "README").write_text("plain text without an extension\n")
    rows = {row["doc_id"]: row for row in _read(InputConfig(paths=["x"]), tmp_path)}
    root = tmp_path.name
    assert set(rows) == {f"{root}/src/app.go", f"{root}/README"}
    assert rows[f"{root}/src/app.go"]["kind"] == "code"
    assert rows[f"{root}/src/app.go"]["code_language"] == "go"
    assert rows[f"{root}/README"]["kind"] == "prose"


def test_size_limit_rejects_without_reading(tmp_path):
    (tmp_path / "big.txt").write_text("word " * 1000)
    [row] = _read(InputConfig(paths=["x"], max_document_bytes=100), tmp_path)
    assert row["reject_reason"] == "too_large" and row["text"] is None


def test_jsonl_records_and_bad_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": "a", "text": "Hello there", "source_url": "u1"}),
             "{not json",
             json.dumps({"id": "c"}),
             json.dumps({"text": "no id given"}),
             "",
             json.dumps([1, 2])]
    path.write_text("\n".join(lines) + "\n")
    cfg = InputConfig(paths=["x"], metadata_columns=["source_url"])
    rows = _read(cfg, path)
    by_id = {row["doc_id"]: row for row in rows}
    assert len(rows) == 5  # the blank line is not a document
    assert by_id["a"]["text"] == "Hello there" and json.loads(by_id["a"]["metadata"]) == {"source_url": "u1"}
    assert by_id["docs.jsonl:2"]["reject_reason"] == "bad_record"
    assert by_id["c"]["reject_reason"] == "bad_record" and "missing" in by_id["c"]["reject_detail"]
    assert by_id["docs.jsonl:4"]["text"] == "no id given"
    assert by_id["docs.jsonl:6"]["reject_reason"] == "bad_record"


def test_parquet_columns_are_configurable(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"key": ["k1", "k2"], "body": ["Erster Text", "   "], "lang_hint": ["de", "de"]}), path)
    cfg = InputConfig(paths=["x"], id_column="key", text_column="body", metadata_columns=["lang_hint"])
    rows = {row["doc_id"]: row for row in _read(cfg, path)}
    assert rows["k1"]["text"] == "Erster Text"
    assert rows["k2"]["reject_reason"] == "empty"


def test_decode_text_strips_bom():
    assert decode_text("\ufeffhallo".encode("utf-8"))[0] == "hallo"
