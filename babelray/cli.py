"""`babelray` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from babelray.config import Config, ConfigError, load_config


def apply_overrides(cfg: Config, input_path: str | None, table: str | None) -> Config:
    """--input replaces input.paths; --table is a table name, or a URI whose last
    part is the table (`./data/lancedb/chunks`, `s3://bucket/db/chunks`)."""
    cfg = cfg.model_copy(deep=True)
    if input_path:
        cfg.input.paths = [input_path]
    if table:
        table = table.rstrip("/")
        if "/" in table:
            uri, name = table.rsplit("/", 1)
            cfg.sink.uri = uri
            cfg.sink.table = name.removesuffix(".lance")
        else:
            cfg.sink.table = table
    return cfg


def _run(args: argparse.Namespace) -> int:
    # Validate before importing Ray and the models: a bad config fails in a second.
    cfg = apply_overrides(load_config(args.config), args.input, args.table)
    from operators.summary import format_summary
    from pipelines.ingest import run_ingest

    result = run_ingest(cfg, dry_run=args.dry_run)
    if args.dry_run:
        print(result)
        return 0
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_summary(result))
    return 0


def _search(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), None, args.table)
    from pipelines.search import Searcher

    hits = Searcher(cfg).search(args.query, mode=args.mode, k=args.k, lang=args.lang)
    if args.json:
        print(json.dumps([hit.as_dict() for hit in hits], indent=2, ensure_ascii=False))
        return 0
    for rank, hit in enumerate(hits, start=1):
        lines = f"{hit.start_line}-{hit.end_line}" if hit.start_line else ""
        snippet = " ".join(hit.text.split())[:160]
        print(f"{rank:>2}. {hit.score:.4f}  {hit.doc_id}  {hit.doc_section or ''}  {lines}\n    {snippet}")
    return 0


def _index(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), None, args.table)
    from pipelines.search import build_indexes

    for line in build_indexes(cfg):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="babelray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="ingest documents into the vector table")
    run.add_argument("--config", required=True, help="YAML config (see docs/config.md)")
    run.add_argument("--input", help="override input.paths with one folder, .jsonl or .parquet")
    run.add_argument("--table", help="override the table: a name, or <db uri>/<name>")
    run.add_argument("--dry-run", action="store_true", help="print the plan, start no work")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(handler=_run)

    search = commands.add_parser("search", help="query the table (vector, full-text or hybrid)")
    search.add_argument("query")
    search.add_argument("--config", required=True)
    search.add_argument("--table", help="override the table: a name, or <db uri>/<name>")
    search.add_argument("--mode", choices=["vector", "fts", "hybrid"], default="vector")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--lang", help="only chunks in this language (ISO 639-1, or 'code')")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.set_defaults(handler=_search)

    index = commands.add_parser("index", help="build full-text indexes, and the ANN index once it pays off")
    index.add_argument("--config", required=True)
    index.add_argument("--table", help="override the table: a name, or <db uri>/<name>")
    index.set_defaults(handler=_index)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"babelray: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"babelray: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
