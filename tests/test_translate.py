"""MarianMT translation stage: segmentation, the real Marian code path with a tiny random model
and a SentencePiece tokenizer trained in the test, fallbacks, and the pipeline on Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from babelray.config import RoutingConfig, TranslationConfig, load_config
from operators.route import RouteDocuments
from operators.translate import TranslateDocuments, Translator, pack, segment
from pipelines.ingest import run_ingest
REPO = Path(__file__).resolve().parent.parent

DOC = (
    "# Mlima Kilimanjaro\n\n"
    "Kilimanjaro ni mlima mrefu zaidi barani Afrika. Una vilele vitatu vya volkano!\n"
    "Watalii wengi huupanda kila mwaka.\n\n"
    "```bash\necho 'do not translate me'\n```\n\n"
    "- kipengele kimoja\n- kipengele cha pili\n\n"
    + "neno " * 300 + "\n"
)


def _config(model_dir, **overrides) -> TranslationConfig:
    settings = dict(enabled=True, fallback_model=str(model_dir), languages_with_model=[], max_input_tokens=24,
                    max_new_tokens=12, num_beams=1)
    return TranslationConfig(**{**settings, **overrides})


def test_segments_cover_the_text_and_keep_code_and_markers_verbatim():
    pieces = segment(DOC, "sw")
    assert "".join(DOC[p.start:p.end] for p in pieces) == DOC
    verbatim = [DOC[p.start:p.end] for p in pieces if not p.translate]
    assert "```bash\necho 'do not translate me'\n```\n" in verbatim
    assert "# " in verbatim and "- " in verbatim
    translated = [DOC[p.start:p.end] for p in pieces if p.translate]
    assert "Kilimanjaro ni mlima mrefu zaidi barani Afrika." in translated
    assert all(t == t.strip() and t for t in translated)


def test_pack_keeps_every_input_under_the_limit(tiny_marian_dir):
    translator = Translator(_config(tiny_marian_dir, max_input_tokens=64))
    model = translator.model("sw")
    plan = pack(DOC, segment(DOC, "sw"), model.count, model.max_input_tokens)
    assert "".join(DOC[p.start:p.end] for p in plan) == DOC
    inputs = [DOC[p.start:p.end] for p in plan if p.translate]
    assert max(model.count(text) for text in inputs) <= 64
    assert sum("neno" in text for text in inputs) > 10  # the 300-word run was split, not cut
    # sentences of one paragraph share an input when they fit; a line break is never crossed
    assert any("Afrika. Una vilele" in text for text in inputs)
    assert not any("\n" in text for text in inputs)


def test_translation_keeps_order_paragraphs_and_code(tiny_marian_dir):
    result = Translator(_config(tiny_marian_dir)).translate(DOC, "sw")
    assert result.model == str(tiny_marian_dir)
    assert "```bash\necho 'do not translate me'\n```\n" in result.text
    assert result.text.startswith("# ")
    assert result.text.count("\n\n") == DOC.count("\n\n")
    # the span map covers both texts in order, with no gap
    spans = result.spans
    assert spans[0][0] == 0 and spans[-1][1] == len(DOC) and spans[-1][3] == len(result.text)
    assert all(a[1] == b[0] and a[3] == b[2] for a, b in zip(spans, spans[1:]))


def test_models_are_grouped_and_kept_per_actor(tiny_marian_dir, tmp_path):
    other = shutil.copytree(tiny_marian_dir, tmp_path / "opus-mt-tl-en")
    translator = Translator(_config(tiny_marian_dir, models={"tl": str(other)}, max_models_per_actor=1))
    assert translator.translate("Kumusta ka.", "tl").model == str(other)
    assert translator.translate("Habari yako.", "sw").model == str(tiny_marian_dir)
    assert list(translator._models) == [str(tiny_marian_dir)]  # LRU of one: the tl model was evicted


def _documents(texts_langs: list[tuple[str, str]], routing: RoutingConfig) -> pa.Table:
    rows = [{"doc_id": f"d{i}", "source": "s", "kind": "prose", "code_language": None, "is_markdown": False,
             "text": text, "content_hash": "h", "size_bytes": len(text), "metadata": "{}",
             "reject_stage": None, "reject_reason": None, "reject_detail": None,
             "lang": lang, "lang_score": pa.scalar(0.9, pa.float32()).as_py()}
            for i, (text, lang) in enumerate(texts_langs)]
    return RouteDocuments(routing)(pa.Table.from_pylist(rows))


ROUTING = RoutingConfig(direct_languages=["en", "de"])


def test_stage_translates_routed_rows_only(tiny_marian_dir):
    batch = _documents([("The kettle boils.", "en"), ("Hii ni sentensi.", "sw"), ("Kumusta ka.", "tl")], ROUTING)
    out = {r["doc_id"]: r for r in TranslateDocuments(_config(tiny_marian_dir))(batch).to_pylist()}
    assert out["d0"]["translated"] is False and out["d0"]["text"] == "The kettle boils."
    assert out["d0"]["text_original"] is None and out["d0"]["route"] == "direct"
    for doc in ("d1", "d2"):
        assert out[doc]["translated"] is True and out[doc]["route"] == "translate"
        assert out[doc]["translation_model"] == str(tiny_marian_dir)
        assert out[doc]["text_original"] in ("Hii ni sentensi.", "Kumusta ka.")
        assert json.loads(out[doc]["translation_spans"])


def test_missing_model_falls_back_to_direct_or_rejects(tiny_marian_dir):
    batch = _documents([("Hii ni sentensi.", "sw"), ("The kettle boils.", "en")], ROUTING)
    missing = _config(tiny_marian_dir, models={"sw": "Helsinki-NLP/opus-mt-does-not-exist"},
                      fallback_model="Helsinki-NLP/opus-mt-also-missing")
    out = TranslateDocuments(missing)(batch).to_pylist()
    assert out[0]["route"] == "direct_fallback" and out[0]["translated"] is False
    assert "opus-mt-does-not-exist" in out[0]["translation_error"] and out[0]["text"] == "Hii ni sentensi."
    assert out[1]["route"] == "direct" and out[1]["translation_error"] is None

    rejecting = missing.model_copy(update={"on_failure": "reject"})
    out = TranslateDocuments(rejecting)(batch).to_pylist()
    assert out[0]["reject_reason"] == "translation_error" and out[0]["reject_stage"] == "translate"

    strict = missing.model_copy(update={"fail_on_missing_model": True})
    with pytest.raises(Exception, match="cannot load"):
        TranslateDocuments(strict)(batch)


def test_language_model_missing_uses_the_fallback_model(tiny_marian_dir):
    cfg = _config(tiny_marian_dir, languages_with_model=["sw"], model_template="Helsinki-NLP/opus-mt-{src}-xx")
    assert Translator(cfg).translate("Hii ni sentensi.", "sw").model == str(tiny_marian_dir)


@pytest.fixture(scope="module")
def translated_run(ray_cluster, tiny_marian_dir, tiny_qwen3_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("translate-e2e")
    corpus = tmp / "corpus"
    for lang in ("en", "sw", "tl", "de"):
        shutil.copytree(REPO / "samples" / "corpus" / "docs" / lang, corpus / lang)

    def run(**translation):
        cfg = load_config(REPO / "configs" / "local.yaml")
        cfg.input.paths = [str(corpus)]
        cfg.sink.uri = str(tmp / f"db-{len(translation)}")
        cfg.run.summary_dir = str(tmp / "runs")
        cfg.embedding.model = str(tiny_qwen3_dir)  # the pipeline is under test here, not the embedder
        cfg.translation = _config(tiny_marian_dir, **translation)
        summary = run_ingest(cfg)
        return summary, lancedb.connect(cfg.sink.uri).open_table("chunks").to_arrow().to_pylist()

    return run


def test_pipeline_with_translation(translated_run):
    summary, rows = translated_run()
    docs = {r["doc_id"]: r for r in rows}
    routed = {d for d, r in docs.items() if r["route"] == "translate"}
    assert routed and all(docs[d]["translated"] for d in routed)
    assert all(r["translation_model"] for r in rows if r["route"] == "translate")
    assert all(r["text_original"] for r in rows if r["translated"])
    assert not any(r["translated"] or r["text_original"] for r in rows if r["route"] == "direct")
    assert {docs[d]["lang"] for d in routed} >= {"sw", "tl"}
    assert summary["documents_translated"] == len(routed)
    assert summary["documents_in"] == summary["documents_embedded"] + summary["documents_rejected"] == len(docs)


def test_pipeline_with_a_missing_model_completes_with_direct_fallback(translated_run):
    summary, rows = translated_run(fallback_model="Helsinki-NLP/opus-mt-not-here")
    fallback = {r["doc_id"] for r in rows if r["route"] == "direct_fallback"}
    assert fallback and not any(r["translated"] for r in rows)
    assert summary["documents_by_route"]["direct_fallback"] == len(fallback)
    assert summary["documents_untranslated"] == len(fallback)
    [reason] = summary["translation_failures"]
    assert "opus-mt-not-here" in reason and summary["translation_failures"][reason] == len(fallback)
