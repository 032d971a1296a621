"""The report folder of a drift run: report.json, report.md, history.png, projection.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from babelray.drift.evaluate import ALERT, SKIPPED, WARN

STATUS_COLORS = {"ok": "tab:green", "info": "tab:blue", "warn": "tab:orange", "alert": "tab:red",
                 "skipped": "tab:gray", "healthy": "tab:green", "baseline": "tab:blue"}


def _number(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_markdown(result: dict) -> str:
    run, stats = result["run"], result["statistics"]
    lines = [f"# Drift report: {run['status'].upper()}", "",
             f"- table `{run['table']}` (`{run['physical_table']}`) at version {run['table_version']}, "
             f"model `{run['model']}`, {run['dimensions']} dimensions",
             f"- split `{run['split']}`; reference: {run['reference']['description']} "
             f"({run['reference']['rows']} rows); current: {run['current']['description']} "
             f"({run['current']['rows']} rows)",
             f"- run {run['run_id']} at {run['run_at']}, {run['wall_seconds']:.1f} s; exit code {run['exit_code']}",
             ""]
    if run.get("note"):
        lines += [f"> {run['note']}", ""]
    flagged = [s for s in stats if s["status"] in (WARN, ALERT)]
    if flagged:
        lines += ["## Warnings and alerts", "", "| slice | statistic | value | warn | alert | p | status |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['group']} | {s['name']} | {_number(s['value'])} | {_number(s['warn'])} | "
                  f"{_number(s['alert'])} | {_number(s['p_value'])} | **{s['status']}** |" for s in flagged]
        lines.append("")
    lines += ["## All rows", "", "| statistic | value | warn | alert | p | status | rows ref / cur |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['name']} | {_number(s['value'])} | {_number(s['warn'])} | {_number(s['alert'])} | "
              f"{_number(s['p_value'])} | {s['status']} | {s['rows_reference']} / {s['rows_current']} |"
              for s in stats if s["group"] == "all"]
    slices = sorted({s["group"] for s in stats if s["group"].startswith(("lang=", "route="))})
    if slices:
        lines += ["", "## Slices", "", "Worst status per language / route slice (two-sample tests need "
                  "enough sampled rows in both windows).", "", "| slice | rows ref / cur | worst | tests skipped |",
                  "|---|---|---|---|"]
        for group in slices:
            rows = [s for s in stats if s["group"] == group]
            worst = max((s["status"] for s in rows), key=["skipped", "info", "ok", "warn", "alert"].index)
            skipped = sum(s["status"] == SKIPPED for s in rows)
            lines.append(f"| {group} | {rows[0]['rows_reference']} / {rows[0]['rows_current']} | {worst} | {skipped} |")
    if result.get("actions"):
        lines += ["", "## Actions", ""] + [f"- {action}" for action in result["actions"]]
    probe = [s for s in stats if s["group"].startswith("probe:")]
    if probe:
        lines += ["", "## Probe alignment per language (cosine with the English sentence)", "",
                  " ".join(f"{s['group'][6:]} {s['value']:.3f}" for s in probe)]
    lines += ["", "Plots: `history.png` (statistics over runs, with their bands), `projection.png` (sampled "
              "reference vs current vectors, first two principal components of the reference).", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_history(history, path: Path) -> None:
    """Each graded statistic of the `all` slice over the runs, with its warn/alert lines."""
    plt = _pyplot()
    frame = history.to_pandas() if history is not None else None
    names = [] if frame is None else [n for n in dict.fromkeys(frame["statistic"]) if n != "run"]
    columns = 3
    rows = max(1, -(-len(names) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    if names:  # one time axis for every panel, also for statistics a run could not compute
        pad = max((frame["run_at"].max() - frame["run_at"].min()) * 0.05, pd.Timedelta(minutes=1))
        span = (frame["run_at"].min() - pad, frame["run_at"].max() + pad)
    for axis, name in zip(axes.flat, names):
        axis.set_xlim(*span)
        part = frame[(frame["statistic"] == name) & frame["value"].notna()].sort_values("run_at")
        axis.plot(part["run_at"], part["value"], color="0.6", linewidth=1)
        axis.scatter(part["run_at"], part["value"], c=[STATUS_COLORS.get(s, "k") for s in part["status"]], s=18,
                     zorder=3)
        if len(part):
            last = part.iloc[-1]
            for level, style in (("warn", ":"), ("alert", "--")):
                if last[level] == last[level]:  # not NaN
                    axis.axhline(last[level], color=STATUS_COLORS[level], linestyle=style, linewidth=1)
        axis.set_title(name, fontsize=9)
        axis.tick_params(labelsize=7)
        for label in axis.get_xticklabels():
            label.set_rotation(30)
    figure.suptitle("drift statistics over runs (all rows); dotted = warn, dashed = alert", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def projection_axes(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Two axes that show drift: the direction from the reference mean to the current mean, and the
    reference's main direction of spread across it (plain PCA axes can miss a shift altogether)."""
    from sklearn.decomposition import PCA

    axes, labels = [], []
    if len(current):
        shift = current.mean(0) - reference.mean(0)
        if np.linalg.norm(shift) > 0:
            axes.append(shift / np.linalg.norm(shift))
            labels.append("reference mean -> current mean")
    remaining = reference - (reference @ axes[0])[:, None] * axes[0] if axes else reference
    for component in PCA(n_components=2 - len(axes), random_state=0).fit(remaining).components_:
        axes.append(component)
        labels.append(f"principal component {len(labels) + 1} of the reference" if not labels
                      else "main spread of the reference across it")
    return np.stack(axes, axis=1), labels


def plot_projection(reference: np.ndarray, current: np.ndarray, path: Path, title: str) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    if len(reference) >= 3:
        axes, labels = projection_axes(reference, current)
        axis.scatter(*(reference @ axes).T, s=6, alpha=0.4, label=f"reference ({len(reference)} sampled)")
        if len(current):
            axis.scatter(*(current @ axes).T, s=8, alpha=0.7, color="tab:red",
                         label=f"current ({len(current)} sampled)")
        axis.set_xlabel(labels[0], fontsize=8)
        axis.set_ylabel(labels[1], fontsize=8)
        axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(result: dict, folder: Path, history, reference: np.ndarray, current: np.ndarray) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": folder / "report.json", "markdown": folder / "report.md", "history_plot": folder / "history.png",
             "projection_plot": folder / "projection.png"}
    result["files"] = {name: str(path) for name, path in files.items()}
    files["json"].write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    files["markdown"].write_text(render_markdown(result), encoding="utf-8")
    plot_history(history, files["history_plot"])
    plot_projection(reference, current, files["projection_plot"],
                    f"{result['run']['table']} v{result['run']['table_version']}: {result['run']['status']}")
    return result["files"]
