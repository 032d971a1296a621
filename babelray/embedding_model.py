"""Embedding model: loading, prompts, pooling, token-budget batching, MRL.

Loading goes through sentence-transformers so that pooling (mean for e5/BERT,
last-token for Qwen3-Embedding), normalization and prompts come from the
model's own configuration files. We run the modules ourselves instead of
`encode()` because we need the pooled vector *before* normalization (its norm
is kept as `raw_norm` for the drift job) and batches sized by tokens, not rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from babelray.config import EmbeddingConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
QWEN3_QUERY_PROMPT = re.compile(r"^Instruct: .*\nQuery: ?$", re.DOTALL)


def resolve_model_path(model: str) -> str:
    """HF hub id or local folder as given; `bundled:<name>` converted once into the cache."""
    if model.startswith(BUNDLED_PREFIX):
        from babelray.bundled_e5 import ensure_bundled_model

        return str(ensure_bundled_model(model[len(BUNDLED_PREFIX):]))
    return model


def pick_device(requested: str) -> str:
    import torch  # here, not at the top: the driver reads model specs and never needs torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("embedding.device is 'cuda' but torch sees no GPU")
    return requested


def pick_dtype(requested: str, device: str) -> torch.dtype:
    import torch

    if requested == "auto":
        return torch.bfloat16 if device == "cuda" or (device == "cpu" and cpu_has_fast_bf16()) else torch.float32
    return getattr(torch, requested)


def pad_multiple(dtype: torch.dtype) -> int | None:
    """Sequence lengths in half precision are padded up to a multiple of 16: bf16 matrix kernels
    (AMX tiles, tensor cores) work in blocks of 16, and fewer distinct shapes mean fewer kernels
    built and cached. e5-small in bf16 on an AMX CPU: 8,328 tokens/s against 7,003 unpadded, peak
    RSS 1,225 against 1,628 MiB; with AVX-512 BF16 (Zen 4) as fast per real token (3,002 against 2,953);
    in fp32 it bought nothing (2,365 against 2,401), so fp32 is not padded."""
    import torch

    return 16 if dtype in (torch.bfloat16, torch.float16) else None


def padded_length(longest: int, multiple: int | None, limit: int) -> int:
    """What a batch whose longest row has `longest` tokens is padded to: up to the padding multiple,
    unless that would pass the model's limit (a position the model has no embedding for)."""
    if not multiple:
        return longest
    rounded = -(-longest // multiple) * multiple
    return rounded if rounded <= limit else longest


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: AMX tiles (Intel Sapphire Rapids and
    later) or AVX-512 BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake). e5-small ran 2.6x
    faster in bf16 than in fp32 with AMX and 1.5-1.7x with AVX-512 BF16 (Zen 4), its vectors within
    cosine 0.9999 of fp32's (docs/benchmarks.md); without either, CPU bf16 is emulated and slower than fp32."""
    import torch

    # Private probes in torch 2.x; when one is missing the answer is fp32, the safe side.
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: np.ndarray  # (n, dimensions) float32, unit norm
    raw_norms: np.ndarray  # (n,) float32, norm of the truncated vector before normalization
    token_counts: np.ndarray  # (n,) tokens fed to the model, prompt and special tokens included
    padded_lengths: np.ndarray  # (n,) length of the padded batch each text went through (its cost)


@dataclass(frozen=True)
class ModelSpec:
    """What the stages need to know about a model without loading its weights."""

    model_id: str
    path: str  # hub id or local folder that transformers can load
    revision: str | None
    max_seq_length: int
    full_dimensions: int  # size of the pooled vector before any MRL truncation
    pooling: str
    document_prompt: str
    query_prompt: str

    def dimensions(self, cfg: EmbeddingConfig) -> int:
        if cfg.dimensions is not None and cfg.dimensions > self.full_dimensions:
            raise ValueError(f"embedding.dimensions={cfg.dimensions} exceeds the model's {self.full_dimensions}")
        return cfg.dimensions or self.full_dimensions

    def tokenizer(self, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, revision=self.revision,
                                             trust_remote_code=trust_remote_code)

    def table_metadata(self, cfg: EmbeddingConfig) -> dict[str, str]:
        """What a reader of the table needs to embed queries the same way."""
        return {
            "model": self.model_id,
            "model_revision": self.revision or "",
            "dimensions": str(self.dimensions(cfg)),
            "full_dimensions": str(self.full_dimensions),
            "pooling": self.pooling,
            "document_prompt": self.document_prompt,
            "query_prompt": self.query_prompt,
            "max_seq_length": str(self.max_seq_length),
        }

    def prompt_overhead(self, tokenizer) -> int:
        """Tokens the document prompt and special tokens add to every chunk."""
        with_prompt = tokenizer(self.document_prompt + "x", add_special_tokens=True)["input_ids"]
        bare = tokenizer("x", add_special_tokens=False)["input_ids"]
        return len(with_prompt) - len(bare)


