"""Reference and current window -> graded statistics, per slice (all rows, each language, each route)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from babelray.config import LOW_IS_BAD, Band, DriftConfig
from babelray.drift import statistics
from babelray.drift.windows import ALL, GroupSums, WindowSummary

OK, WARN, ALERT, SKIPPED, INFO = "ok", "warn", "alert", "skipped", "info"
SEVERITY = {SKIPPED: 0, INFO: 0, OK: 1, WARN: 2, ALERT: 3}
# The statistics of one window, graded on the current window (on the reference when nothing is new).
WINDOW_STATISTICS = ("raw_norm_cv", "consecutive_cosine_mean", "consecutive_cosine_min")
TWO_SAMPLE_STATISTICS = ("centroid_shift_ratio", "mmd2", "drifted_dimensions_share", "domain_classifier_auc")


@dataclass
class Statistic:
    group: str  # "all", "lang=de", "route=translate"
    name: str
    value: float | None
    status: str
    warn: float | None = None
    alert: float | None = None
    rows_reference: int = 0
    rows_current: int = 0
    p_value: float | None = None
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def grade(name: str, value: float | None, band: Band | None, significant: bool = True) -> str:
    """ok / warn / alert by the statistic's band; a value that is not significant is ok."""
    if value is None:
        return SKIPPED
    if band is None:
        return INFO
    low_is_bad = name in LOW_IS_BAD
    beyond = (lambda limit: value < limit) if low_is_bad else (lambda limit: value > limit)
    if significant and beyond(band.alert):
        return ALERT
    if significant and beyond(band.warn):
        return WARN
    return OK


def worst(statuses) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=OK)


def _group_name(kind: str, value: str) -> str:
    return ALL if kind == ALL else f"{kind}={value}"


def evaluate_windows(reference: WindowSummary, current: WindowSummary, drift: DriftConfig) -> list[Statistic]:
    thresholds, sample = drift.thresholds, drift.sample
    rng = np.random.default_rng(sample.seed)
    results: list[Statistic] = []
    groups = list(dict.fromkeys(reference.groups() + current.groups()))
    for kind, value in groups:
        group = _group_name(kind, value)
        ref_sums, cur_sums = reference.slice_sums(kind, value), current.slice_sums(kind, value)
        counts = {"rows_reference": ref_sums.rows if ref_sums else 0, "rows_current": cur_sums.rows if cur_sums else 0}

        def add(name, stat_value, p_value=None, detail=None, significant=True):
            band = thresholds.band(name)
            results.append(Statistic(group, name, stat_value, grade(name, stat_value, band, significant),
                                     band.warn if band else None, band.alert if band else None, **counts,
                                     p_value=p_value, detail=detail or {}))

        graded = cur_sums or ref_sums
        if graded is None:  # an empty table
            continue
        detail = {"window": "current" if cur_sums else "reference"}
        add("raw_norm_mean", graded.raw_norm_mean, detail=detail)
        if kind != ALL and graded.rows < sample.min_rows:
            # A handful of rows (often consecutive across documents) says nothing about the model.
            reason = f"{graded.rows} rows; window statistics of a slice are graded from {sample.min_rows}"
            results.extend(Statistic(group, name, None, SKIPPED, **counts, detail={**detail, "reason": reason})
                           for name in WINDOW_STATISTICS)
        else:
            add("raw_norm_cv", graded.raw_norm_cv, detail=detail)
            add("consecutive_cosine_mean", graded.consecutive_cosine_mean, detail=detail)
            add("consecutive_cosine_min", graded.pair_cosine_min, detail=detail)
        if ref_sums and cur_sums:
            add("raw_norm_mean_change", abs(cur_sums.raw_norm_mean / ref_sums.raw_norm_mean - 1))
        if kind == ALL and ref_sums and cur_sums:
            mix = statistics.total_variation(reference.counts(0), current.counts(0))
            add("language_mix_distance", mix.value, p_value=mix.p_value, detail=mix.detail,
                significant=mix.p_value < thresholds.alpha)
            new_models = sorted(cur_sums.models - ref_sums.models)
            add("new_models", float(len(new_models)), detail={"new": new_models, "reference": sorted(ref_sums.models)})
        if kind == ALL:
            ref_vectors, cur_vectors, mix_note = matched_mix(reference, current, sample.min_rows)
        else:
            ref_vectors, cur_vectors = (reference.slice_sample(kind, value).vectors,
                                        current.slice_sample(kind, value).vectors)
            mix_note = None
        tests = _two_sample(group, ref_vectors, cur_vectors, counts, drift, rng)
        for stat in tests:
            stat.detail["mix"] = mix_note
        results.extend(tests)
    return results


