"""Read stage: source files -> document rows (or rejects with a reason).

The driver only lists files (names and sizes, never contents); the reading and
decoding runs in Ray tasks. Folder trees, JSONL and Parquet all come out in the
same document schema. Works on local paths and on object-store URIs alike
through pyarrow's filesystem layer.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from babelray.config import InputConfig
from operators.chunking import language_for_path
from operators.schema import (
    DOCUMENT_SCHEMA,
    REJECT_BAD_RECORD,
    REJECT_BINARY,
    REJECT_EMPTY,
    REJECT_READ_ERROR,
    REJECT_TOO_LARGE,
    REJECT_UNDECODABLE,
)

STAGE = "read"
_BINARY_SNIFF_BYTES = 8192
_ROWS_PER_OUTPUT_BATCH = 1000


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem for a local path or an object-store URI."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def detect_format(path: str, fs: pafs.FileSystem) -> str:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return "folder"
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input path not found: {path}")
    if path.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
        return "jsonl"
    if path.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"cannot tell the format of {path}: use a folder, .jsonl or .parquet, or set input.format")


def _excluded(rel_path: str, patterns: list[str]) -> bool:
    # Leading "/" lets "**/x/**" match a top-level "x/" too.
    candidate = "/" + rel_path
    return any(fnmatch.fnmatch(candidate, pattern if pattern.startswith(("/", "*")) else "/" + pattern)
               for pattern in patterns)


def list_sources(uri: str, cfg: InputConfig) -> list[dict]:
    """One row per input file: where it is, its format, its doc-id prefix and size.

    doc_id of a file in a folder is `<folder name>/<path below it>`, so it does
    not depend on where the job is started from.
    """
    fs, path = resolve_filesystem(uri)
    fmt = detect_format(path, fs) if cfg.format == "auto" else cfg.format
    root_name = PurePosixPath(path.rstrip("/")).name
    if fmt != "folder":
        size = fs.get_file_info(path).size
        return [{"uri": uri, "fs_path": path, "format": fmt, "doc_id": root_name, "size_bytes": size}]
    rows = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = PurePosixPath(info.path).relative_to(PurePosixPath(path)).as_posix()
        if _excluded(rel, cfg.exclude):
            continue
        if not cfg.include_code and language_for_path(rel) is not None:
            continue
        rows.append({"uri": uri, "fs_path": info.path, "format": "folder",
                     "doc_id": f"{root_name}/{rel}", "size_bytes": info.size})
    rows.sort(key=lambda row: row["doc_id"])
    return rows


def decode_text(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(text, reject_reason, detail). Strict UTF-8: a wrong guess at an encoding
    would embed mojibake, which is worse than a reject the user can see."""
    if not raw.strip():
        return None, REJECT_EMPTY, f"{len(raw)} bytes, no visible content"
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        return None, REJECT_BINARY, "NUL byte in the first 8 KiB"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return None, REJECT_UNDECODABLE, f"not UTF-8: {err.reason} at byte {err.start}"
    if not text.strip():
        return None, REJECT_EMPTY, "whitespace only"
    return text, None, None


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _document(doc_id: str, source: str, *, text: str | None, raw_hash: str | None, size: int,
              kind: str = "prose", code_language: str | None = None, is_markdown: bool = False,
              metadata: dict | None = None, reject: tuple[str, str] | None = None) -> dict:
    return {
        "doc_id": doc_id,
        "source": source,
        "kind": kind,
        "code_language": code_language,
        "is_markdown": is_markdown,
        "text": text,
        "content_hash": raw_hash,
        "size_bytes": size,
        "metadata": json.dumps(metadata or {}, ensure_ascii=False, sort_keys=True),
        "reject_stage": STAGE if reject else None,
        "reject_reason": reject[0] if reject else None,
        "reject_detail": reject[1] if reject else None,
    }


