"""How much a process grows over many LanceDB `merge_insert` commits, the call the sink makes
once per round (upsert on `chunk_id`), with nothing else in the process.

    python bench/lance_commit_memory.py --work /tmp/lance-commits --rounds 180 --rows 5500

Prints the row count and the growth of this process's RSS since the table was created, every
20 rounds.
"""

from __future__ import annotations

import argparse
import shutil

import lancedb
import numpy as np
import psutil
import pyarrow as pa


def rows(start: int, count: int, dimensions: int, rng: np.random.Generator) -> pa.Table:
    ids = [f"doc-{index:08d}-0" for index in range(start, start + count)]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(count * dimensions, dtype=np.float32)),
                                                dimensions)
    return pa.table({"chunk_id": ids, "doc_id": ids, "text": ["one or two sentences of a document"] * count,
                     "vector": vectors})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/lance-commits")
    parser.add_argument("--rounds", type=int, default=180)
    parser.add_argument("--rows", type=int, default=5500, help="rows per commit")
    parser.add_argument("--dimensions", type=int, default=64)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    rng, process = np.random.default_rng(0), psutil.Process()
    table = lancedb.connect(args.work).create_table("chunks", data=rows(0, 1, args.dimensions, rng))
    before = process.memory_info().rss
    for round_ in range(args.rounds):
        table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all() \
            .execute(rows(1 + round_ * args.rows, args.rows, args.dimensions, rng))
        if round_ % 20 == 19 or round_ == args.rounds - 1:
            print(f"round {round_ + 1}: {table.count_rows():,} rows, "
                  f"RSS +{(process.memory_info().rss - before) / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
