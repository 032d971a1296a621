"""Two-sample drift statistics over sampled vectors (rows are unit-norm float32 vectors).

Each function takes the reference sample and the current sample and returns a value that
is about 0 (or 0.5 for the AUC) when both come from one distribution. They are the standard
tests, each catching what the others miss: a moved mean (centroid shift), any difference of
distributions (MMD), a shift confined to some coordinates (per-dimension KS), and a
difference a linear model can find (domain-classifier AUC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class TestResult:
    value: float
    p_value: float | None = None
    detail: dict | None = None


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance between the rows of a and b (broadcast)."""
    dots = np.sum(a * b, axis=-1)
    return 1.0 - dots / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def centroid_shift(reference: np.ndarray, current: np.ndarray, *, bootstraps: int, alpha: float,
                   rng: np.random.Generator) -> TestResult:
    """Cosine distance between the window means, as a ratio to its (1 - alpha) quantile when
    there is no drift: that quantile comes from pairs of bootstrap draws of the reference with
    the windows' sizes, so it carries the sampling noise of both means."""
    reference, current = reference.astype(np.float64), current.astype(np.float64)
    observed = float(_cosine_distance(reference.mean(0), current.mean(0)))
    n_ref, n_cur = len(reference), len(current)
    # A bootstrap mean is counts @ rows / n: one matrix product for all draws.
    counts_ref = rng.multinomial(n_ref, np.full(n_ref, 1 / n_ref), size=bootstraps)
    counts_cur = rng.multinomial(n_cur, np.full(n_ref, 1 / n_ref), size=bootstraps)
    null = _cosine_distance(counts_ref @ reference / n_ref, counts_cur @ reference / n_cur)
    threshold = float(np.quantile(null, 1 - alpha))
    return TestResult(observed / max(threshold, 1e-12), None,
                      {"cosine_distance": observed, "null_quantile": threshold})


def mmd2_rbf(reference: np.ndarray, current: np.ndarray, *, max_rows: int, permutations: int,
             rng: np.random.Generator) -> TestResult:
    """Unbiased MMD^2 with a Gaussian kernel whose width is the median pairwise distance,
    and its permutation-test p-value (Gretton et al., 2012)."""
    reference = reference[rng.permutation(len(reference))[:max_rows]].astype(np.float64)
    current = current[rng.permutation(len(current))[:max_rows]].astype(np.float64)
    pooled = np.vstack([reference, current])
    squared = np.sum(pooled ** 2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0)
    upper = distances[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-distances / bandwidth)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimator leaves out k(x, x)

    def statistic(is_current: np.ndarray) -> float:
        x, y = ~is_current, is_current
        n_x, n_y = x.sum(), y.sum()
        k_x = kernel @ x
        k_y = kernel @ y
        return float(k_x[x].sum() / (n_x * (n_x - 1)) + k_y[y].sum() / (n_y * (n_y - 1))
                     - 2 * k_y[x].sum() / (n_x * n_y))

    labels = np.r_[np.zeros(len(reference), bool), np.ones(len(current), bool)]
    observed = statistic(labels)
    exceed = sum(statistic(rng.permutation(labels)) >= observed for _ in range(permutations))
    return TestResult(observed, (1 + exceed) / (1 + permutations), {"bandwidth": bandwidth,
                                                                    "rows": [len(reference), len(current)]})


def drifted_dimension_share(reference: np.ndarray, current: np.ndarray, *, alpha: float) -> TestResult:
    """Share of dimensions whose two-sample Kolmogorov-Smirnov test rejects, with the
    Benjamini-Hochberg procedure keeping the false-discovery rate at alpha."""
    p_values = scipy_stats.ks_2samp(reference, current, axis=0).pvalue
    rejected = scipy_stats.false_discovery_control(p_values, method="bh") < alpha
    return TestResult(float(rejected.mean()), float(p_values.min()),
                      {"dimensions": int(rejected.sum()), "of": int(len(rejected))})


def domain_classifier_auc(reference: np.ndarray, current: np.ndarray, *, seed: int, folds: int = 5) -> TestResult:
    """Cross-validated ROC AUC of a logistic regression that tells current rows from reference
    rows: 0.5 when it cannot, 1.0 when the windows are apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    features = np.vstack([reference, current])
    labels = np.r_[np.zeros(len(reference), int), np.ones(len(current), int)]
    folds = min(folds, len(reference), len(current))
    model = LogisticRegression(C=1.0, max_iter=2000)
    scores = cross_val_predict(model, features, labels, method="decision_function",
                               cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return TestResult(float(roc_auc_score(labels, scores)), None, {"folds": folds})


def total_variation(reference_counts: dict[str, int], current_counts: dict[str, int]) -> TestResult:
    """Half the L1 distance between two categorical distributions (0 same shares, 1 disjoint), and
    the chi-square test of homogeneity's p-value: a few dozen rows differ in their shares by chance."""
    keys = sorted(set(reference_counts) | set(current_counts))
    ref = np.array([reference_counts.get(key, 0) for key in keys], float)
    cur = np.array([current_counts.get(key, 0) for key in keys], float)
    distance = 0.5 * np.abs(ref / ref.sum() - cur / cur.sum()).sum()
    p_value = float(scipy_stats.chi2_contingency(np.vstack([ref, cur])).pvalue) if len(keys) > 1 else 1.0
    return TestResult(float(distance), p_value, {"reference": reference_counts, "current": current_counts})
