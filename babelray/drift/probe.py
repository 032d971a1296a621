"""Cross-lingual probe: fixed parallel sentences embedded with the table's model on every run.

Two numbers come out. Alignment: the mean cosine between translations of one sentence; a
model, dtype or serving change that breaks cross-lingual alignment lowers it. Stability:
the cosine of each sentence's vector now with the same sentence's vector in the reference
run; the same model on the same text gives 1 (0.99+ across hardware), so a model that
changed under the same name shows up even when no document changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from babelray.config import DriftThresholds, EmbeddingConfig
from babelray.drift.evaluate import ALL, Statistic, grade

BUILT_IN = Path(__file__).with_name("probe_sentences.json")


@dataclass(frozen=True)
class ProbeVectors:
    ids: list[str]
    langs: list[str]
    texts: list[str]
    vectors: np.ndarray  # (n, dimensions), unit norm

    def by_key(self) -> dict[tuple[str, str, str], np.ndarray]:
        return {key: vector for key, vector in zip(zip(self.ids, self.langs, self.texts), self.vectors)}


def load_sentences(path: str | None) -> dict[str, dict[str, str]]:
    """{sentence id: {lang: text}}; a sentence needs at least two languages."""
    data = json.loads((Path(path) if path else BUILT_IN).read_text(encoding="utf-8"))
    sentences = {key: value for key, value in data.items() if not key.startswith("_")}
    bad = [key for key, value in sentences.items() if not isinstance(value, dict) or len(value) < 2]
    if bad or not sentences:
        raise ValueError(f"probe sentences {path or BUILT_IN}: each id needs a {{lang: text}} object with two or "
                         f"more languages (bad: {bad[:5]})")
    return sentences


def embed_probe(cfg: EmbeddingConfig, sentences: dict[str, dict[str, str]], has_gpus: bool) -> ProbeVectors:
    """Embed as documents with the table's model, in a Ray task that gets a GPU where the
    embedding stage would (the driver of a cluster job usually has none)."""
    import ray

    rows = [(sentence_id, lang, text) for sentence_id, texts in sentences.items() for lang, text in texts.items()]
    num_gpus = cfg.resources.num_gpus
    num_gpus = (1 if has_gpus else 0) if num_gpus == "auto" else num_gpus
    task = ray.remote(num_cpus=max(cfg.resources.num_cpus, 1), num_gpus=num_gpus, max_retries=1)(_embed)
    vectors = ray.get(task.remote(cfg, [text for _, _, text in rows]))
    return ProbeVectors([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], vectors)


def _embed(cfg: EmbeddingConfig, texts: list[str]) -> np.ndarray:
    from babelray.embedding_model import EmbeddingModel

    return EmbeddingModel(cfg).embed(texts, truncate=True).vectors


def alignment(probe: ProbeVectors) -> tuple[float, dict[str, float]]:
    """Mean cosine over all pairs of translations of a sentence; and per language, with English."""
    by_id: dict[str, dict[str, np.ndarray]] = {}
    for sentence_id, lang, vector in zip(probe.ids, probe.langs, probe.vectors):
        by_id.setdefault(sentence_id, {})[lang] = vector
    pairs = [float(a @ b) for vectors in by_id.values() for a, b in combinations(vectors.values(), 2)]
    per_lang: dict[str, list[float]] = {}
    for vectors in by_id.values():
        if "en" in vectors:
            for lang, vector in vectors.items():
                if lang != "en":
                    per_lang.setdefault(lang, []).append(float(vector @ vectors["en"]))
    return float(np.mean(pairs)), {lang: float(np.mean(values)) for lang, values in sorted(per_lang.items())}


def probe_statistics(now: ProbeVectors, reference: ProbeVectors | None, thresholds: DriftThresholds,
                     reference_run: str | None) -> list[Statistic]:
    mean_now, per_lang = alignment(now)
    detail = {"sentences": len(set(now.ids)), "vectors": len(now.ids), "reference_run": reference_run}
    out = [Statistic(ALL, "probe_alignment", mean_now, grade("probe_alignment", mean_now, None), detail=detail)]
    out += [Statistic(f"probe:{lang}", "probe_alignment", value, grade("probe_alignment", value, None),
                      detail={"with": "en"}) for lang, value in per_lang.items()]
    if reference is None:
        return out
    drop = alignment(reference)[0] - mean_now
    band = thresholds.probe_alignment_drop
    out.append(Statistic(ALL, "probe_alignment_drop", drop, grade("probe_alignment_drop", drop, band), band.warn,
                         band.alert, detail=detail))
    before = reference.by_key()
    shared = [(vector, before[key]) for key, vector in now.by_key().items() if key in before]
    if not shared:
        stability, note = None, "no probe sentence in common with the reference run"
    elif shared[0][0].shape != shared[0][1].shape:
        stability, note = 0.0, f"dimensions changed: {shared[0][1].shape[0]} -> {shared[0][0].shape[0]}"
    else:
        stability, note = float(np.mean([a @ b for a, b in shared])), f"{len(shared)} vectors compared"
    band = thresholds.probe_stability
    out.append(Statistic(ALL, "probe_stability", stability, grade("probe_stability", stability, band), band.warn,
                         band.alert, detail={**detail, "note": note}))
    return out
