"""`babelray eval`: metrics, data readers, and the whole harness over a small data folder
built here in the layout of ../shared/data (the real folder is not needed by the tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from babelray.cli import main
from babelray.config import load_config
from babelray.evaluation import data as eval_data
from babelray.evaluation.metrics import exact_document_rankings, ranking_metrics

REPO = Path(__file__).resolve().parent.parent

PASSAGES = {
    "bees": "Honey bees tell their hive mates where flowers are by dancing. The waggle dance encodes the "
            "direction of the food relative to the sun and its distance by how long the bee waggles.",
    "volcano": "A volcano erupts when molten rock called magma rises through cracks in the crust. Lava flows, "
               "ash clouds and volcanic gases can bury towns and change the weather for years.",
    "chess": "In chess, castling moves the king two squares towards a rook, and the rook jumps over the king. "
             "It is the only move in which a player moves two pieces at once.",
    "tea": "Green tea is made from leaves that are steamed or pan-fired soon after picking, which stops "
           "oxidation. Black tea leaves are left to oxidise fully before they are dried.",
    "bridge": "Suspension bridges hang their deck from vertical cables attached to two main cables that run "
              "between tall towers and are anchored in the ground at each end.",
    "vaccine": "Vaccines train the immune system by showing it a harmless piece or copy of a germ, so the body "
               "makes antibodies and memory cells before it ever meets the real disease.",
}
QUESTIONS = {
    "en": {"bees": "How do bees show other bees where the flowers are?",
           "volcano": "Why does a volcano erupt?",
           "chess": "What is castling in chess?",
           "tea": "How is green tea made?"},
    "de": {"bees": "Wie zeigen Bienen anderen Bienen, wo die Blumen sind?",
           "volcano": "Warum bricht ein Vulkan aus?",
           "chess": "Was ist die Rochade beim Schach?",
           "tea": "Wie wird grüner Tee hergestellt?"},
}
BITEXT = {
    "deu": [("Ich trinke gern Kaffee am Morgen.", "I like to drink coffee in the morning."),
            ("Der Hund schläft unter dem Tisch.", "The dog is sleeping under the table."),
            ("Wo ist der Bahnhof?", "Where is the train station?"),
            ("Es regnet seit drei Tagen.", "It has been raining for three days."),
            ("", "An empty line on one side is skipped."),
            ("Meine Schwester spielt Klavier.", "My sister plays the piano.")],
    "swh": [("Ninapenda kunywa kahawa asubuhi.", "I like to drink coffee in the morning."),
            ("Mbwa analala chini ya meza.", "The dog is sleeping under the table."),
            ("Kituo cha treni kiko wapi?", "Where is the train station?")],
}
LID_LINES = {
    "en": ["The weather was lovely, so we walked along the river all afternoon.",
           "Please remember to close the windows before you leave the house."],
    "de": ["Das Wetter war schön, deshalb sind wir den ganzen Nachmittag am Fluss spazieren gegangen.",
           "Bitte denk daran, die Fenster zu schließen, bevor du das Haus verlässt."],
}
EN_PAGES = {
    "tutorial/cors.md": "# CORS\n\nCross-origin resource sharing lets a browser page call an API on another "
                        "domain. You add the middleware and list the allowed origins.\n\n```python\n"
                        "app.add_middleware(CORSMiddleware, allow_origins=origins)\n```\n",
    "tutorial/testing.md": "# Testing\n\nWith the test client you call your application in tests without "
                           "starting a server, and check the status codes and JSON it returns.\n",
    "deployment/docker.md": "# Docker\n\nBuild a container image for your app with a Dockerfile, then run it "
                            "with one process per container behind a load balancer.\n",
}
DE_PAGES = {
    "tutorial/cors.md": "# CORS\n\n/// note\n\nHinweis.\n\n///\n\nCross-Origin Resource Sharing erlaubt einer "
                        "Browserseite, eine API auf einer anderen Domain aufzurufen. Sie fügen die Middleware "
                        "hinzu und listen die erlaubten Ursprünge auf.\n",
    "deployment/docker.md": "# Docker\n\n{* ../../docs_src/app.py *}\n\nErstellen Sie mit einem Dockerfile ein "
                            "Container-Image für Ihre App und starten Sie einen Prozess pro Container hinter "
                            "einem Load Balancer.\n",
}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-data")
    _write(root / "xquad" / "passages.en.jsonl",
           "".join(json.dumps({"pid": pid, "title": pid, "text": text}) + "\n" for pid, text in PASSAGES.items()))
    for lang, questions in QUESTIONS.items():
        _write(root / "xquad" / f"queries.{lang}.jsonl",
               "".join(json.dumps({"qid": f"{lang}-{pid}", "lang": lang, "question": q, "answer": "", "pid": pid})
                       + "\n" for pid, q in questions.items()))
    for lang, pairs in BITEXT.items():
        _write(root / "tatoeba" / f"tatoeba.{lang}-eng.{lang}", "".join(s + "\n" for s, _ in pairs))
        _write(root / "tatoeba" / f"tatoeba.{lang}-eng.eng", "".join(e + "\n" for _, e in pairs))
    for lang, lines in LID_LINES.items():
        _write(root / "lid" / "sentences" / f"{lang}.txt", "\n".join(lines) + "\n")
    for rel, text in EN_PAGES.items():
        _write(root / "docs_fastapi" / "en" / rel, text)
    for rel, text in DE_PAGES.items():
        _write(root / "docs_fastapi" / "de" / rel, text)
    _write(root / "docs_fastapi" / "pairs.tsv",
           "lang\trel_path\ten_file\ttranslated_file\theuristic_target_lang_score\n"
           + "".join(f"de\t{rel}\ten/{rel}\tde/{rel}\t1.0\n" for rel in DE_PAGES))
    return root


# ---------------------------------------------------------------- metrics and readers


def test_ranking_metrics_by_hand():
    rankings = [["a", "b"], ["x", "a"], ["y", "z"], ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "a"]]
    result = ranking_metrics(rankings, ["a"] * 4)
    assert result["R@1"] == pytest.approx(25.0)
    assert result["R@5"] == result["R@10"] == pytest.approx(50.0)
    assert result["MRR@10"] == pytest.approx(100 * (1 + 0.5) / 4)
    assert result["nDCG@10"] == pytest.approx(100 * (1 + 1 / math.log2(3)) / 4)
    with pytest.raises(ValueError, match="2 rankings for 1 gold"):
        ranking_metrics([["a"], ["b"]], ["a"])


def test_exact_rankings_rank_a_document_at_its_best_chunk():
    chunks = np.array([[1, 0, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 0, 1]], dtype=np.float32)
    docs = ["doc-a", "doc-b", "doc-c", "doc-a"]
    query = np.array([[0, 0.1, 0.995]], dtype=np.float32)  # nearest: chunk 3 (doc-a), then chunk 1 (doc-b)
    assert exact_document_rankings(query, chunks, docs, limit=3) == [["doc-a", "doc-b", "doc-c"]]


def test_first_paragraph_skips_markup_and_first_words_stays_short():
    assert eval_data.first_paragraph(DE_PAGES["tutorial/cors.md"]).startswith("Cross-Origin Resource Sharing")
    assert eval_data.first_paragraph(DE_PAGES["deployment/docker.md"]).startswith("Erstellen Sie")
    assert eval_data.first_paragraph("# Only a title\n\n```python\nx = 1\n```\n") == "Only a title"
    assert eval_data.first_words("The quick brown fox jumps") == "The quick brown"
    assert eval_data.first_words("我们今天去公园散步吧，天气很好") == "我们今天去公"
    assert eval_data.first_words("Hi there") == "Hi there"


def test_readers_pair_and_name_missing_files(data_dir, tmp_path):
    bitext = eval_data.tatoeba_bitext(data_dir, "deu", None)
    assert len(bitext.source) == 5 and "An empty line on one side is skipped." not in bitext.english
    assert [q.gold for q in eval_data.fastapi_queries(data_dir, "de")] == [f"en/{rel}" for rel in DE_PAGES]
    with pytest.raises(eval_data.DataError, match="tatoeba.xho-eng.xho"):
        eval_data.tatoeba_bitext(data_dir, "xho", None)
    assert main(["eval", "--config", str(REPO / "configs" / "local.yaml"), "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "out")]) == 2
    assert main(["eval", "--config", str(REPO / "configs" / "local.yaml"), "--data", str(data_dir),
                 "--out", str(tmp_path / "out"), "--suites", "xquad,mteb"]) == 2


# ---------------------------------------------------------------- the harness, end to end


@pytest.fixture(scope="module")
def evaluated(ray_cluster, data_dir, tiny_marian_dir, tmp_path_factory):
    from pipelines.evaluate import EvalOptions, run_eval

    cfg = load_config(REPO / "configs" / "local.yaml")
    # A translator for the translate-first ablation: the real Marian code path with a tiny random model.
    cfg.translation = cfg.translation.model_copy(update={
        "enabled": True, "fallback_model": str(tiny_marian_dir), "languages_with_model": [],
        "max_input_tokens": 24, "max_new_tokens": 12, "num_beams": 1})
    out = tmp_path_factory.mktemp("eval-out")
    return run_eval(cfg, data_dir, out, EvalOptions(mrl_dims=[512, 128], tatoeba_pairs=None)), out


def test_eval_writes_report_chart_and_results(evaluated):
    results, out = evaluated
    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## XQuAD", "### Ablation: query instruction", "### Ablation: MRL dimensions",
                    "## ANN index vs exact search", "### Ablation: translate-first vs direct",
                    "## Tatoeba", "## Language ID", "## FastAPI docs"):
        assert heading in report
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["run"]["query_prompt"] == "query: "
    assert results["run"]["dimensions"] == 384 and results["run"]["suites"] == ["xquad", "tatoeba", "language_id",
                                                                                 "fastapi"]


def test_xquad_through_the_pipeline(evaluated):
    results, _ = evaluated
    xquad = results["xquad"]
    assert xquad["ingest"]["documents_embedded"] == len(PASSAGES)
    rows = {row["lang"]: row for row in xquad["rows"]}
    assert rows["en"]["R@1"] == 100.0 and rows["de"]["R@5"] == 100.0
    assert rows["de"]["query_langid"] == 100.0 and rows["de"]["translated"] == 0  # de is routed direct
    # The in-memory MRL ablation at the table's size reproduces the LanceDB search path exactly.
    full = xquad["mrl"][0]
    assert full["dims"] == 384 and full["R@5"] == pytest.approx(xquad["average"]["R@5"])
    assert [row["dims"] for row in xquad["mrl"]] == [384, 128]
    assert any("512" in note for note in xquad["notes"])
    hnsw = next(row for row in xquad["ann"] if row["index"] == "IVF_HNSW_SQ")
    assert f"over {len(PASSAGES)} of {len(PASSAGES)} rows" in hnsw["built"]
    assert 0 <= hnsw["recall@10_vs_exact"] <= 100
    [translated] = xquad["translate_vs_direct"]
    assert translated["lang"] == "de" and translated["queries_translated"] == len(QUESTIONS["de"])


def test_tatoeba_lid_and_fastapi(evaluated):
    results, _ = evaluated
    tatoeba = {row["lang"]: row for row in results["tatoeba"]["rows"]}
    assert tatoeba["deu"]["pairs"] == 5 and tatoeba["deu"]["xx->en"] == 100.0
    assert tatoeba["swh"]["routed"] and not tatoeba["deu"]["routed"]
    lid = {row["lang"]: row for row in results["language_id"]["rows"]}
    assert lid["en"]["full"] == lid["de"]["full"] == 100.0
    fastapi = results["fastapi"]
    assert fastapi["ingest"]["documents_embedded"] == len(EN_PAGES)
    [de] = fastapi["rows"]
    assert de["queries"] == len(DE_PAGES) and de["R@1"] == 100.0
    assert {row["table"] for row in fastapi["ann"]} == {"fastapi"}
