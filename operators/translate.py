"""Translate stage: documents routed to `translate` become English (MarianMT / opus-mt).

`Translator` is the reusable part (the search side translates queries with it);
`TranslateDocuments` wraps it for a Ray actor pool.

How a document is translated without losing a sentence:
1. `segment()` covers the text exactly with pieces: fenced code blocks, Markdown
   line prefixes (`#`, `-`, `1.`, `>`) and all whitespace are kept verbatim; the
   rest is split into sentences (pysbd where it knows the language, a punctuation
   rule elsewhere).
2. `pack()` merges neighbouring sentences of one paragraph into model inputs of at
   most `max_input_tokens`; a longer sentence is cut at word (or character)
   boundaries until every input fits. Nothing is ever truncated.
3. Inputs of all documents that share a model are translated together, sorted by
   length in token-budget batches, and the output is reassembled in the original
   order; the span map (original span -> translated span) lets the chunk stage
   attach the original text of each chunk.

Model grouping: each actor keeps up to `max_models_per_actor` models loaded (LRU)
and translates a batch model by model, so a batch of mixed languages loads each
model at most once; the pipeline cannot know the languages before it reads them,
so one pool per model is not an option in a streaming run.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from babelray.config import TranslationConfig
from babelray.embedding_model import pick_device, token_budget_batches
from babelray.metrics import count, timed_stage
from operators.schema import (
    REJECT_TRANSLATION_ERROR,
    ROUTE_DIRECT_FALLBACK,
    ROUTE_TRANSLATE,
    TRANSLATION_FIELDS,
    TRANSLATION_SPANS,
    append_columns,
)

STAGE = "translate"
log = logging.getLogger(__name__)

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[ \t]*(?:\n|\Z)|\Z)", re.M | re.S)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_LINE_PREFIX = re.compile(r"[ \t]*(?:#{1,6}[ \t]+|[-*+][ \t]+|\d{1,3}[.)][ \t]+|>[ \t]*)")
_SENTENCE_END = re.compile(r"[.!?…。！？؟।][\"'”’»)\]]*(?=\s)|[。！？]")


class TranslationUnavailable(RuntimeError):
    """A model could not be loaded (not cached, no network, not a seq2seq model)."""


@dataclass(frozen=True)
class Piece:
    start: int
    end: int
    translate: bool


# ---------------------------------------------------------------- segmentation


def _sentence_spans(text: str, start: int, end: int, lang: str) -> list[tuple[int, int]]:
    """Sentence boundaries inside text[start:end], as spans that cover it exactly."""
    body = text[start:end]
    cuts: list[int] = []
    try:
        import pysbd
        from pysbd.languages import LANGUAGE_CODES

        if lang in LANGUAGE_CODES:
            spans = pysbd.Segmenter(language=lang, clean=False, char_span=True).segment(body)
            cuts = [span.start for span in spans[1:]]
    except ImportError:  # pysbd is optional; the punctuation rule below still works
        pass
    if not cuts:
        cuts = [match.end() for match in _SENTENCE_END.finditer(body)]
    bounds = [0] + sorted({cut for cut in cuts if 0 < cut < len(body)}) + [len(body)]
    return [(start + a, start + b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _content_pieces(text: str, start: int, end: int) -> list[Piece]:
    """Whitespace around a span stays verbatim; the content in between is translated."""
    content = text[start:end]
    stripped = content.strip()
    if not stripped:
        return [Piece(start, end, False)] if end > start else []
    lead = len(content) - len(content.lstrip())
    trail = len(content.rstrip())
    pieces = [Piece(start, start + lead, False)] if lead else []
    pieces.append(Piece(start + lead, start + trail, True))
    if start + trail < end:
        pieces.append(Piece(start + trail, end, False))
    return pieces


def _paragraph_pieces(text: str, start: int, end: int, lang: str) -> list[Piece]:
    lines = text[start:end].splitlines(keepends=True)
    has_prefix = any(_LINE_PREFIX.match(line) for line in lines)
    if not has_prefix:
        return [piece for a, b in _sentence_spans(text, start, end, lang) for piece in _content_pieces(text, a, b)]
    # Headings and list items: one item per line, its marker kept as it is.
    pieces, position = [], start
    for line in lines:
        line_end = position + len(line)
        marker = _LINE_PREFIX.match(line)
        body_start = position + (marker.end() if marker else 0)
        if body_start > position:
            pieces.append(Piece(position, body_start, False))
        for a, b in _sentence_spans(text, body_start, line_end, lang):
            pieces.extend(_content_pieces(text, a, b))
        position = line_end
    return pieces


def segment(text: str, lang: str) -> list[Piece]:
    """Pieces that cover `text` exactly, in order; code fences and whitespace untranslated."""
    pieces: list[Piece] = []

    def prose(start: int, end: int) -> None:
        position = start
        for brk in _PARAGRAPH_BREAK.finditer(text, start, end):
            pieces.extend(_paragraph_pieces(text, position, brk.start(), lang))
            pieces.append(Piece(brk.start(), brk.end(), False))
            position = brk.end()
        pieces.extend(_paragraph_pieces(text, position, end, lang))

    position = 0
    for fence in _FENCE.finditer(text):
        prose(position, fence.start())
        pieces.append(Piece(fence.start(), fence.end(), False))
        position = fence.end()
    prose(position, len(text))
    return [piece for piece in pieces if piece.end > piece.start]


def _split_to_fit(text: str, start: int, end: int, count, limit: int) -> list[tuple[int, int]]:
    """Cut an over-long span at the whitespace nearest its middle (between characters when it
    has none), recursively, until every part fits."""
    if end - start <= 1 or count(text[start:end]) <= limit:
        return [(start, end)]
    middle = (start + end) // 2
    spaces = [start + m.start() for m in re.finditer(r"\s", text[start:end]) if m.start() > 0]
    if spaces:
        middle = min(spaces, key=lambda position: abs(position - middle))
    return _split_to_fit(text, start, middle, count, limit) + _split_to_fit(text, middle, end, count, limit)


def pack(text: str, pieces: list[Piece], count, limit: int) -> list[Piece]:
    """Merge neighbouring sentences of one line or paragraph into inputs of at most `limit`
    tokens, and split pieces that are over it. Coverage and order are unchanged."""
    fitted: list[Piece] = []
    for piece in pieces:
        if piece.translate and count(text[piece.start:piece.end]) > limit:
            for a, b in _split_to_fit(text, piece.start, piece.end, count, limit):
                fitted.extend(_content_pieces(text, a, b))
        else:
            fitted.append(piece)
    merged: list[Piece] = []
    last = None  # index in `merged` of the last translatable piece
    for piece in fitted:
        if piece.translate and last is not None:
            head = merged[last]
            # Never across a line break: paragraphs, headings and list items stay separate inputs.
            if "\n" not in text[head.end:piece.start] and count(text[head.start:piece.end]) <= limit:
                merged[last:] = [Piece(head.start, piece.end, True)]
                continue
        merged.append(piece)
        if piece.translate:
            last = len(merged) - 1
    return merged


# ---------------------------------------------------------------- models


class MarianModel:
    """One seq2seq model and its tokenizer, loaded once."""

    def __init__(self, name: str, cfg: TranslationConfig, device: str):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        import torch

        self.name, self.cfg, self.device = name, cfg, device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            self.model = AutoModelForSeq2SeqLM.from_pretrained(
                name, dtype=dtype, trust_remote_code=cfg.trust_remote_code).to(device).eval()
        except Exception as err:  # noqa: BLE001 - any load failure means "not available here"
            message = " ".join(str(err).split())  # one line in logs and in the run summary
            raise TranslationUnavailable(f"cannot load {name}: {type(err).__name__}: {message}") from err
        model_limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        self.max_input_tokens = min(cfg.max_input_tokens, model_limit)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def translate(self, inputs: list[str]) -> list[str]:
        """Translate model inputs (each already within the limit), batched by padded tokens."""
        import torch

        if not inputs:
            return []
        normalized = [" ".join(text.split()) for text in inputs]  # line breaks inside a sentence
        encoded = self.tokenizer(normalized, add_special_tokens=True)["input_ids"]
        lengths = np.array([len(ids) for ids in encoded])
        if lengths.max() > self.max_input_tokens:
            raise ValueError(f"input of {lengths.max()} tokens over the limit {self.max_input_tokens}")
        outputs: list[str] = [""] * len(inputs)
        for rows in token_budget_batches(lengths, self.cfg.batch_tokens, max_rows=256):
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            with torch.inference_mode():
                generated = self.model.generate(**{k: v.to(self.device) for k, v in batch.items()},
                                                num_beams=self.cfg.num_beams,
                                                max_new_tokens=self.cfg.max_new_tokens)
            for row, text in zip(rows, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[row] = text.strip()
        return outputs


@dataclass(frozen=True)
class Translation:
    text: str
    model: str
    spans: list[tuple[int, int, int, int]]  # (orig_start, orig_end, new_start, new_end) per piece


class Translator:
    """Source language -> English, usable in a Ray actor or on its own."""

    def __init__(self, cfg: TranslationConfig, device: str = "auto"):
        self.cfg = cfg
        self.device = pick_device(device)
        self._models: OrderedDict[str, MarianModel] = OrderedDict()
        self._unavailable: dict[str, str] = {}

    def model(self, lang: str) -> MarianModel:
        """The language's model, else the fallback model; raises TranslationUnavailable."""
        candidates = dict.fromkeys([self.cfg.model_for(lang), self.cfg.fallback_model])
        errors = []
        for name in candidates:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            if name in self._unavailable:
                errors.append(self._unavailable[name])
                continue
            try:
                model = MarianModel(name, self.cfg, self.device)
            except TranslationUnavailable as err:
                self._unavailable[name] = str(err)  # do not retry a missing model for every batch
                errors.append(str(err))
                continue
            self._models[name] = model
            while len(self._models) > self.cfg.max_models_per_actor:
                self._models.popitem(last=False)
            return model
        raise TranslationUnavailable("; ".join(errors))

    def translate_many(self, texts: list[str], lang: str) -> list[Translation]:
        """Translate documents of one language together (one model, shared batches)."""
        model = self.model(lang)
        plans = [pack(text, segment(text, lang), model.count, model.max_input_tokens) for text in texts]
        inputs = [text[p.start:p.end] for text, plan in zip(texts, plans) for p in plan if p.translate]
        outputs = iter(model.translate(inputs))
        results = []
        for text, plan in zip(texts, plans):
            parts, spans, position = [], [], 0
            for piece in plan:
                part = next(outputs) if piece.translate else text[piece.start:piece.end]
                spans.append((piece.start, piece.end, position, position + len(part)))
                parts.append(part)
                position += len(part)
            results.append(Translation(text="".join(parts), model=model.name, spans=spans))
        return results

    def translate(self, text: str, lang: str) -> Translation:
        return self.translate_many([text], lang)[0]