def _read_json(path: str, filename: str, revision: str | None) -> dict:
    from transformers.utils import cached_file

    resolved = cached_file(path, filename, revision=revision,
                           _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    if not resolved:
        return {}
    with open(resolved, encoding="utf-8") as handle:
        return json.load(handle)


def load_model_spec(cfg: EmbeddingConfig) -> ModelSpec:
    """Read the model's sentence-transformers files (prompts, max length, pooling);
    works for hub ids (through the HF cache) and local folders alike."""
    path = resolve_model_path(cfg.model)
    st_config = _read_json(path, "sentence_bert_config.json", cfg.revision)
    st_prompts = _read_json(path, "config_sentence_transformers.json", cfg.revision).get("prompts") or {}
    model_config = _read_json(path, "config.json", cfg.revision)
    pooling_config = _read_json(path, "1_Pooling/config.json", cfg.revision)
    max_len = st_config.get("max_seq_length") or model_config.get("max_position_embeddings") or 512
    full_dimensions = (pooling_config.get("embedding_dimension") or pooling_config.get("word_embedding_dimension")
                       or model_config.get("hidden_size"))
    if not full_dimensions:
        raise ValueError(f"{cfg.model}: cannot tell the embedding size (no 1_Pooling/config.json, no hidden_size)")

    def prompt(override: str | None, names: tuple[str, ...]) -> str:
        if override is not None:
            return override
        return next((st_prompts[name] for name in names if st_prompts.get(name)), "")

    query_prompt = prompt(cfg.query_prompt, ("query",))
    if cfg.query_prompt is None and QWEN3_QUERY_PROMPT.match(query_prompt):
        # Qwen3's official format, with the configured task description.
        query_prompt = f"Instruct: {cfg.query_task}\nQuery:"
    return ModelSpec(
        model_id=cfg.model,
        path=path,
        revision=cfg.revision or _local_revision(path),
        max_seq_length=int(max_len),
        full_dimensions=int(full_dimensions),
        pooling=cfg.pooling or _pooling_mode(pooling_config),
        document_prompt=prompt(cfg.document_prompt, ("document", "passage", "corpus")),
        query_prompt=query_prompt,
    )


class EmbeddingModel:
    """One loaded model; build it once per actor."""

    def __init__(self, cfg: EmbeddingConfig, spec: ModelSpec | None = None):
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

        self.cfg = cfg
        self.spec = spec or load_model_spec(cfg)
        self.model_id = cfg.model
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.pad_to_multiple_of = pad_multiple(self.dtype)
        if self.device == "cpu":
            # Match the CPUs Ray reserved for this actor rather than every core of the node.
            torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.resources.num_cpus)))
        self.st = SentenceTransformer(
            self.spec.path,
            device=self.device,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            model_kwargs={"dtype": self.dtype},
        )
        self.st.eval()
        self._inference_mode = torch.inference_mode
        self._modules = [module for module in self.st if not isinstance(module, Normalize)]
        pooling = next((m for m in self._modules if isinstance(m, Pooling)), None)
        if pooling is None:
            raise ValueError(f"{cfg.model}: no pooling module in its sentence-transformers config")
        if cfg.pooling is not None:
            pooling.pooling_mode = cfg.pooling
        mode = pooling.pooling_mode
        self.pooling = mode if isinstance(mode, str) else "+".join(mode)

        self.tokenizer = self.st.tokenizer
        if self.pooling == "lasttoken":
            # Qwen3-Embedding reads the final token; left padding keeps it at the last position.
            self.tokenizer.padding_side = "left"
        self.max_seq_length = min(self.spec.max_seq_length, int(self.st.max_seq_length or self.spec.max_seq_length))
        self.full_dimensions = int(self.st.get_embedding_dimension())
        if self.full_dimensions != self.spec.full_dimensions:
            raise ValueError(f"{cfg.model}: model gives {self.full_dimensions}-d vectors, its config says "
                             f"{self.spec.full_dimensions}")
        self.dimensions = self.spec.dimensions(cfg)
        self.document_prompt = self.spec.document_prompt
        self.query_prompt = self.spec.query_prompt
        self.revision = self.spec.revision
        log.info("embedding model %s on %s in %s", self.model_id, self.device, str(self.dtype).removeprefix("torch."))

    def embed(self, texts: list[str], prompt: str | None = None, truncate: bool = False) -> EmbeddingBatch:
        """Embed texts with the document prompt (or the given one), in token-budget batches
        sorted by length so padding stays small. A text over the model's limit is an error
        unless `truncate` (chunks are sized to fit; an overflow means a bug, not a cut)."""
        prompt = self.document_prompt if prompt is None else prompt
        encoded = self.tokenizer([prompt + text for text in texts], truncation=truncate,
                                 max_length=self.max_seq_length if truncate else None, add_special_tokens=True)
        ids = encoded["input_ids"]
        lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
        if len(lengths) and lengths.max() > self.max_seq_length:
            raise ValueError(f"{int((lengths > self.max_seq_length).sum())} text(s) over the model's "
                             f"{self.max_seq_length} tokens (longest {int(lengths.max())})")
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        raw_norms = np.zeros(len(texts), dtype=np.float32)
        padded = np.zeros(len(texts), dtype=np.int64)
        for batch_rows in token_budget_batches(lengths, self.cfg.batch_tokens, self.cfg.max_batch_rows):
            length = padded_length(int(lengths[batch_rows].max()), self.pad_to_multiple_of, self.max_seq_length)
            vectors[batch_rows], raw_norms[batch_rows] = mrl_truncate(
                self._forward([ids[i] for i in batch_rows], length), self.dimensions)
            padded[batch_rows] = length
        return EmbeddingBatch(vectors=vectors, raw_norms=raw_norms, token_counts=lengths, padded_lengths=padded)

    def _forward(self, input_ids: list[list[int]], length: int) -> np.ndarray:
        features = self.tokenizer.pad({"input_ids": input_ids}, padding="max_length", max_length=length,
                                      return_tensors="pt")
        features = {name: tensor.to(self.device) for name, tensor in features.items()}
        with self._inference_mode():
            for module in self._modules:
                features = module(features)
        return features["sentence_embedding"].float().cpu().numpy()