def matched_mix(reference: WindowSummary, current: WindowSummary, min_rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The `all` samples with the reference drawn in the current window's (lang, route) proportions.
    Which languages arrive is `language_mix_distance`'s question; this way the two-sample tests of
    `all` ask only whether the vectors moved, and a batch of one language is not drift by itself.
    Current rows of a group the reference lacks cannot be matched and are left out (the mix
    statistic sees them); when matching leaves too few rows, the plain samples are compared."""
    ref_all, cur_all = reference.slice_sample(ALL, ALL).vectors, current.slice_sample(ALL, ALL).vectors
    cur_groups = {group: current.samples[group] for group in current.samples if len(current.samples[group])}
    shared = {group: sample for group, sample in cur_groups.items() if len(reference.samples.get(group, ()))}
    matched_rows = sum(len(sample) for sample in shared.values())
    if not matched_rows:
        return ref_all, cur_all, "unmatched: the windows share no language/route group"
    shares = {group: len(sample) / matched_rows for group, sample in shared.items()}
    size = min([len(ref_all)] + [len(reference.samples[group]) / share for group, share in shares.items()])
    if size < min_rows:
        return ref_all, cur_all, f"unmatched: matching the mix would leave {int(size)} reference rows"
    # Each group's sample is its bottom-k by hash, so its first rows are a uniform draw of it.
    ref = np.concatenate([reference.samples[group].vectors[:max(1, round(share * size))]
                          for group, share in shares.items()])
    cur = np.concatenate([sample.vectors for sample in shared.values()])
    left_out = sum(len(sample) for sample in cur_groups.values()) - matched_rows
    return ref, cur, f"reference drawn in the current mix ({len(ref)} rows); {left_out} current rows unmatched"


def _two_sample(group: str, ref: np.ndarray, cur: np.ndarray, counts: dict, drift: DriftConfig,
                rng: np.random.Generator) -> list[Statistic]:
    thresholds, sample = drift.thresholds, drift.sample
    if min(len(ref), len(cur)) < sample.min_rows:
        reason = (f"{len(ref)} reference and {len(cur)} current rows sampled; the tests need "
                  f"{sample.min_rows} in each")
        return [Statistic(group, name, None, SKIPPED, **counts, detail={"reason": reason})
                for name in TWO_SAMPLE_STATISTICS] if counts["rows_current"] else []
    alpha = thresholds.alpha
    tests = {
        "centroid_shift_ratio": statistics.centroid_shift(ref, cur, bootstraps=sample.bootstraps, alpha=alpha, rng=rng),
        "mmd2": statistics.mmd2_rbf(ref, cur, max_rows=sample.kernel_rows, permutations=sample.permutations, rng=rng),
        "drifted_dimensions_share": statistics.drifted_dimension_share(ref, cur, alpha=alpha),
        "domain_classifier_auc": statistics.domain_classifier_auc(ref, cur, seed=sample.seed),
    }
    out = []
    for name, result in tests.items():
        band = thresholds.band(name)
        significant = name != "mmd2" or result.p_value < alpha  # a large MMD^2 counts once it is significant
        out.append(Statistic(group, name, result.value, grade(name, result.value, band, significant), band.warn,
                             band.alert, **counts, p_value=result.p_value,
                             detail={**(result.detail or {}), "sampled": [len(ref), len(cur)]}))
    return out


def window_sums_detail(summary: WindowSummary) -> dict:
    return {f"{lang}|{route}": sums.as_dict() for (lang, route), sums in summary.sums.items()}


def sums_from_detail(detail: dict) -> dict[tuple[str, str], GroupSums]:
    return {tuple(key.split("|", 1)): GroupSums.from_dict(value) for key, value in detail.items()}
