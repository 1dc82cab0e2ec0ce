"""The near-duplicate index on a real Redis: clustering, TTLs, bucket caps, and the signature itself."""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor

import pytest
import redis.asyncio as aioredis

from ingester import neardup
from ingester.keys import Keys
from ingester.neardup import NearDupIndex, signature, similarity

RETENTION = 3600.0


def story(seed: int, count: int = 300) -> list[str]:
    """A deterministic run of words from a 3,000-word vocabulary: unrelated seeds share no 5-word shingle."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(3000)]
    return [rng.choice(vocabulary) for _ in range(count)]


def text(words: list[str]) -> str:
    return " ".join(words)


def sig_of(words: list[str]) -> bytes:
    sig = signature(text(words))
    assert sig is not None
    return sig


async def put(redis: aioredis.Redis, index: NearDupIndex, article_id: str, sig: bytes) -> str:
    """What the article writer does: find, then add with the found cluster (or its own id) in a MULTI."""
    cluster = await index.find(sig) or article_id
    async with redis.pipeline(transaction=True) as pipe:
        index.add(pipe, article_id, cluster, sig)
        await pipe.execute()
    return cluster


@pytest.fixture
def index(redis: aioredis.Redis, keys: Keys) -> NearDupIndex:
    return NearDupIndex(redis, keys, threshold=0.6, retention=RETENTION)


async def test_a_syndicated_copy_clusters_with_the_first(redis: aioredis.Redis, index: NearDupIndex) -> None:
    words = story(1)
    assert await put(redis, index, "first", sig_of(words)) == "first"
    copy = ["LONDON", "Reuters", *words[:120], *words[150:], "Read", "more", "at", "our", "site"]
    assert await put(redis, index, "copy", sig_of(copy)) == "first"


async def test_a_copy_of_a_copy_clusters_with_the_first(redis: aioredis.Redis, index: NearDupIndex) -> None:
    words = story(2, 400)
    first, copy, copy_of_copy = words[0:250], words[40:290], words[80:330]
    assert similarity(sig_of(first), sig_of(copy_of_copy)) < 0.6  # it only clusters through the copy
    assert similarity(sig_of(copy), sig_of(copy_of_copy)) >= 0.6
    assert await put(redis, index, "first", sig_of(first)) == "first"
    assert await put(redis, index, "copy", sig_of(copy)) == "first"
    assert await put(redis, index, "copy2", sig_of(copy_of_copy)) == "first"


async def test_unrelated_text_does_not_cluster(redis: aioredis.Redis, index: NearDupIndex) -> None:
    await put(redis, index, "first", sig_of(story(3)))
    assert await index.find(sig_of(story(4))) is None
    assert await put(redis, index, "other", sig_of(story(4))) == "other"


async def test_the_most_similar_candidate_wins(redis: aioredis.Redis, index: NearDupIndex) -> None:
    words = story(5)
    far, near = sig_of(words[:240] + story(6, 30)), sig_of(words[:285] + story(7, 5))
    assert 0.6 <= similarity(far, sig_of(words)) < similarity(near, sig_of(words))
    await put(redis, index, "far", far)
    async with redis.pipeline(transaction=True) as pipe:
        index.add(pipe, "near", "near", near)  # its own cluster, although it is a copy of "far"
        await pipe.execute()
    assert await index.find(sig_of(words)) == "near"


async def test_an_empty_index_finds_nothing(index: NearDupIndex) -> None:
    assert await index.find(sig_of(story(8))) is None


def test_short_text_has_no_signature() -> None:
    assert signature(text(story(9, neardup.MIN_WORDS - 1))) is None
    assert signature(text(story(9, neardup.MIN_WORDS))) is not None
    assert signature("") is None
    assert signature("— … !!! 12") is None


def test_case_punctuation_quotes_and_whitespace_do_not_count() -> None:
    words = story(10)
    plain = text(words)
    styled = "  ".join(f"“{w.upper()}”," if i % 7 == 0 else w.capitalize() for i, w in enumerate(words))
    assert signature(plain) == signature(styled)
    assert similarity(sig_of(words), sig_of(words)) == 1.0
    assert similarity(sig_of(story(11)), sig_of(story(12))) < 0.05


def test_signature_is_the_same_in_another_process() -> None:
    sample = text(story(13))
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert pool.submit(signature, sample).result() == signature(sample)


def test_signature_size_and_similarity_checks() -> None:
    sig = sig_of(story(14))
    assert len(sig) == neardup.SIG_BYTES == 2 * neardup.N_PERM
    with pytest.raises(ValueError):
        similarity(sig, sig[:-2])


async def test_every_key_written_has_the_retention_ttl(redis: aioredis.Redis, keys: Keys,
                                                       index: NearDupIndex) -> None:
    await put(redis, index, "first", sig_of(story(15)))
    await put(redis, index, "second", sig_of(story(16)))
    written = [key async for key in redis.scan_iter(match=f"{keys.namespace}:*")]
    assert len(written) >= 2 + neardup.BANDS  # two signatures, and the buckets of at least one
    for key in written:
        assert 0 < await redis.ttl(key) <= RETENTION, key


async def test_add_joins_the_callers_transaction(redis: aioredis.Redis, keys: Keys,
                                                  index: NearDupIndex) -> None:
    sig = sig_of(story(17))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.articles, {"data": "{}"})
        index.add(pipe, "a1", "a1", sig)
        await pipe.reset()  # the caller gives up before EXEC: nothing is written
    assert await index.find(sig) is None
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.articles, {"data": "{}"})
        index.add(pipe, "a1", "a1", sig)
        await pipe.execute()
    assert await index.find(sig) == "a1"
    assert await redis.xlen(keys.articles) == 1


async def test_bucket_cap_holds(redis: aioredis.Redis, keys: Keys) -> None:
    """Boilerplate shared by many pages: every band of every copy lands in the same buckets."""
    index = NearDupIndex(redis, keys, retention=RETENTION, bucket_cap=5)
    sig = sig_of(story(18))
    for i in range(20):
        await put(redis, index, f"page{i}", sig)
    buckets = [key async for key in redis.scan_iter(match=f"{keys.namespace}:lsh:*")]
    assert len(buckets) == neardup.BANDS
    for key in buckets:
        assert await redis.zcard(key) == 5
        assert await redis.object("encoding", key) in {"listpack", "ziplist"}
    assert await index.find(sig) == "page0"  # the newest members still carry the first page's cluster


async def test_members_older_than_the_retention_are_trimmed(redis: aioredis.Redis, keys: Keys,
                                                            index: NearDupIndex) -> None:
    sig = sig_of(story(19))
    await put(redis, index, "first", sig)
    buckets = [key async for key in redis.scan_iter(match=f"{keys.namespace}:lsh:*")]
    for key in buckets:
        await redis.zadd(key, {"stale-member": 1})  # added in 1970
    await put(redis, index, "second", sig)
    for key in buckets:
        assert await redis.zscore(key, "stale-member") is None
        assert await redis.zcard(key) == 2


async def test_an_expired_signature_is_skipped(redis: aioredis.Redis, keys: Keys,
                                                index: NearDupIndex) -> None:
    sig = sig_of(story(20))
    await put(redis, index, "gone", sig)
    await redis.delete(keys.signature(neardup.handle("gone").hex()))
    assert await index.find(sig) is None


def test_bucket_bits_are_checked(redis: aioredis.Redis, keys: Keys) -> None:
    with pytest.raises(ValueError):
        NearDupIndex(redis, keys, bucket_bits=20)
