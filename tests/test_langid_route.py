import pyarrow as pa
import pytest

from babelray.config import LangIdConfig, RoutingConfig
from operators.langid import DetectLanguage, language_sample
from operators.route import RouteDocuments


@pytest.fixture(scope="module")
def detector():
    return DetectLanguage(LangIdConfig())


@pytest.mark.parametrize("text,lang", [
    ("Die Katze schläft den ganzen Nachmittag auf dem warmen Fensterbrett.", "de"),
    ("猫整个下午都在温暖的窗台上睡觉。", "zh"),
    ("Paka analala mchana wote kwenye dirisha lenye joto.", "sw"),
    ("A macska egész délután a meleg ablakpárkányon alszik.", "hu"),
    ("Le chat dort tout l'après-midi\nsur le rebord chaud\nde la fenêtre.", "fr"),
])
def test_detects_real_languages(detector, text, lang):
    assert detector.detect(text)[0] == lang


def test_long_document_is_not_judged_by_its_first_80_characters(detector):
    text = "Release notes v2.3.1 (API, CLI, SDK)\n\n" + (
        "Cette version corrige plusieurs erreurs dans le traitement des fichiers volumineux "
        "et améliore la vitesse de lecture des documents. " * 40)
    assert detector.detect(text)[0] == "fr"


def test_sample_is_bounded_and_skips_code_fences():
    text = "```python\nimport os\n```\n" + "mot " * 5000
    sample = language_sample(text, 300)
    assert len(sample) <= 302 and "import" not in sample


def test_batch_labels_code_and_skips_rejects(detector):
    batch = pa.table({
        "kind": ["prose", "code", "prose", "prose"],
        "text": ["Hola, ¿cómo estás hoy, amigo mío?", "def f():\n    return 1\n", None, "``` ```"],
        "reject_reason": [None, None, "empty", None],
    })
    out = detector(batch).to_pydict()
    assert out["lang"] == ["es", "code", None, "und"]
    assert out["lang_score"][1] == 1.0 and out["lang_score"][3] == 0.0


def test_routing():
    router = RouteDocuments(RoutingConfig(direct_languages=["en", "de"], translate_min_score=0.5))
    batch = pa.table({"kind": ["prose", "prose", "prose", "code", "prose"],
                      "lang": ["de", "sw", "sw", "code", None],
                      "lang_score": pa.array([0.9, 0.9, 0.2, 1.0, None], pa.float32()),
                      "reject_reason": [None, None, None, None, "empty"]})
    assert router(batch).column("route").to_pylist() == ["direct", "translate", "direct", "code", None]
