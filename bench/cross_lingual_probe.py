"""Cross-lingual probe over the sample-corpus table: German and Chinese questions whose
answer is only in an English document. Prints top-1 hits and the hit rate.

    python bench/cross_lingual_probe.py --table ./data/lancedb/chunks   # after `make run`
"""

from __future__ import annotations

import argparse
import json

import lancedb

from babelray.config import EmbeddingConfig
from babelray.embedding_model import EmbeddingModel

PROBES = [
    ("de", "Wie backt man Sauerteigbrot?", "en/sourdough-bread.md"),
    ("de", "Wie backe ich ein Sauerteigbrot?", "en/sourdough-bread.md"),
    ("de", "Wie füttert man einen Sauerteig-Starter?", "en/sourdough-bread.md"),
    ("de", "Warum wandern Monarchfalter nach Mexiko?", "en/monarch-butterflies.md"),
    ("de", "Wie funktioniert die Wanderung der Monarchfalter?", "en/monarch-butterflies.md"),
    ("de", "Wie effizient sind Solarmodule?", "en/solar-panels.txt"),
    ("de", "Wie trainieren Impfstoffe das Immunsystem?", "en/vaccines.txt"),
    ("de", "Warum bleichen Korallenriffe aus?", "en/coral-bleaching.txt"),
    ("de", "Wann darf man im Schach rochieren?", "en/chess-castling.md"),
    ("zh", "帝王蝶每年是如何迁徙的？", "en/monarch-butterflies.md"),
    ("zh", "帝王蝶为什么飞到墨西哥过冬？", "en/monarch-butterflies.md"),
    ("zh", "如何在家烤酸面包？", "en/sourdough-bread.md"),
    ("zh", "怎样喂养酸面团的酵种？", "en/sourdough-bread.md"),
    ("zh", "太阳能电池板的效率有多高？", "en/solar-panels.txt"),
    ("zh", "疫苗如何训练免疫系统？", "en/vaccines.txt"),
    ("zh", "珊瑚礁为什么会白化？", "en/coral-bleaching.txt"),
    ("zh", "国际象棋中什么时候可以王车易位？", "en/chess-castling.md"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="./data/lancedb/chunks", help="<db uri>/<table name>")
    args = parser.parse_args()
    uri, name = args.table.rstrip("/").rsplit("/", 1)
    table = lancedb.connect(uri).open_table(name)
    meta = json.loads(table.schema.metadata[b"babelray"])
    model = EmbeddingModel(EmbeddingConfig(model=meta["model"]))
    hits: dict[str, list[bool]] = {}
    for lang, query, expected in PROBES:
        vector = model.embed([query], prompt=meta["query_prompt"]).vectors[0]
        top = [row["doc_id"].split("/", 1)[1] for row in table.search(vector).limit(3).to_list()]
        hits.setdefault(lang, []).append(top[0] == expected)
        print(f"{'hit ' if top[0] == expected else 'miss'} {lang} {query}  ->  {', '.join(top)}")
    for lang, results in hits.items():
        print(f"{lang}: top-1 {sum(results)}/{len(results)}")


if __name__ == "__main__":
    main()
