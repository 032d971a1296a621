"""The eval report: Markdown tables, one PNG of charts, and results.json."""

from __future__ import annotations

import json
from pathlib import Path

from babelray.evaluation.metrics import METRIC_NAMES as METRICS


def _table(headers: list[str], rows: list[list]) -> list[str]:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.1f}"
        return "" if value is None else str(value)

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows], ""]


def render_markdown(results: dict) -> str:
    run = results["run"]
    lines = ["# babelray evaluation", "",
             f"- model: `{run['model']}` (revision {run['model_revision'] or 'n/a'}), {run['dimensions']} of "
             f"{run['full_dimensions']} dimensions, pooling {run['pooling']}, device {run['device']}"
             f"{', ' + run['dtype'] if run.get('dtype') else ''}",
             f"- document prompt: `{run['document_prompt']!r}`; query prompt: `{run['query_prompt']!r}`",
             f"- config: `{run['config']}` (fingerprint {run['fingerprint']}); babelray {run['babelray_version']}"
             f" at commit {run['code_commit'] or 'n/a'}",
             f"- data: `{run['data']}`; files fingerprint {run['data_fingerprint']}; sources and commits in the"
             " data folder's README",
             f"- wall time: {run['wall_seconds']:.0f} s on {run['cpus']} CPUs "
             f"({', '.join(f'{name} {s:.0f} s' for name, s in run['suite_seconds'].items())})", ""]

    if xquad := results.get("xquad"):
        ingest = xquad["ingest"]
        lines += ["## XQuAD: question in any language -> English paragraph", "",
                  f"{ingest['documents_embedded']} passages -> {ingest['chunks']} chunks through `babelray run`'s "
                  "pipeline; questions through the search path (language ID, routing, query prompt, exact "
                  "vector search). Percent.", ""]
        lines += _table(["lang", "queries", *METRICS, "query lang-ID correct", "translated"],
                        [[r["lang"], r["queries"], *(r[m] for m in METRICS), r["query_langid"], r["translated"]]
                         for r in xquad["rows"]] + [["**average**", "", *(xquad["average"][m] for m in METRICS),
                                                     "", ""]])
        instruction = xquad["instruction"]
        lines += ["### Ablation: query instruction", "",
                  f"With the query prompt `{instruction['query_prompt']!r}` vs none (documents keep theirs).", ""]
        by_lang = {r["lang"]: r for r in instruction["rows"]}
        lines += _table(["lang", "R@5 with", "R@5 without", "nDCG@10 with", "nDCG@10 without"],
                        [[r["lang"], r["R@5"], by_lang[r["lang"]]["R@5"], r["nDCG@10"], by_lang[r["lang"]]["nDCG@10"]]
                         for r in xquad["rows"]]
                        + [["**average**", xquad["average"]["R@5"], instruction["average"]["R@5"],
                            xquad["average"]["nDCG@10"], instruction["average"]["nDCG@10"]]])
        lines += ["### Ablation: MRL dimensions", "",
                  "Stored vectors and query vectors truncated and renormalised (the embed stage's own step), "
                  "exact search; change relative to the table's size, averaged over languages. The published "
                  "Qwen3-Embedding-4B figures for comparison: 1024 of 2560 dims ~60% less storage for <1.5% "
                  "MTEB loss, 512 ~80% / ~2.8%, 256 ~90% / ~4.5%. A model not trained with MRL loses more.", ""]
        lines += _table(["dims", "storage saved %", "R@5", "R@5 change %", "nDCG@10", "nDCG@10 change %"],
                        [[r["dims"], r["storage_saved"], r["R@5"], r["R@5_change"], r["nDCG@10"],
                          r["nDCG@10_change"]] for r in xquad["mrl"]])
        if xquad["translate_vs_direct"]:
            lines += ["### Ablation: translate-first vs direct", ""]
            lines += _table(["lang", "direct R@5", "translated R@5", "change (points)", "queries translated"],
                            [[r["lang"], r["direct_R@5"], r["translated_R@5"], r["change"], r["queries_translated"]]
                             for r in xquad["translate_vs_direct"]])
        lines += [f"- {note}" for note in xquad["notes"]] + ([""] if xquad["notes"] else [])

    if tatoeba := results.get("tatoeba"):
        lines += ["## Tatoeba bitext mining", "",
                  f"Nearest neighbour among the language's first {tatoeba['max_pairs'] or 'all'} pairs, both "
                  f"sides with the prompt `{tatoeba['prompt']!r}`. Accuracy in percent. **Bold**: languages this "
                  "config routes to translation (not in `routing.direct_languages`): the low-resource side.", ""]
        lines += _table(["group", "languages", "xx->en", "en->xx"],
                        [[name, g["languages"], g["xx->en"], g["en->xx"]] for name, g in tatoeba["groups"].items()])
        lines += _table(["lang", "ISO 639-1", "pairs", "xx->en", "en->xx"],
                        [[f"**{r['lang']}**" if r["routed"] else r["lang"], r["iso639_1"], r["pairs"],
                          r["xx->en"], r["en->xx"]] for r in sorted(tatoeba["rows"], key=lambda r: r["xx->en"])])

    if lid := results.get("language_id"):
        lines += ["## Language ID (fastText lid.176 as configured)", "",
                  f"Accuracy per language on whole lines and on their first {lid['short_words']} words, percent. "
                  f"Average: {lid['average']['full']:.1f} whole, {lid['average']['short']:.1f} short.", ""]
        lines += _table(["lang", "lines", "whole", "short", "most common error (whole)"],
                        [[r["lang"], r["lines"], r["full"], r["short"], r["top_error"]]
                         for r in sorted(lid["rows"], key=lambda r: r["full"])])
        lines += ["Most frequent confusions:", ""]
        lines += _table(["input", "true", "predicted", "count"],
                        [[c["input"], c["true"], c["predicted"], c["count"]] for c in lid["confusions"]])
        lines += ["Chinese / Japanese:", ""]
        lines += _table(["input", "true", "predicted", "count"],
                        [[c["input"], c["true"], c["predicted"], c["count"]] for c in lid["cjk_confusions"]])

    if fastapi := results.get("fastapi"):
        ingest = fastapi["ingest"]
        lines += ["## FastAPI docs: translated page's first paragraph -> English page", "",
                  f"{ingest['documents_embedded']} English pages -> {ingest['chunks']} chunks (Markdown with code) "
                  "through the pipeline; a page ranks at its best chunk. Percent.", ""]
        lines += _table(["lang", "queries", *METRICS],
                        [[r["lang"], r["queries"], *(r[m] for m in METRICS)] for r in fastapi["rows"]]
                        + [["**average**", "", *(fastapi["average"][m] for m in METRICS)]])
    ann = (results.get("xquad") or {}).get("ann", []) + (results.get("fastapi") or {}).get("ann", [])
    if ann:
        lines += ["## ANN index vs exact search", "",
                  "Recall@10 of the ANN results against exact search (same chunks), and retrieval quality with "
                  "the index, over the XQuAD and FastAPI tables and queries. Indexes sized by LanceDB's "
                  "defaults for each table; IVF_PQ trains nothing below 256 rows, and unindexed rows are "
                  "searched exactly.", ""]
        lines += _table(["table", "index", "built", "recall@10 vs exact", "R@5", "nDCG@10", "ms/query"],
                        [[r["table"], r["index"], r["built"], r["recall@10_vs_exact"], r["ann_R@5"],
                          r["ann_nDCG@10"], r["ms_per_query"]] for r in ann])
    if "chart" in results:
        lines += [f"![charts]({results['chart']})", ""]
    return "\n".join(lines)


