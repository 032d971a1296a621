"""The bad-input battery: every file and record ends embedded or as a rejects row with a reason."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from babelray.config import InputConfig
from babelray.testing import local_config
from operators.read import ReadSources, list_sources
from pipelines.ingest import run_ingest

REPO = Path(__file__).resolve().parent.parent
HUGE_BYTES = 50 * 1024 * 1024


def _config(tmp: Path, paths: list[Path]):
    return local_config(tmp, paths)


@pytest.fixture()
def battery(tmp_path) -> tuple[list[Path], dict[str, str | None]]:
    """Input paths and the expected outcome per document id (None = embedded, else the reject reason)."""
    folder = tmp_path / "battery"
    (folder / "sub").mkdir(parents=True)
    files = {
        "empty.txt": b"",
        "whitespace.txt": b"   \n\t  \r\n",
        "nul.bin": b"PK\x03\x04\x00\x00binary zip-like header" + bytes(range(256)),
        "invalid-utf8.txt": b"caf\xc3\x28 au lait, bad continuation byte",
        "utf16-bom.txt": "Grüße aus Köln: der Dom ist 157 Meter hoch.".encode("utf-16"),
        "latin1.txt": "Le café est très chaud à Noël, déjà prêt.".encode("latin-1"),
        "long-word.txt": ("Start " + "x" * 120_000 + " end of the very long word.").encode(),
        "mixed-scripts.md": "# Rivers\n\nThe Volga (Волга) flows into the Caspian; 长江 is longer; النيل longest.\n".encode(),
        "rtl.txt": "הנהר הירדן זורם לים המלח. نهر الأردن يصب في البحر الميت.".encode(),
        "emoji-control.txt": "Party 🎉🎉 time\x07 with \x1b[31mred\x1b[0m text,\ttabs\r\nand CRLF lines.\r\n".encode(),
        "broken.py": b"def broken(:\n    return [1, 2\nclass Fine:\n    def ok(self):\n        return 'ok'\n",
        "sub/nested.txt": "Owls hunt at night and hear mice under the snow.\n".encode(),
    }
    for name, body in files.items():
        (folder / name).write_bytes(body)
    with open(folder / "huge.txt", "wb") as handle:  # one 50 MB line
        handle.truncate(HUGE_BYTES - 1)
        handle.seek(0)
        handle.write(b"word " * 1000)
    with open(folder / "huge.txt", "ab") as handle:
        handle.write(b"\n")
    os.symlink("..", folder / "sub" / "loop")  # a symlink loop
    os.symlink("missing-target.txt", folder / "dangling.txt")

    records = tmp_path / "records.jsonl"
    records.write_text("\n".join([
        json.dumps({"id": "r1", "text": "A normal record about rivers and deltas."}),
        "{not json at all",
        json.dumps([1, 2, 3]),
        json.dumps({"id": "r4", "text": None}),
        "",
        json.dumps({"id": "dup", "text": "The first record with this id."}),
        json.dumps({"id": "dup", "text": "The second record with this id."}),
        json.dumps({"id": "r8", "text": "   "}),
    ]) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"id": ["p0", "p1", None], "text": ["Parquet row about owls.", None,
                                                                "A row without an id."]}),
                   tmp_path / "table.parquet")
    pq.write_table(pa.table({"id": ["q0"], "body": ["the text is in the wrong column"]}),
                   tmp_path / "notext.parquet")

    expected = {f"battery/{name}": None for name in ["utf16-bom.txt", "long-word.txt", "mixed-scripts.md", "rtl.txt",
                                                     "emoji-control.txt", "broken.py", "sub/nested.txt"]}
    expected.update({
        "battery/empty.txt": "empty", "battery/whitespace.txt": "empty", "battery/nul.bin": "binary",
        "battery/invalid-utf8.txt": "undecodable", "battery/latin1.txt": "undecodable",
        "battery/huge.txt": "too_large", "battery/sub/loop": "read_error", "battery/dangling.txt": "read_error",
        "r1": None, "records.jsonl:2": "bad_record", "records.jsonl:3": "bad_record", "r4": "bad_record",
        "dup": "duplicate_id", "r8": "empty",
        "p0": None, "p1": "bad_record", "table.parquet:2": None, "notext.parquet": "bad_record",
    })
    return [folder, records, tmp_path / "table.parquet", tmp_path / "notext.parquet"], expected


def test_read_stage_decodes_byte_order_marks_and_reports_what_it_cannot_list(battery):
    paths, _ = battery
    cfg = InputConfig(paths=["x"])
    sources = list_sources(str(paths[0]), cfg)
    assert len(sources) == 15  # the loop is listed once, as a reject, not walked 40 levels deep
    rows = {row["doc_id"]: row for batch in ReadSources(cfg)(pa.Table.from_pylist(sources))
            for row in batch.to_pylist()}
    assert rows["battery/utf16-bom.txt"]["text"] == "Grüße aus Köln: der Dom ist 157 Meter hoch."
    assert "not followed" in rows["battery/sub/loop"]["reject_detail"]
    assert "FileNotFoundError" in rows["battery/dangling.txt"]["reject_detail"]
    assert "max_document_bytes" in rows["battery/huge.txt"]["reject_detail"]
    [notext] = [row for batch in ReadSources(cfg)(pa.Table.from_pylist(list_sources(str(paths[3]), cfg)))
                for row in batch.to_pylist()]
    assert "no text column 'text'" in notext["reject_detail"] and "body" in notext["reject_detail"]


def test_every_bad_input_ends_embedded_or_rejected_with_a_reason(ray_cluster, battery, tmp_path):
    paths, expected = battery
    cfg = _config(tmp_path, paths)
    summary = run_ingest(cfg)

    db = lancedb.connect(cfg.sink.uri)
    rejects = {row["doc_id"]: row for row in db.open_table("rejects").to_arrow().to_pylist()}
    embedded = set(db.open_table("chunks").to_arrow().column("doc_id").to_pylist())
    assert embedded == {doc for doc, reason in expected.items() if reason is None}
    assert {doc: row["reason"] for doc, row in rejects.items()} == \
        {doc: reason for doc, reason in expected.items() if reason is not None}
    assert all(row["detail"] and row["stage"] for row in rejects.values())
    assert "2 records in this run have this id" in rejects["dup"]["detail"]

    assert summary["documents_in"] == len(expected) == summary["documents_embedded"] + summary["documents_rejected"]
    assert summary["rejected_by_reason"] == dict(Counter(r for r in expected.values() if r))
    assert summary["duplicate_records"] == 1


POISON_MODEL_CODE = '''\
import os
import shutil

from transformers import Qwen3Model

POISON_TOKEN_ID = {poison_id}


class PoisonQwen3Model(Qwen3Model):
    """Dies, as a segfault or an OOM kill would, whenever it meets the poison token."""

    def forward(self, input_ids=None, *args, **kwargs):
        if input_ids is not None and bool((input_ids == POISON_TOKEN_ID).any()):
            os._exit(17)
        return super().forward(input_ids, *args, **kwargs)
'''


def test_a_document_that_kills_its_worker_is_rejected_and_spares_its_batch(ray_cluster, tiny_qwen3_dir, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "poison-model"
    shutil.copytree(tiny_qwen3_dir, model)
    poison_id = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<|box_start|>")
    (model / "poison_model.py").write_text(POISON_MODEL_CODE.format(poison_id=poison_id))
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "poison_model.PoisonQwen3Model"}
    (model / "config.json").write_text(json.dumps(config))

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {f"doc{i}.txt": f"Document {i} is about rivers number {i} and their deltas." for i in range(5)}
    texts["doc2.txt"] = "This one carries the poison <|box_start|> that kills the model process."
    for name, text in texts.items():
        (corpus / name).write_text(text, encoding="utf-8")

    cfg = _config(tmp_path, [corpus])
    cfg.run.task_retries = 1
    cfg.embedding.model = str(model)
    cfg.embedding.trust_remote_code = True  # the model's own code, as a hub model with custom code has
    cfg.index.after_ingest = False
    summary = run_ingest(cfg)

    db = lancedb.connect(cfg.sink.uri)
    assert set(db.open_table("chunks").to_arrow().column("doc_id").to_pylist()) == \
        {f"corpus/doc{i}.txt" for i in (0, 1, 3, 4)}
    [reject] = db.open_table("rejects").to_arrow().to_pylist()
    assert (reject["doc_id"], reject["reason"]) == ("corpus/doc2.txt", "worker_crashed")
    assert "2 times" in reject["detail"]
    assert summary["documents_in"] == 5 and summary["rejected_by_reason"] == {"worker_crashed": 1}


def test_a_rerun_over_bad_input_keeps_every_reject(ray_cluster, battery, tmp_path):
    paths, expected = battery
    cfg = _config(tmp_path, paths)
    cfg.index.after_ingest = False
    run_ingest(cfg)
    again = run_ingest(cfg)  # the rejects table exists now: rejects are upserted, duplicates again rejected
    rejects = lancedb.connect(cfg.sink.uri).open_table("rejects").to_arrow().to_pylist()
    assert sorted((row["doc_id"], row["reason"]) for row in rejects) == \
        sorted((doc, reason) for doc, reason in expected.items() if reason is not None)
    assert again["documents_skipped"] == sum(1 for reason in expected.values() if reason is None)
    # Every document reads as unchanged but the duplicated id: its reject holds no single content hash.
    assert again["documents_unchanged"] == len(expected) - 1 and again["documents_changed"] == 1
