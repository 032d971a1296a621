"""`babelray` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from babelray.config import DURATION, Config, ConfigError, load_config, load_drift_config
from operators.table_lock import TableLocked, table_lock  # stdlib only: keeps the CLI fast to start


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

    result = run_ingest(cfg, dry_run=args.dry_run, prune=args.prune)
    if args.dry_run:
        print(result)
        return 0
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_summary(result))
    return 0


def _reembed(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), args.input, args.table)
    from operators.summary import format_summary
    from pipelines.ingest import reembed

    result = reembed(cfg)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_summary(result))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), None, args.table)
    from operators.table_alias import roll_back

    with table_lock(cfg.sink, "rollback"):  # not under a run that is writing or switching the table
        alias = roll_back(cfg.sink)
    print(f"{cfg.sink.table} -> {alias['current']['chunks']} (rejects: {alias['current']['rejects']}); "
          f"`babelray rollback` again returns to {alias['previous'][0]['chunks']}")
    return 0


def _drift(args: argparse.Namespace) -> int:
    drift, cfg = load_drift_config(args.config)
    if args.table:
        cfg = apply_overrides(cfg, None, args.table)
    from pipelines.drift import run_drift, run_every

    if args.every:
        try:
            run_every(drift, cfg, args.every)
        except KeyboardInterrupt:  # how a loop in a terminal ends
            pass
        return 0
    result = run_drift(drift, cfg, save_baseline=args.save_baseline)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        print(open(result["files"]["markdown"], encoding="utf-8").read())
        print("\n".join(f"wrote {path}" for path in result["files"].values()))
    return result["run"]["exit_code"]


def _submit(args: argparse.Namespace) -> int:
    from babelray import submit

    job = submit.build_submission(args.job, args.config, working_dir=args.working_dir, pip=not args.no_pip,
                                  entrypoint_num_cpus=args.entrypoint_num_cpus,
                                  entrypoint_num_gpus=args.entrypoint_num_gpus,
                                  entrypoint_memory_gb=args.entrypoint_memory_gb, table=args.table,
                                  extra_args=args.job_args)
    if args.dry_run:
        print(json.dumps({"entrypoint": job.entrypoint, "submission_id": job.submission_id,
                          "runtime_env": job.runtime_env, "metadata": job.metadata,
                          "entrypoint_num_cpus": job.entrypoint_num_cpus,
                          "entrypoint_num_gpus": job.entrypoint_num_gpus,
                          "entrypoint_memory": job.entrypoint_memory}, indent=2))
        return 0
    if not args.address:
        raise ValueError("babelray submit: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    try:
        client = submit.connect(args.address, submit.read_token(args.token_file))
        submission_id = submit.submit(client, job)
    except submit.SubmitError as err:
        print(f"babelray: {err}", file=sys.stderr)
        return submit.EXIT_REFUSED
    print(f"submitted {submission_id}: {job.entrypoint}", file=sys.stderr)
    if not args.follow:
        print(f"follow it with: ray job logs --address {args.address} --follow {submission_id} "
              f"(the token from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, with RAY_AUTH_MODE=token)", file=sys.stderr)
        print(submission_id)
        return 0
    try:
        code = submit.follow(client, submission_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (ray job stop --address {args.address} {submission_id})",
              file=sys.stderr)
        return 130
    status = client.get_job_status(submission_id)
    print(f"job {submission_id}: {status}, exit code {code}", file=sys.stderr)
    return code


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


def _eval(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    from pipelines.evaluate import SUITES, EvalOptions, run_eval

    options = EvalOptions(
        suites=tuple(args.suites.split(",")) if args.suites else SUITES,
        mrl_dims=[int(d) for d in args.dims.split(",")] if args.dims else EvalOptions().mrl_dims,
        tatoeba_pairs=args.tatoeba_pairs or None, lid_lines=args.lid_lines or None,
        keep_work=args.keep_work, config_path=args.config,
    )
    results = run_eval(cfg, args.data, args.out, options)
    print(open(results["files"]["markdown"], encoding="utf-8").read())
    print("\n".join(f"wrote {path}" for path in results["files"].values()))
    return 0


TABLE_HELP = "override the table: a name, or <db uri>/<name>"


def _duration(text: str) -> str:
    if not re.match(DURATION, text):
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number and s, m, h or d, e.g. 6h")
    return text


def _table_command(commands, name: str, help: str, handler, config_help: str | None = None):
    """A subcommand that takes a config and may override the table."""
    command = commands.add_parser(name, help=help)
    command.add_argument("--config", required=True, help=config_help)
    command.add_argument("--table", help=TABLE_HELP)
    command.set_defaults(handler=handler)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="babelray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="ingest documents into the vector table")
    run.add_argument("--config", required=True, help="YAML config (see docs/config.md)")
    run.add_argument("--input", help="override input.paths with one folder, .jsonl or .parquet")
    run.add_argument("--table", help=TABLE_HELP)
    run.add_argument("--dry-run", action="store_true", help="print the plan, start no work")
    run.add_argument("--prune", action="store_true",
                     help="the input is the complete source: delete documents the table has but the input lacks")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(handler=_run)

    reembed = _table_command(commands, "reembed", "build the table anew with this config's model/prompts/chunking, "
                             "then switch to it", _reembed, "the new config; its input must be the complete source")
    reembed.add_argument("--input", help="override input.paths with one folder, .jsonl or .parquet")
    reembed.add_argument("--json", action="store_true", help="print the summary as JSON")

    _table_command(commands, "rollback", "point the table back at the version before the last reembed", _rollback)

    search = _table_command(commands, "search", "query the table (vector, full-text or hybrid)", _search)
    search.add_argument("query")
    search.add_argument("--mode", choices=["vector", "fts", "hybrid"], default="vector")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--lang", help="only chunks in this language (ISO 639-1, or 'code')")
    search.add_argument("--json", action="store_true", help="print the results as JSON")

    drift = _table_command(commands, "drift", "vector-distribution drift of the table: history, report, exit 4 "
                           "on an alert", _drift, "drift config (see docs/drift.md); it names the ingest config")
    once_or_loop = drift.add_mutually_exclusive_group()
    once_or_loop.add_argument("--save-baseline", action="store_true",
                              help="sample the whole table as the reference of window.split: baseline (and accept it)")
    once_or_loop.add_argument("--every", type=_duration, help="run forever, one run per period (e.g. 6h, 30m)")
    drift.add_argument("--json", action="store_true", help="print the report as JSON")

    submit = commands.add_parser("submit", help="run `run`, `reembed` or `drift` on a Ray cluster through the Jobs "
                                 "API; arguments after -- go to that command")
    submit.add_argument("job", choices=["run", "reembed", "drift"], help="the babelray command the job runs")
    submit.add_argument("--config", required=True, help="config inside the working directory (it is uploaded)")
    submit.add_argument("--table", help=TABLE_HELP + "; on a cluster, an object store URI or an absolute path "
                        "every node shares")
    submit.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    submit.add_argument("--token-file", help="Ray auth token file (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, "
                        "~/.ray/auth_token)")
    submit.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's exit code")
    submit.add_argument("--no-pip", action="store_true",
                        help="no pinned requirements: the cluster's image has the project's dependencies")
    submit.add_argument("--working-dir", help="folder to upload (default: this checkout)")
    submit.add_argument("--entrypoint-num-cpus", type=float, default=0,
                        help="CPUs reserved for the driver (default 0: it runs on the head node)")
    submit.add_argument("--entrypoint-num-gpus", type=float, default=0)
    submit.add_argument("--entrypoint-memory-gb", type=float, help="memory reserved for the driver")
    submit.add_argument("--dry-run", action="store_true", help="print the submission, send nothing")
    submit.set_defaults(handler=_submit)

    _table_command(commands, "index", "build full-text indexes, and the ANN index once it pays off", _index)

    evaluate = commands.add_parser("eval", help="retrieval quality on public data: Markdown report + PNG")
    evaluate.add_argument("--config", required=True, help="model, prompts, chunking and routing to measure")
    evaluate.add_argument("--data", required=True, help="evaluation data folder (xquad/, tatoeba/, lid/, docs_fastapi/)")
    evaluate.add_argument("--out", default="eval-report", help="folder for report.md, eval.png, results.json")
    evaluate.add_argument("--suites", help="comma-separated subset of xquad,tatoeba,language_id,fastapi")
    evaluate.add_argument("--dims", help="MRL sizes to compare with the table's, e.g. 256,128,64")
    evaluate.add_argument("--tatoeba-pairs", type=int, default=100,
                          help="pairs per language (candidates per search); 0 = all (up to 1000, as published)")
    evaluate.add_argument("--lid-lines", type=int, default=0, help="lines per language; 0 = all")
    evaluate.add_argument("--keep-work", action="store_true", help="keep the scratch tables (path in results.json)")
    evaluate.set_defaults(handler=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `babelray submit run --config F -- --prune`: what follows -- is for the submitted command.
    job_args = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if job_args and args.command != "submit":
        parser.error("arguments after -- are for `babelray submit` only")
    args.job_args = job_args
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
    except TableLocked as err:
        print(f"babelray: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
