"""The pipeline on a real 3-master Redis Cluster (loopback), with a hash-tagged namespace.

Each piece that runs a multi-key script, a MULTI/EXEC or a multi-stream XREADGROUP is exercised:
the schedule, the politeness gate, the poller's queueing script, the stream consumer (read, reclaim,
dead letters), the publisher with the near-duplicate index, and then whole daemons.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError
from test_scale import Newsroom, articles, check_once, serve, settled, start, stop_all, wait_for, write_config

from ingester.config import from_dict
from ingester.connection import connect, is_hash_tag, namespace_problem
from ingester.embedded import find_server_binary
from ingester.keys import Keys
from ingester.neardup import NearDupIndex, signature
from ingester.politeness import Gate
from ingester.poll import Poller
from ingester.pool import WorkerPool
from ingester.publish import Publisher
from ingester.record import Article
from ingester.safehttp import SafeClient
from ingester.schedule import FeedSource, Schedule, feed_id
from ingester.streams import Consumer

MASTERS = 3
SLOTS = 16384


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (port + 10000) is free too."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 55000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def _wait_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            pytest.skip(f"redis-server cannot run in cluster mode here: {err[-300:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.skip("redis-server in cluster mode did not start within 10 s")


def form_cluster(ports: list[int]) -> None:
    """Split the slots between the nodes and make them meet (what `redis-cli --cluster create` does)."""
    clients = [redis.Redis(host="127.0.0.1", port=p, decode_responses=True) for p in ports]
    share = SLOTS // len(ports)
    for n, client in enumerate(clients):
        end = SLOTS if n == len(ports) - 1 else (n + 1) * share
        client.execute_command("CLUSTER ADDSLOTS", *range(n * share, end))
    for port in ports[1:]:
        clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = [c.execute_command("CLUSTER INFO") for c in clients]  # parsed into a dict
        if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(ports) for i in infos):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the cluster did not form: {infos}")
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = find_server_binary()
    ports = cluster_ports(MASTERS)
    processes = []
    try:
        for port in ports:
            work = tmp_path_factory.mktemp(f"node{port}")
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(work / "nodes.conf"), "--dir", str(work),
                 "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            processes.append(process)
            _wait_up(port, process)
        form_cluster(ports)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.fixture
def tagged(namespace: str) -> Keys:
    return Keys(f"{{{namespace}}}")


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect(cluster_url)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


def test_a_cluster_needs_a_hash_tagged_namespace() -> None:
    assert is_hash_tag("{ingester}") and is_hash_tag("news{prod}") and is_hash_tag("{a}b{c}")
    assert not is_hash_tag("ingester") and not is_hash_tag("{}ingester") and not is_hash_tag("{ingester")
    assert not is_hash_tag("}x{")
    url = "redis+cluster://127.0.0.1:7000"
    assert "namespace = \"{ingester}\"" in str(namespace_problem(url, "ingester"))
    assert namespace_problem(url, "{ingester}") is None
    assert namespace_problem("redis://127.0.0.1:6379/0", "ingester") is None
    with pytest.raises(ValueError, match="hash-tagged"):
        connect(url, namespace="ingester")
    with pytest.raises(ValueError, match="database 0"):
        connect("redis+cluster://127.0.0.1:7000/2")


async def test_any_listed_node_is_enough_to_find_the_cluster(cluster_url: str) -> None:
    dead = cluster_ports(1)[0]
    client = connect(cluster_url.replace("//", f"//127.0.0.1:{dead},", 1))
    try:
        assert await client.ping()
        nodes = client.get_nodes()  # type: ignore[attr-defined]
        assert len([n for n in nodes if n.server_type == "primary"]) == MASTERS
    finally:
        await client.aclose()


async def test_without_a_hash_tag_multi_key_scripts_fail(cluster: RedisCluster, namespace: str) -> None:
    keys = Keys(namespace)
    publisher = Publisher(cluster, keys, retention=60)  # type: ignore[arg-type]
    text = " ".join(f"word{i}" for i in range(60))
    with pytest.raises((RedisClusterException, ResponseError)):
        await publisher.publish(make_article(1, text, ["t"]), ["http://a.example/x"])


async def test_schedule_gate_and_poller(cluster: RedisCluster, tagged: Keys) -> None:
    room = Newsroom(feeds=3, wire=0, daemons=1, feed_delay=0, page_delay=0)
    runner = await serve(room)
    config = from_dict({"network": {"allow_private": ["127.0.0.0/8"], "host_min_gap": 0, "timeout": "5s"}})
    redis_ = cluster  # typed as Redis by connect(): the commands the daemon uses exist on both
    schedule = Schedule(redis_, tagged, lease=30)  # type: ignore[arg-type]
    gate = Gate(redis_, tagged, concurrency=1, min_gap=0)  # type: ignore[arg-type]
    client = SafeClient(config.network, gate=gate)
    parser = WorkerPool(1, timeout=10)
    try:
        feeds = [FeedSource(f"{room.base()}/feed/{i}") for i in range(room.feeds)]
        assert await schedule.sync(feeds) == (3, 0)
        claimed = await schedule.claim(10)
        assert sorted(claimed) == sorted(feed_id(f.url) for f in feeds)
        assert await schedule.claim(10) == []  # leased
        poller = Poller(redis_, tagged, config, client, parser, schedule)  # type: ignore[arg-type]
        results = [await poller.poll(fid) for fid in claimed]
        assert sum(r.new_entries for r in results) == len(room.all_links())  # shared links queued once
        assert await cluster.xlen(tagged.entries) == len(room.all_links())
        await schedule.reschedule(claimed[0], 0)
        assert await schedule.claim(10) == [claimed[0]]
        assert (await poller.poll(claimed[0])).new_entries == 0  # seen marks
        await gate.hold_off("example.org", 60)
        assert await cluster.pttl(tagged.gate("example.org")) > 59_000
    finally:
        await client.aclose()
        parser.close()
        await runner.cleanup()


async def test_consumer_reads_two_streams_reclaims_and_dead_letters(cluster: RedisCluster,
                                                                   tagged: Keys) -> None:
    streams = [tagged.entries, tagged.topic("a")]
    first, second = (Consumer(cluster, streams, "g", name, dead_stream=tagged.dead,  # type: ignore[arg-type]
                              stage="test", reclaim_idle=0.05, max_attempts=2, block_ms=100)
                     for name in ("one", "two"))
    await first.setup()
    for stream in streams:
        for n in range(3):
            await cluster.xadd(stream, {"n": str(n)})
    first._next_reclaim = second._next_reclaim = float("inf")  # plain reads first
    taken = await first.read()
    assert sorted((m.stream, m.fields["n"]) for m in taken) == sorted(
        (s, str(n)) for s in streams for n in range(3))
    await first.ack(*taken[:4])
    await asyncio.sleep(0.1)
    second._next_reclaim = 0.0
    reclaimed = await second.read()  # the two left pending by "one" (delivery 2)
    assert {(m.stream, m.id) for m in reclaimed} == {(m.stream, m.id) for m in taken[4:]}
    await asyncio.sleep(0.1)
    first._next_reclaim = 0.0
    assert await first.read() == []  # a third delivery would pass max_attempts: dead-lettered
    dead = await cluster.xrange(tagged.dead)
    assert len(dead) == 2 and all(f["reason"] == "gave up after 2 attempts" for _, f in dead)
    for stream in streams:
        assert (await cluster.xpending(stream, "g"))["pending"] == 0


def make_article(n: int, text: str, topics: list[str]) -> Article:
    aid = f"{n:024x}"
    url = f"http://site{n}.example/a"
    return Article(id=aid, url=url, canonical_url=url, feed_url="http://feeds.example/f",
                   source=f"site{n}.example", title=f"Story {n}", text=text, summary="", authors=[],
                   language="en", published_at=None, fetched_at="2025-06-10T08:00:00Z",
                   extraction="trafilatura", cluster_id=aid, topics=topics)


async def test_publisher_and_near_duplicate_index(cluster: RedisCluster, tagged: Keys) -> None:
    near = NearDupIndex(cluster, tagged)  # type: ignore[arg-type]
    publisher = Publisher(cluster, tagged, retention=3600, near=near)  # type: ignore[arg-type]
    consumer = Consumer(cluster, [tagged.entries], "articles", "c",  # type: ignore[arg-type]
                        dead_stream=tagged.dead, stage="articles")
    await consumer.setup()
    rng = random.Random(7)
    text = " ".join(f"w{rng.randrange(400)}" for _ in range(150))
    copies = [make_article(i, f"CITY{i} (Wire) - {text}", ["t"]) for i in range(6)]
    for _ in copies:
        await cluster.xadd(tagged.entries, {"data": "{}"})
    sources = await consumer.read()
    # Racing copies: the near-dup transaction keeps them in one cluster.
    pairs = zip(copies, sources, strict=True)
    fresh = await asyncio.gather(*(publisher.publish(a, [a.url], signature=signature(a.text), source=m,
                                                     group="articles") for a, m in pairs))
    assert all(fresh)
    written = [Article.loads(f["data"]) for _, f in await cluster.xrange(tagged.articles)]
    assert len(written) == 6 and len({a.cluster_id for a in written}) == 1
    assert await cluster.xlen(tagged.topic("t")) == 6
    assert (await cluster.xpending(tagged.entries, "articles"))["pending"] == 0  # acked with the write
    assert not await publisher.publish(copies[0], [copies[0].url])  # exact duplicate
    assert await publisher.known(copies[3].url) == copies[3].id
    sig = signature(text)
    assert sig is not None and await near.find(sig) == written[0].cluster_id
    other = signature(" ".join(f"v{rng.randrange(400)}" for _ in range(150)))
    assert other is not None and await near.find(other) is None


async def test_two_daemons_ingest_and_alert_on_the_cluster(  # type: ignore[no-untyped-def]
        cluster_url: str, cluster: RedisCluster, tagged: Keys, tmp_path: Path) -> None:
    room = Newsroom(feeds=6, wire=2, daemons=2)
    runner = await serve(room)
    agents = [f"cluster-test/daemon-{n}" for n in range(2)]
    daemons = [start(write_config(tmp_path / f"d{n}.toml", room, namespace=tagged.namespace, agent=agent),
                     cluster_url, tmp_path / f"d{n}.log") for n, agent in enumerate(agents)]
    try:
        await wait_for(lambda: settled(cluster, tagged, room, len(room.all_links())), 120,  # type: ignore[arg-type]
                       "all articles and alerts on the cluster")
        written = await articles(cluster, tagged)  # type: ignore[arg-type]
    finally:
        codes = await stop_all(daemons)
        await runner.cleanup()
    logs = "\n".join((tmp_path / f"d{n}.log").read_text()[-1500:] for n in range(2))
    assert codes == [0, 0], f"exit codes {codes}\n{logs}"
    check_once(room, written)
    assert await cluster.xlen(tagged.dead) == 0
    assert set(room.polls) == set(agents)
    # Every key of the namespace lives in the hash tag's slot.
    slot = await cluster.cluster_keyslot(tagged.articles)
    assert await cluster.cluster_countkeysinslot(slot) > 50
