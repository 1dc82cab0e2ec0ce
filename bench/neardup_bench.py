"""Near-duplicate index benchmark: signature cost, find+add round trip, Redis bytes per article.

    .venv/bin/python bench/neardup_bench.py [--articles 100000] [--bucket-bits 12 14] [--redis-url URL]

Texts are real news from ../shared/news/ (800-word articles are made by joining consecutive items). The memory
figure needs volume, so after the real ones the index is filled up to --articles with signatures of random
shingle sets (memory does not depend on the text; such signatures behave as unrelated articles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from ingester import neardup
from ingester.connection import connect
from ingester.embedded import EmbeddedRedis
from ingester.keys import Keys

NEWS = Path(__file__).resolve().parent.parent.parent / "shared" / "news"


def real_texts() -> list[str]:
    texts = [json.loads(line)["text"] for line in (NEWS / "ecbplus" / "docs.jsonl").open(encoding="utf-8")]
    for line in (NEWS / "ceasefire-dev.jsonl").open(encoding="utf-8"):
        item = json.loads(line)
        texts.append(f"{item['title']}\n\n{item['text']}")
    return texts


def articles_of(texts: list[str], size: int) -> list[str]:
    """Consecutive texts joined and cut to `size` words."""
    out, words = [], []
    for text in texts:
        words += text.split()
        if len(words) >= size:
            out.append(" ".join(words[:size]))
            words = []
    return out


def bench_signature(texts: list[str]) -> None:
    for size in (200, 800, 3000):
        docs = articles_of(texts, size)[:300]
        times = []
        for doc in docs:
            start = time.perf_counter()
            neardup.signature(doc)
            times.append((time.perf_counter() - start) * 1000)
        print(f"signature, {size}-word article: median {statistics.median(times):.2f} ms, "
              f"mean {statistics.fmean(times):.2f} ms ({len(docs)} articles)")


def random_signature(rng: np.random.Generator) -> bytes:
    return rng.integers(0, 1 << 16, neardup.N_PERM, dtype=np.uint16).astype("<u2").tobytes()


async def fill(index: neardup.NearDupIndex, redis: aioredis.Redis, sigs: list[bytes], start: int) -> None:
    for offset in range(0, len(sigs), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for i, sig in enumerate(sigs[offset:offset + 500], start + offset):
                article_id = f"{i:024x}"
                index.add(pipe, article_id, article_id, sig)
            await pipe.execute()


async def memory_per_article(redis: aioredis.Redis, namespace: str, count: int) -> tuple[float, float]:
    """(MEMORY USAGE summed over the index's keys, used_memory delta is the caller's) / count."""
    total = 0
    async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
        total += await redis.memory_usage(key, samples=0) or 0
    keys = await redis.dbsize()
    return total / count, keys


async def round_trips(index: neardup.NearDupIndex, redis: aioredis.Redis, sigs: list[bytes]) -> list[float]:
    times = []
    for i, sig in enumerate(sigs):
        start = time.perf_counter()
        cluster = await index.find(sig)
        async with redis.pipeline(transaction=True) as pipe:
            index.add(pipe, f"rt{i}", cluster or f"rt{i}", sig)
            await pipe.execute()
        times.append((time.perf_counter() - start) * 1000)
    return times


async def bench_redis(url: str, real: list[bytes], articles: int, bucket_bits: int) -> None:
    redis = connect(url)
    namespace = f"bench{os.getpid()}b{bucket_bits}"
    index = neardup.NearDupIndex(redis, Keys(namespace), bucket_bits=bucket_bits)
    await redis.flushdb()
    before = int((await redis.info("memory"))["used_memory"])
    rng = np.random.default_rng(1)
    filler = [random_signature(rng) for _ in range(max(0, articles - len(real)))]
    started = time.perf_counter()
    await fill(index, redis, real, 0)
    await fill(index, redis, filler, len(real))
    count = len(real) + len(filler)
    fill_s = time.perf_counter() - started
    used = int((await redis.info("memory"))["used_memory"]) - before
    usage, keys = await memory_per_article(redis, namespace, count)
    probes = random.Random(2).sample(real, min(1000, len(real)))
    times = sorted(await round_trips(index, redis, probes))
    print(f"bucket_bits {bucket_bits}: {count} articles indexed in {fill_s:.1f} s "
          f"({count / fill_s:.0f}/s pipelined), {keys} keys")
    print(f"  Redis bytes/article: MEMORY USAGE {usage:.0f}, used_memory delta {used / count:.0f}")
    print(f"  find+add round trip (MULTI/EXEC): median {statistics.median(times):.2f} ms, "
          f"p99 {times[int(0.99 * len(times))]:.2f} ms ({len(times)} articles)")
    await redis.flushdb()
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--bucket-bits", type=int, nargs="+", default=[neardup.BUCKET_BITS])
    parser.add_argument("--redis-url", help="an EMPTY database (it is flushed); default: a private server")
    args = parser.parse_args()
    if not NEWS.exists():
        sys.exit(f"shared news texts not found at {NEWS} (see ../shared/README.md)")
    texts = real_texts()
    print(f"N_PERM {neardup.N_PERM}, {neardup.BANDS} bands x {neardup.ROWS} rows, "
          f"{neardup.SHINGLE}-word shingles")
    bench_signature(texts)
    real = [s for s in map(neardup.signature, texts) if s is not None]
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        url = args.redis_url
        if url is None:
            server = EmbeddedRedis(Path(tmp), persist=False, tcp=True)
            url = server.start()
        try:
            for bits in args.bucket_bits:
                asyncio.run(bench_redis(url, real, args.articles, bits))
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