def mrl_truncate(vectors: np.ndarray, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """Matryoshka truncation: the first `dimensions` coordinates, renormalised to unit length.
    Returns the unit vectors and the norms before renormalising (a drift signal)."""
    truncated = vectors[:, :dimensions]
    norms = np.linalg.norm(truncated, axis=1)
    return truncated / np.maximum(norms, 1e-12)[:, None], norms


def token_budget_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Row indices grouped so that (rows x longest row) stays within `batch_tokens`.

    Sorted by length, so each batch holds similar lengths and padding is small;
    a single row longer than the budget still gets a batch of its own.
    """
    order = np.argsort(lengths, kind="stable")
    batches, current, longest = [], [], 0
    for index in order:
        length = int(lengths[index])
        if current and (max(longest, length) * (len(current) + 1) > batch_tokens or len(current) >= max_rows):
            batches.append(np.array(current))
            current, longest = [], 0
        current.append(int(index))
        longest = max(longest, length)
    if current:
        batches.append(np.array(current))
    return batches


def _pooling_mode(pooling_config: dict) -> str:
    """Pooling named in a 1_Pooling/config.json, old (pooling_mode_x: true) or new (pooling_mode: x) style;
    sentence-transformers' own default (mean) when the model has none."""
    if isinstance(pooling_config.get("pooling_mode"), str):
        return pooling_config["pooling_mode"]
    flags = [key.removeprefix("pooling_mode_") for key, on in pooling_config.items()
             if key.startswith("pooling_mode_") and on is True]
    names = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}
    return "+".join(names.get(flag, flag) for flag in flags) or "mean"


def _local_revision(path: str) -> str | None:
    """Hub snapshot hash when the model came from the HF cache (…/snapshots/<sha>/)."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 2 and parts[-2] == "snapshots":
        return parts[-1]
    return None