def render_chart(results: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in ("xquad", "mrl", "tatoeba", "language_id", "fastapi")
              if results.get("xquad" if name == "mrl" else name)]
    if not panels:
        return None
    columns = min(3, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(5.5 * columns, 4.4 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, panels):
        if name == "xquad":
            rows, bare = results["xquad"]["rows"], results["xquad"]["instruction"]["rows"]
            x = range(len(rows))
            ax.bar([i - 0.2 for i in x], [r["R@5"] for r in rows], 0.4, label="with query prompt")
            ax.bar([i + 0.2 for i in x], [r["R@5"] for r in bare], 0.4, label="without")
            ax.set_xticks(list(x), [r["lang"] for r in rows])
            ax.set_title("XQuAD R@5 (query lang -> en)")
            ax.legend(fontsize=8)
        elif name == "mrl":
            mrl = results["xquad"]["mrl"]
            ax.plot([r["dims"] for r in mrl], [r["R@5"] for r in mrl], marker="o")
            ax.set_xscale("log", base=2)
            ax.set_xticks([r["dims"] for r in mrl], [str(r["dims"]) for r in mrl])
            ax.set_xlabel("dimensions")
            ax.set_title("XQuAD R@5 by MRL size")
        elif name == "tatoeba":
            rows = sorted(results["tatoeba"]["rows"], key=lambda r: r["xx->en"])
            ax.bar(range(len(rows)), [r["xx->en"] for r in rows],
                   color=["tab:red" if r["routed"] else "tab:blue" for r in rows])
            ax.set_xticks(range(len(rows)), [r["lang"] for r in rows], rotation=90, fontsize=6)
            ax.set_title("Tatoeba xx->en (red: routed to translation)")
        elif name == "language_id":
            rows = sorted(results["language_id"]["rows"], key=lambda r: r["full"])
            ax.plot(range(len(rows)), [r["full"] for r in rows], label="whole line")
            ax.plot(range(len(rows)), [r["short"] for r in rows], label="first words")
            ax.set_xticks(range(len(rows)), [r["lang"] for r in rows], rotation=90, fontsize=5)
            ax.set_title("Language ID accuracy")
            ax.legend(fontsize=8)
        elif name == "fastapi":
            rows = results["fastapi"]["rows"]
            for offset, metric in ((-0.2, "R@1"), (0.2, "R@5")):
                ax.bar([i + offset for i in range(len(rows))], [r[metric] for r in rows], 0.4, label=metric)
            ax.set_xticks(range(len(rows)), [r["lang"] for r in rows])
            ax.set_title("FastAPI docs: page -> English page")
            ax.legend(fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    chart = render_chart(results, out / "eval.png")
    if chart is not None:
        results["chart"] = chart.name
    paths = {"markdown": out / "report.md", "json": out / "results.json"}
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if chart is not None:
        paths["chart"] = chart
    return paths
