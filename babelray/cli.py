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
