"""Read stage: source files -> document rows (or rejects with a reason).

The driver only lists files (names and sizes, never contents); the reading and
decoding runs in Ray tasks. Folder trees, JSONL and Parquet all come out in the
same document schema. Works on local paths and on object-store URIs alike
through pyarrow's filesystem layer.
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from babelray.config import InputConfig
from babelray.metrics import count, timed_stage
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
_READ_BUFFER_BYTES = 1 << 20


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
    not depend on where the job is started from. A path that cannot be listed
    (a symlink loop, a dangling link) is a row too, with `list_error` set, so it
    ends as a reject instead of vanishing.
    """
    fs, path = resolve_filesystem(uri)
    fmt = detect_format(path, fs) if cfg.format == "auto" else cfg.format
    root_name = PurePosixPath(path.rstrip("/")).name
    if fmt != "folder":
        size = fs.get_file_info(path).size
        return [_source(uri, path, fmt, root_name, size)]
    files = _walk_local(path) if isinstance(fs, pafs.LocalFileSystem) else _walk_store(fs, path)
    rows = []
    for file_path, size, error in files:
        rel = PurePosixPath(file_path).relative_to(PurePosixPath(path)).as_posix()
        if _excluded(rel, cfg.exclude):
            continue
        if not cfg.include_code and language_for_path(rel) is not None:
            continue
        rows.append(_source(uri, file_path, "folder", f"{root_name}/{rel}", size, error))
    rows.sort(key=lambda row: row["doc_id"])
    return rows


def _source(uri: str, path: str, fmt: str, doc_id: str, size: int | None, error: str | None = None) -> dict:
    return {"uri": uri, "fs_path": path, "format": fmt, "doc_id": doc_id, "size_bytes": size, "list_error": error}


def _walk_store(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, int, None]]:
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File:
            yield info.path, info.size, None


def _walk_local(path: str) -> Iterator[tuple[str, int | None, str | None]]:
    """Files below a local folder, following symlinked folders once each: a link back to a
    folder already visited (a loop, or a second way to the same files) is reported, not walked."""
    def identity(folder: str) -> tuple[int, int]:
        info = os.stat(folder)
        return info.st_dev, info.st_ino

    visited = {identity(path)}
    for folder, subfolders, names in os.walk(path, followlinks=True):
        for name in list(subfolders):
            link = os.path.join(folder, name)
            inode = identity(link)
            if inode in visited:
                subfolders.remove(name)
                yield link, None, f"symlink to a folder already read ({os.path.realpath(link)}): not followed"
            visited.add(inode)
        for name in names:
            file_path = os.path.join(folder, name)
            try:
                yield file_path, os.stat(file_path).st_size, None
            except OSError as err:  # a dangling link, or a file gone since listing
                yield file_path, None, f"{type(err).__name__}: {err.strerror}"


# Byte-order marks name their encoding for certain; UTF-32 first, its LE mark starts like UTF-16's.
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def decode_text(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(text, reject_reason, detail). UTF-8, or the encoding a byte-order mark names;
    nothing is guessed: a wrong guess (Latin-1 for CP1252, say) would embed mojibake,
    which is worse than a reject the user can see."""
    if not raw.strip():
        return None, REJECT_EMPTY, f"{len(raw)} bytes, no visible content"
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        return None, REJECT_BINARY, "NUL byte in the first 8 KiB"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        hint = "" if encoding != "utf-8" else "; save it as UTF-8 (or with a byte-order mark)"
        return None, REJECT_UNDECODABLE, f"not {encoding.upper()}: {err.reason} at byte {err.start}{hint}"
    if "\x00" in text:
        return None, REJECT_BINARY, f"NUL character in {encoding.upper()} text"
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

    def __init__(self, cfg: InputConfig, only_docs: frozenset[str] | None = None):
        """`only_docs`: read only these document ids (a retry of documents a crashed worker lost)."""
        self.cfg = cfg
        self.only_docs = only_docs
        self._filesystems: dict[str, pafs.FileSystem] = {}

    def _fs(self, uri: str) -> pafs.FileSystem:
        if uri not in self._filesystems:
            self._filesystems[uri] = resolve_filesystem(uri)[0]
        return self._filesystems[uri]

    @timed_stage("read")
    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        rows: list[dict] = []
        for source in batch.to_pylist():
            for row in self._read_source(source):
                if self.only_docs is not None and row["doc_id"] not in self.only_docs:
                    continue
                count("babelray_documents_read_total", format=source["format"])
                rows.append(row)
                if len(rows) >= _ROWS_PER_OUTPUT_BATCH:
                    yield pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)
                    rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)

    def _read_source(self, source: dict) -> Iterator[dict]:
        if source.get("list_error"):
            yield _document(source["doc_id"], source["fs_path"], text=None, raw_hash=None, size=0,
                            reject=(REJECT_READ_ERROR, source["list_error"]))
            return
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
        # Line by line: a JSONL file may be far larger than a worker's memory.
        with fs.open_input_stream(path, compression="detect") as stream:
            for line_no, line in enumerate(io.BufferedReader(stream, _READ_BUFFER_BYTES), start=1):
                fallback_id = f"{source['doc_id']}:{line_no}"
                if not line.strip():
                    continue  # blank separator lines are not documents
                if len(line) > self.cfg.max_document_bytes:
                    yield _document(fallback_id, path, text=None, raw_hash=None, size=len(line),
                                    reject=(REJECT_TOO_LARGE, f"line {line_no}: {len(line)} bytes > "
                                                              f"max_document_bytes {self.cfg.max_document_bytes}"))
                    continue
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
        if self.cfg.text_column not in columns:
            yield _document(source["doc_id"], path, text=None, raw_hash=None, size=source["size_bytes"] or 0,
                            reject=(REJECT_BAD_RECORD, f"no text column {self.cfg.text_column!r} in this Parquet file "
                                                       f"(columns: {', '.join(parquet.schema_arrow.names)}); "
                                                       "set input.text_column"))
            return
        row_number = 0
        for record_batch in parquet.iter_batches(columns=columns, batch_size=_ROWS_PER_OUTPUT_BATCH):
            for record in record_batch.to_pylist():
                yield self._record_document(f"{source['doc_id']}:{row_number}", path, record)
                row_number += 1


def read_sources(batch: pa.Table, *, input_cfg: InputConfig, only_docs: frozenset[str] | None = None):
    """`ReadSources` as a Ray task (reading holds no model, so no actor). It lives here, not in the
    pipeline, so a task worker imports only this module, not the whole job with torch and lancedb."""
    yield from ReadSources(input_cfg, only_docs)(batch)
