"""Near-duplicate detection across sites: MinHash of word shingles, LSH index in Redis.

A syndicated copy (same wire story, new headline, a dropped paragraph, a dateline, a footer) keeps most of its
k-word shingles, while two outlets' own write-ups of one event share few (measured on ECB+: see
tests/test_neardup_quality.py). Each article gets a MinHash signature; the index finds candidates through LSH
bands and keeps the best candidate whose estimated Jaccard similarity reaches the threshold.

The signature holds the low 16 bits of each of the N_PERM MinHash values (b-bit minwise hashing, Li & König):
half the memory of 32-bit values, and a chance match of 1/65536 per value, which `similarity` corrects for.

Redis layout (every key with TTL = retention):
- `keys.signature(handle)`: string = signature bytes + cluster id (utf-8). `handle` is a 48-bit hash of the
  article id, so that bucket members stay small; two articles sharing one (a 1 in 500 chance among a million
  articles) only cost the older one its place in the index.
- `keys.lsh(band, bucket)`: sorted set, member = band tag + handle (binary), score = time added (server time).
  One set holds many band values (`bucket` is `bucket_bits` of the value, the tag 24 more bits) so that Redis
  pays one key per bucket rather than one per article and band (a key costs ~180 bytes, measured). Members
  older than the retention are trimmed on each write, and only the newest `bucket_cap` are kept: that bounds
  the candidates a pathological text (boilerplate shared by thousands of pages) can bring, and keeps the sets
  in Redis' compact listpack encoding. Past ~bucket_cap x 2^bucket_bits / 1.5 articles per retention period
  (~270,000 by default) full buckets start dropping their oldest members: raise bucket_bits (each step
  doubles the capacity and the BANDS x 2^bucket_bits keys; the index then refills over one retention period).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

import numpy as np
import redis.asyncio as aioredis
from datasketch import MinHash
from redis.asyncio.client import Pipeline
from redis.client import NEVER_DECODE

from ingester.keys import Keys

N_PERM = 128
BANDS = 24
ROWS = 3
SHINGLE = 5  # words per shingle
MIN_WORDS = 40  # below this a few changed words swing the estimate: no signature
SEED = 1
BUCKET_BITS = 12
BUCKET_CAP = 100  # below Redis' zset-max-listpack-entries (128): compact sets
HANDLE_BYTES = 6
TAG_BYTES = 3

# The index's two operations, in Lua so that finding a cluster and joining it can be one atomic step with
# the article's write (ingester.publish): two copies written at the same moment cannot both start a cluster.
# Server time, so that daemons with skewed clocks age the buckets alike. Trimming before adding keeps a full
# bucket at `cap` entries: a set that outgrows the listpack encoding does not shrink back into it.
LUA = f"local SIG_BYTES, N_PERM, CHANCE = {N_PERM * 2}, {N_PERM}, 1 / 65536\n" + """
local function hex(s)
  return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end))
end

