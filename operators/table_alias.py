"""Which physical tables a table name stands for, and the atomic switch between them.

`sink.table` is the name users and readers know. Until the first `babelray reembed` it
is the table itself. A re-embedding builds `<table>--<fingerprint>` (and its rejects
table) while readers keep using the old one, then writes the pointer file
`<sink.uri>/_aliases/<table>.json` naming the new pair and, in `previous`, the ones
before it; `babelray rollback` points back. A pointer file is replaced whole (rename
on a local disk, one PUT on an object store), so a reader sees the old or the new
pair, never a mix. Old tables are kept until someone drops them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs

from babelray.config import SinkConfig

ALIAS_FOLDER = "_aliases"


@dataclass(frozen=True)
class TableNames:
    chunks: str
    rejects: str


def _alias_location(cfg: SinkConfig) -> tuple[pafs.FileSystem, str]:
    uri = f"{cfg.uri.rstrip('/')}/{ALIAS_FOLDER}/{cfg.table}.json"
    if "://" not in uri:
        uri = str(Path(uri).absolute())
    return pafs.FileSystem.from_uri(uri)


def read_alias(cfg: SinkConfig) -> dict | None:
    fs, path = _alias_location(cfg)
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


def resolve_tables(cfg: SinkConfig) -> TableNames:
    """The tables `sink.table` stands for now."""
    alias = read_alias(cfg)
    if alias is None:
        return TableNames(cfg.table, cfg.rejects_table)
    return TableNames(**alias["current"])


def versioned_names(cfg: SinkConfig, fingerprint: str) -> TableNames:
    """Where a re-embedding with this config fingerprint builds its tables."""
    return TableNames(f"{cfg.table}--{fingerprint}", f"{cfg.rejects_table}--{fingerprint}")


def _write_alias(cfg: SinkConfig, alias: dict) -> None:
    fs, path = _alias_location(cfg)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    body = (json.dumps(alias, indent=2) + "\n").encode()
    if isinstance(fs, pafs.LocalFileSystem):
        temporary = f"{path}.{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}.tmp"
        with fs.open_output_stream(temporary) as stream:
            stream.write(body)
        fs.move(temporary, path)  # rename: atomic on one file system
    else:
        with fs.open_output_stream(path) as stream:  # an object PUT is atomic
            stream.write(body)


def switch_to(cfg: SinkConfig, names: TableNames, run_id: str) -> dict:
    """Point `sink.table` at `names`; the tables it pointed at become the first rollback target."""
    current = resolve_tables(cfg)
    alias = read_alias(cfg) or {"previous": []}
    previous = [entry for entry in [asdict(current), *alias["previous"]] if entry != asdict(names)]
    alias = {"current": asdict(names), "previous": previous,
             "switched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": run_id}
    _write_alias(cfg, alias)
    return alias


def roll_back(cfg: SinkConfig) -> dict:
    """Point `sink.table` at the tables it pointed at before the last switch."""
    alias = read_alias(cfg)
    if not alias or not alias["previous"]:
        raise ValueError(f"table {cfg.table!r} in {cfg.uri} has no earlier version to roll back to")
    back, *rest = alias["previous"]
    alias = {"current": back, "previous": [alias["current"], *rest],
             "switched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": "rollback"}
    _write_alias(cfg, alias)
    return alias
