"""Column names and Arrow types shared by the stages.

A row is a document until the chunk stage and a chunk after it. Rows that need
no more work travel with the others, with reject_* set and text/vector null, so
that every stage passes them on untouched and the sink accounts for every
document in one place: rejected documents, and documents unchanged since the
run that embedded them (reject_reason `unchanged`, which is not a rejection).
"""

from __future__ import annotations

import pyarrow as pa

# Rejection reasons, one vocabulary for the whole pipeline.
REJECT_EMPTY = "empty"
REJECT_BINARY = "binary"
REJECT_UNDECODABLE = "undecodable"
REJECT_TOO_LARGE = "too_large"
REJECT_READ_ERROR = "read_error"
REJECT_BAD_RECORD = "bad_record"
REJECT_MODEL_ERROR = "model_error"
REJECT_TRANSLATION_ERROR = "translation_error"
REJECT_DUPLICATE_ID = "duplicate_id"
REJECT_INCOMPLETE = "incomplete"  # some of its chunks never reached the sink (a lost block)
REJECT_WORKER_CRASHED = "worker_crashed"  # its worker process died on it, also when it was retried alone
# Not a rejection: the table already holds this content embedded with this config.
SKIP_UNCHANGED = "unchanged"

# What a run does with a document, by the table it writes to (the `change` column).
CHANGE_NEW = "new"
CHANGE_CHANGED = "changed"  # other content, or embedded with another config (fingerprint)
CHANGE_UNCHANGED = "unchanged"

ROUTE_DIRECT = "direct"
ROUTE_TRANSLATE = "translate"
ROUTE_CODE = "code"
ROUTE_DIRECT_FALLBACK = "direct_fallback"  # routed to translation, embedded untranslated after a failure

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),  # "prose" | "code"
        ("code_language", pa.string()),
        ("is_markdown", pa.bool_()),
        ("text", pa.string()),
        ("content_hash", pa.string()),
        ("size_bytes", pa.int64()),
        ("metadata", pa.string()),  # JSON object
        ("reject_stage", pa.string()),
        ("reject_reason", pa.string()),
        ("reject_detail", pa.string()),
        ("change", pa.string()),  # CHANGE_*; set by the incremental stage, not stored in the table
    ]
)

LANGID_FIELDS = [("lang", pa.string()), ("lang_score", pa.float32())]
ROUTE_FIELDS = [("route", pa.string())]
TRANSLATION_FIELDS = [
    ("translated", pa.bool_()),
    ("translation_model", pa.string()),
    ("translation_error", pa.string()),  # why a routed document was not translated
    ("text_original", pa.string()),  # the original text this row's text translates (chunk-aligned)
]
# Only between the translate and chunk stages: JSON [[orig_start, orig_end, new_start, new_end], ...].
TRANSLATION_SPANS = ("translation_spans", pa.string())
CHUNK_FIELDS = [
    ("chunk_id", pa.string()),
    ("chunk_index", pa.int32()),
    ("n_chunks", pa.int32()),
    ("start_line", pa.int32()),
    ("end_line", pa.int32()),
    ("start_char", pa.int64()),
    ("end_char", pa.int64()),
    ("doc_section", pa.string()),
    ("token_count", pa.int32()),
]


def embedding_fields(dimensions: int) -> list[tuple[str, pa.DataType]]:
    return [
        ("vector", pa.list_(pa.float32(), dimensions)),
        ("raw_norm", pa.float32()),
        ("model", pa.string()),
        ("embedded_at", pa.timestamp("us", tz="UTC")),
        ("model_tokens", pa.int32()),  # tokens the model read, prompt and special tokens included
        ("padded_tokens", pa.int32()),  # the padded length of the batch it went in: what it cost
    ]


# Columns that only travel through the run; the sink keeps them out of the table.
RUN_ONLY_COLUMNS = ["reject_stage", "reject_reason", "reject_detail", "change", "model_tokens", "padded_tokens"]
# Added by the sink: the config fingerprint (Config.fingerprint) the row was embedded with.
FINGERPRINT_FIELD = pa.field("embedding_fingerprint", pa.string())


def chunk_schema(dimensions: int) -> pa.Schema:
    """Schema of the rows that reach the sink."""
    fields = (list(DOCUMENT_SCHEMA) + LANGID_FIELDS + ROUTE_FIELDS + TRANSLATION_FIELDS + CHUNK_FIELDS
              + embedding_fields(dimensions))
    return pa.schema(fields)


def table_schema(dimensions: int) -> pa.Schema:
    """Schema of the chunks table."""
    rows = chunk_schema(dimensions)
    return pa.schema([field for field in rows if field.name not in RUN_ONLY_COLUMNS] + [FINGERPRINT_FIELD])


def append_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


def is_rejected(table: pa.Table) -> list[bool]:
    return [reason is not None for reason in table.column("reject_reason").to_pylist()]
