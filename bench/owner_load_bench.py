#!/usr/bin/env python
"""Taking a shard over: how long a new owner takes to load the shard's committed state into
memory (``ShardMemory.load``: HSCAN of every metric hash), and what the state costs in memory
per series, at 10k, 100k and 1M series.

One private server. Series are spread over 30 metric hashes (counters, and histograms with
their bucket, sum and count fields, as the engine writes them), with label values shaped like
real ones (~70-byte series fields). Memory is the growth of this process's heap (tracemalloc)
while the state is loaded, divided by the number of series.

    python bench/owner_load_bench.py [--series 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
import redis.asyncio as aioredis

from aggregator.local_server import LocalServer
from aggregator.shard_memory import ShardMemory
from aggregator.state import SEP, encode_series
from producer.keys import Keys

HASHES = 30
HISTOGRAM_SHARE = 5  # one hash in five is a histogram
BUCKETS = 4  # non-empty buckets per histogram series


def fill(client: redis.Redis, keys: Keys, series: int) -> list[str]:
    names = []
    per_hash = series // HASHES
    for h in range(HASHES):
        kind = "h" if h % HISTOGRAM_SHARE == 0 else "c"
        key = keys.metric(0, kind, f"metric_{h}:0")
        names.append(key)
        pipe = client.pipeline(transaction=False)
        batch: dict[str, str] = {}
        for i in range(per_hash):
            s = encode_series([f"{i:040x}", f"team-{i % 97}", f"model-{i % 31}", "openai"])
            if kind == "c":
                batch[s] = str(i * 0.25)
            else:
                for b in range(BUCKETS):
                    batch[f"{s}{SEP}b{b}"] = str(i % 7 + 1)
                batch[f"{s}{SEP}s"] = str(i * 0.5)
                batch[f"{s}{SEP}c"] = str(i % 9 + 1)
            if len(batch) >= 5000:
                pipe.hset(key, mapping=batch)  # type: ignore[arg-type]
                batch = {}
        if batch:
            pipe.hset(key, mapping=batch)  # type: ignore[arg-type]
        pipe.execute()
    return names


async def load(url: str, keys: Keys, names: list[str]) -> tuple[float, int, int]:
    client = aioredis.Redis.from_url(url)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memory = ShardMemory(keys, 0)
    t = time.perf_counter()
    fields = await memory.load(client, names)
    seconds = time.perf_counter() - t
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await client.aclose()
    del memory
    return seconds, fields, grown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    a = p.parse_args()
    print(f"{'series':>10} {'fields':>10} {'load s':>8} {'fields/s':>10} {'bytes/series':>13}")
    with LocalServer() as server:
        sync = redis.Redis.from_url(server.url)
        for n in a.series:
            keys = Keys(f"load-{n}")
            names = fill(sync, keys, n)
            seconds, fields, grown = asyncio.run(load(server.url, keys, names))
            print(f"{n:>10,} {fields:>10,} {seconds:>8.2f} {fields / seconds:>10,.0f} {grown / n:>13,.0f}")
            sync.flushall()
        sync.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