class ReadSources:
    """Map stage: a batch of `list_sources` rows -> document rows.

    A file that cannot be read, decoded or is over the size limit becomes one
    reject row; a JSONL line that is not a JSON object becomes one reject row.
    """

    def __init__(self, cfg: InputConfig):
        self.cfg = cfg
        self._filesystems: dict[str, pafs.FileSystem] = {}

    def _fs(self, uri: str) -> pafs.FileSystem:
        if uri not in self._filesystems:
            self._filesystems[uri] = resolve_filesystem(uri)[0]
        return self._filesystems[uri]

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        rows: list[dict] = []
        for source in batch.to_pylist():
            for row in self._read_source(source):
                rows.append(row)
                if len(rows) >= _ROWS_PER_OUTPUT_BATCH:
                    yield pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)
                    rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)

    def _read_source(self, source: dict) -> Iterator[dict]:
        fs = self._fs(source["uri"])
        if source["format"] == "folder":
            yield self._read_file(fs, source)
        elif source["format"] == "jsonl":
            yield from self._read_jsonl(fs, source)
        else:
            yield from self._read_parquet(fs, source)

    def _read_file(self, fs: pafs.FileSystem, source: dict) -> dict:
        doc_id, path, size = source["doc_id"], source["fs_path"], source["size_bytes"]
        if size > self.cfg.max_document_bytes:
            return _document(doc_id, path, text=None, raw_hash=None, size=size,
                             reject=(REJECT_TOO_LARGE, f"{size} bytes > max_document_bytes {self.cfg.max_document_bytes}"))
        try:
            with fs.open_input_stream(path) as stream:
                raw = stream.read()
        except OSError as err:
            return _document(doc_id, path, text=None, raw_hash=None, size=size,
                             reject=(REJECT_READ_ERROR, str(err)))
        code_language = language_for_path(path)
        kind = "code" if code_language else "prose"
        text, reason, detail = decode_text(raw)
        is_markdown = PurePosixPath(path).suffix.lower() in (".md", ".markdown")
        return _document(doc_id, path, text=text, raw_hash=content_hash(raw), size=len(raw), kind=kind,
                         code_language=code_language, is_markdown=is_markdown,
                         reject=(reason, detail) if reason else None)

    def _record_document(self, doc_id: str, source_path: str, record: dict) -> dict:
        text = record.get(self.cfg.text_column)
        metadata = {col: record.get(col) for col in self.cfg.metadata_columns if col in record}
        if self.cfg.id_column and record.get(self.cfg.id_column) is not None:
            doc_id = str(record[self.cfg.id_column])
        if not isinstance(text, str):
            found = "missing" if text is None else type(text).__name__
            return _document(doc_id, source_path, text=None, raw_hash=None, size=0, metadata=metadata,
                             reject=(REJECT_BAD_RECORD, f"text column {self.cfg.text_column!r} is {found}"))
        raw = text.encode("utf-8")
        reject = None
        if len(raw) > self.cfg.max_document_bytes:
            reject, text = (REJECT_TOO_LARGE, f"{len(raw)} bytes > max_document_bytes"), None
        elif not text.strip():
            reject, text = (REJECT_EMPTY, "empty text"), None
        return _document(doc_id, source_path, text=text, raw_hash=content_hash(raw), size=len(raw),
                         metadata=metadata, is_markdown=bool(metadata.get("is_markdown", False)), reject=reject)

    def _read_jsonl(self, fs: pafs.FileSystem, source: dict) -> Iterator[dict]:
        path = source["fs_path"]
        # doc_id without an id column: <file>:<line>, stable while the file is append-only.
        with fs.open_input_stream(path, compression="detect") as stream:
            for line_no, line in enumerate(stream.read().splitlines(), start=1):
                fallback_id = f"{source['doc_id']}:{line_no}"
                if not line.strip():
                    continue  # blank separator lines are not documents
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                except ValueError as err:
                    yield _document(fallback_id, path, text=None, raw_hash=None, size=len(line),
                                    reject=(REJECT_BAD_RECORD, f"line {line_no}: {err}"))
                    continue
                yield self._record_document(fallback_id, path, record)

    def _read_parquet(self, fs: pafs.FileSystem, source: dict) -> Iterator[dict]:
        path = source["fs_path"]
        parquet = pq.ParquetFile(path, filesystem=fs)
        wanted = {self.cfg.text_column, *self.cfg.metadata_columns}
        if self.cfg.id_column:
            wanted.add(self.cfg.id_column)
        columns = [name for name in parquet.schema_arrow.names if name in wanted]
        row_number = 0
        for record_batch in parquet.iter_batches(columns=columns, batch_size=_ROWS_PER_OUTPUT_BATCH):
            for record in record_batch.to_pylist():
                yield self._record_document(f"{source['doc_id']}:{row_number}", path, record)
                row_number += 1