-- The cluster id of the most similar indexed article at or above `threshold` (estimated Jaccard), or false.
local function nearest(buckets, tags, sig, prefix, threshold)
  local seen, best, best_score = {}, false, -1
  for b, key in ipairs(buckets) do
    local tag = tags[b]
    for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      local h = member:sub(#tag + 1)
      if member:sub(1, #tag) == tag and not seen[h] then
        seen[h] = true
        local stored = redis.call('GET', prefix .. hex(h))
        if stored and #stored > SIG_BYTES then
          local same = 0
          for i = 1, SIG_BYTES, 2 do
            if stored:sub(i, i + 1) == sig:sub(i, i + 1) then same = same + 1 end
          end
          local score = (same / N_PERM - CHANCE) / (1 - CHANCE)
          if score >= threshold and score > best_score then
            best, best_score = stored:sub(SIG_BYTES + 1), score
          end
        end
      end
    end
  end
  return best
end

-- Index one article: signature + cluster id under sig_key, and its member in each band's bucket.
local function index(sig_key, value, buckets, members, ttl, cap)
  local now = tonumber(redis.call('TIME')[1])
  redis.call('SET', sig_key, value, 'EX', ttl)
  for i, key in ipairs(buckets) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
    redis.call('ZREMRANGEBYRANK', key, 0, -cap)
    redis.call('ZADD', key, now, members[i])
    redis.call('EXPIRE', key, ttl)
  end
end
"""

# KEYS: bucket keys; ARGV: signature, signature key prefix, threshold, tags...
_FIND = LUA + """
local tags = {}
for b = 1, #KEYS do tags[b] = ARGV[3 + b] end
return nearest(KEYS, tags, ARGV[1], ARGV[2], tonumber(ARGV[3]))
"""

# KEYS: signature key, bucket keys; ARGV: signature value, ttl, cap, members...
_ADD = LUA + """
local buckets, members = {}, {}
for b = 2, #KEYS do buckets[b - 1] = KEYS[b]; members[b - 1] = ARGV[2 + b] end
index(KEYS[1], ARGV[1], buckets, members, tonumber(ARGV[2]), tonumber(ARGV[3]))
return #buckets
"""
_VALUE_BYTES = 2  # uint16 per MinHash value
SIG_BYTES = N_PERM * _VALUE_BYTES
_CHANCE = 1.0 / 65536  # two different 16-bit values match by chance
_DTYPE = np.dtype("<u2")
_WORD = re.compile(r"[^\W_]+")
# Shared by every MinHash: generating the permutations costs more than hashing a short article.
_PERMUTATIONS = MinHash(num_perm=N_PERM, seed=SEED).permutations

assert BANDS * ROWS <= N_PERM and ROWS * 2 >= 2 + TAG_BYTES


def words(text: str) -> list[str]:
    """Case-folded words of letters and digits: punctuation, quote styles and whitespace do not count."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def signature(text: str) -> bytes | None:
    """The b-bit MinHash of the text's word shingles, or None when it is too short to fingerprint."""
    tokens = words(text)
    if len(tokens) < MIN_WORDS:
        return None
    runs = zip(*(tokens[i:] for i in range(SHINGLE)), strict=False)  # every SHINGLE consecutive words
    shingles = [s.encode() for s in set(map(" ".join, runs))]
    minhash = MinHash(num_perm=N_PERM, hashfunc=zlib.crc32, permutations=_PERMUTATIONS, scheme="affine32")
    minhash.update_batch(shingles)
    values: np.ndarray = minhash.hashvalues & 0xFFFF
    return values.astype(_DTYPE).tobytes()


def _values(sig: bytes) -> np.ndarray:
    if len(sig) != SIG_BYTES:
        raise ValueError(f"a signature has {SIG_BYTES} bytes, got {len(sig)}")
    return np.frombuffer(sig, dtype=_DTYPE)


def _estimate(matches: np.ndarray | float) -> np.ndarray:
    """Jaccard from the fraction of equal values, minus the matches expected by chance."""
    return np.clip((np.asarray(matches) - _CHANCE) / (1.0 - _CHANCE), 0.0, 1.0)


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of the two texts' shingle sets."""
    return float(_estimate(np.mean(_values(a) == _values(b))))


def bands(sig: bytes) -> list[bytes]:
    """The LSH band values: ROWS consecutive MinHash values each."""
    width = ROWS * _VALUE_BYTES
    return [sig[i * width:(i + 1) * width] for i in range(BANDS)]


def handle(article_id: str) -> bytes:
    """A short fixed-size stand-in for the article id in bucket members."""
    return hashlib.blake2b(article_id.encode(), digest_size=HANDLE_BYTES).digest()


class NearDupIndex:
    """The MinHash-LSH index shared by all daemons; `add` goes on the caller's transaction."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, threshold: float = 0.6,
                 retention: float = 30 * 86400, *, bucket_bits: int = BUCKET_BITS,
                 bucket_cap: int = BUCKET_CAP) -> None:
        if not 8 <= bucket_bits <= 16:
            raise ValueError("bucket_bits must be between 8 and 16")
        self.redis = redis
        self.keys = keys
        self.threshold = threshold
        self.retention = retention
        self.bucket_bits = bucket_bits
        self.bucket_cap = bucket_cap

    def _slot(self, band: int, value: bytes) -> tuple[str, bytes]:
        """(bucket key, tag): bucket_bits of the band value pick the bucket, 24 more bits make the tag.

        Band values that agree on those bits but differ elsewhere (about 1 in 2^36) only cost a verification.
        """
        bucket = int.from_bytes(value[:2], "big") >> (16 - self.bucket_bits)
        return self.keys.lsh(band, f"{bucket:x}"), value[2:2 + TAG_BYTES]

    def _ttl(self) -> int:
        return max(1, int(self.retention))

    def _layout(self, sig: bytes) -> tuple[list[str], list[bytes]]:
        """The band buckets of `sig` and its tag in each."""
        slots = [self._slot(band, value) for band, value in enumerate(bands(sig))]
        return [key for key, _ in slots], [tag for _, tag in slots]

    async def find(self, sig: bytes) -> str | None:
        """The cluster id of the most similar indexed article at or above the threshold, else None."""
        buckets, tags = self._layout(sig)
        found = await self.redis.execute_command(
            "EVAL", _FIND, len(buckets), *buckets, _values(sig).tobytes(), self.keys.signature(""),
            self.threshold, *tags, **{NEVER_DECODE: []})
        return found.decode() if found else None

    def script_parts(self, article_id: str, sig: bytes) -> tuple[list[str], list[str | bytes | float]]:
        """KEYS and ARGV for a script that finds the cluster and indexes the article (see publish.py):
        KEYS signature key, buckets...; ARGV signature, key prefix, threshold, cap, tags..., members..."""
        buckets, tags = self._layout(sig)
        h = handle(article_id)
        keys = [self.keys.signature(h.hex()), *buckets]
        args: list[str | bytes | float] = [_values(sig).tobytes(), self.keys.signature(""),
                                            self.threshold, self.bucket_cap, *tags, *(t + h for t in tags)]
        return keys, args

    def add(self, pipe: Pipeline, article_id: str, cluster_id: str, sig: bytes) -> None:
        """Queue the index writes for one article on `pipe` (a MULTI/EXEC pipeline the caller executes)."""
        _values(sig)  # checks its size
        buckets, tags = self._layout(sig)
        h = handle(article_id)
        keys = [self.keys.signature(h.hex()), *buckets]
        args = [sig + cluster_id.encode(), self._ttl(), self.bucket_cap, *(tag + h for tag in tags)]
        # EVAL, not EVALSHA: inside MULTI a NOSCRIPT (after a Redis restart) would fail the whole transaction.
        pipe.eval(_ADD, len(keys), *keys, *args)