# ---------------------------------------------------------------- Ray stage


class TranslateDocuments:
    """Map stage: rows with route `translate` get English `text`; the original is kept."""

    def __init__(self, cfg: TranslationConfig):
        self.cfg = cfg
        self.translator = Translator(cfg)

    @timed_stage("translate")
    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        by_lang: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            row.update(translated=False, translation_model=None, translation_error=None, text_original=None,
                       translation_spans=None)
            if row["reject_reason"] is None and row["route"] == ROUTE_TRANSLATE:
                by_lang.setdefault(row["lang"], []).append(index)
        for lang, indices in by_lang.items():
            self._translate_group(rows, lang, indices)
        fields = [TRANSLATION_SPANS, *TRANSLATION_FIELDS]
        columns = {name: pa.array([row[name] for row in rows], type_) for name, type_ in fields}
        columns["text"] = pa.array([row["text"] for row in rows], pa.string())
        for name in ("route", "reject_stage", "reject_reason", "reject_detail"):
            columns[name] = pa.array([row[name] for row in rows], pa.string())
        return append_columns(batch, columns)

    def _translate_group(self, rows: list[dict], lang: str, indices: list[int]) -> None:
        try:
            results = self.translator.translate_many([rows[i]["text"] for i in indices], lang)
        except TranslationUnavailable as err:
            if self.cfg.fail_on_missing_model:
                raise
            return self._fail(rows, indices, f"model unavailable: {err}")
        except Exception as err:  # noqa: BLE001 - generation failures fall back per document
            if len(indices) > 1:
                for index in indices:
                    self._translate_group(rows, lang, [index])
                return
            return self._fail(rows, indices, f"generation failed: {type(err).__name__}: {err}")
        for index, result in zip(indices, results):
            row = rows[index]
            row.update(text_original=row["text"], text=result.text, translated=True,
                       translation_model=result.model, translation_spans=json.dumps(result.spans))
        count("babelray_documents_translated_total", len(indices), source_lang=lang)

    def _fail(self, rows: list[dict], indices: list[int], reason: str) -> None:
        log.warning("translation failed for %d document(s): %s", len(indices), reason)
        for index in indices:
            row = rows[index]
            row["translation_error"] = reason
            if self.cfg.on_failure == "reject":
                row.update(reject_stage=STAGE, reject_reason=REJECT_TRANSLATION_ERROR, reject_detail=reason,
                           text=None)
            else:
                row["route"] = ROUTE_DIRECT_FALLBACK


def original_span(spans_json: str | None, start: int, end: int) -> tuple[int, int] | None:
    """Original-text span that a translated span [start, end) came from (whole pieces)."""
    if not spans_json:
        return None
    hits = [(a, b) for a, b, c, d in json.loads(spans_json) if c < end and d > start]
    return (min(a for a, _ in hits), max(b for _, b in hits)) if hits else None


def assert_models_available(cfg: TranslationConfig) -> None:
    """Fail fast (driver side) when the fallback or an explicitly mapped model cannot be found."""
    from transformers import AutoConfig

    for name in dict.fromkeys([cfg.fallback_model, *cfg.models.values()]):
        try:
            AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"translation model {name!r} is not available and translation.fail_on_missing_model "
                             f"is true: {type(err).__name__}: {err}") from None
