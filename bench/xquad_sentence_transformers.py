"""XQuAD cross-lingual retrieval with plain sentence-transformers: the reference that
`babelray eval` must match (within 1 point of Recall@5) to show the pipeline -
reading, chunking, prompts, LanceDB writing and search - loses no quality.

    python bench/xquad_sentence_transformers.py --data ../shared/data
    python bench/xquad_sentence_transformers.py --data ../shared/data --model /models/multilingual-e5-small

No babelray code touches the vectors: passages and questions go straight to
SentenceTransformer.encode with the model's own prompts, cosine in numpy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with xquad/")
    parser.add_argument("--model", help="model folder or hub id; default: the bundled multilingual-e5-small")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from babelray.bundled_e5 import ensure_bundled_model  # only to find the converted folder

        args.model = str(ensure_bundled_model("multilingual-e5-small"))
    model = SentenceTransformer(args.model, device="cpu")
    started = time.perf_counter()

    passages = read_jsonl(args.data / "xquad" / "passages.en.jsonl")
    pids = [p["pid"] for p in passages]
    doc_vectors = model.encode([p["text"] for p in passages], prompt_name="document", batch_size=8,
                               normalize_embeddings=True, convert_to_numpy=True)
    print(f"model {args.model}; prompts {model.prompts}")
    print(f"{'lang':<6}{'R@1':>7}{'R@5':>7}{'R@10':>7}")
    recall5 = []
    for path in sorted((args.data / "xquad").glob("queries.*.jsonl")):
        queries = read_jsonl(path)
        vectors = model.encode([q["question"] for q in queries], prompt_name="query", batch_size=32,
                               normalize_embeddings=True, convert_to_numpy=True)
        top10 = [[pids[i] for i in row] for row in np.argsort(-(vectors @ doc_vectors.T), axis=1)[:, :10]]
        ranks = [ranked.index(q["pid"]) + 1 if q["pid"] in ranked else 11 for ranked, q in zip(top10, queries)]
        recall = {k: 100.0 * np.mean([rank <= k for rank in ranks]) for k in (1, 5, 10)}
        recall5.append(recall[5])
        print(f"{path.name.split('.')[1]:<6}{recall[1]:>7.1f}{recall[5]:>7.1f}{recall[10]:>7.1f}")
    print(f"average R@5 {np.mean(recall5):.1f} over {len(recall5)} languages; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
