"""The dead-letter stream: parked alerts listed and replayed; other stages' entries re-queued."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from test_alerts import (  # the loopback server and helpers, and its fixtures
    Hook,
    Reply,
    Running,
    _acked_all,
    alerter,
    client,
    eventually,
    hook,
    make_article,
    make_config,
    publish,
    slack_path,
)

from ingester import dlq
from ingester.config import Config
from ingester.keys import Keys
from ingester.safehttp import SafeClient
from ingester.streams import Consumer

__all__ = ["client", "hook"]  # fixtures used here


async def park_one(redis: aioredis.Redis, keys: Keys, hook: Hook, client: SafeClient, status: int,
                   error: str, *articles_: int) -> Config:
    config = make_config(hook, [{"name": "newsroom"}])
    hook.on(slack_path(), Reply(status, error))
    await publish(redis, keys, *[make_article(n, cluster=1) for n in articles_ or (1,)])
    run = Running(alerter(redis, keys, config, client))
    await eventually(lambda: _acked_all(redis, keys, len(articles_ or (1,))))
    await run.stop()
    return config


async def test_parked_alert_listed_and_replayed(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                client: SafeClient) -> None:
    config = await park_one(redis, keys, hook, client, 404, "channel_not_found")
    (item,) = await dlq.list_dead(redis, keys)
    assert (item.stage, item.kind, item.notifier, item.topic) == ("notify", "alert", "newsroom", "ceasefire")
    assert item.reason == "HTTP 404: channel_not_found" and item.at is not None and item.is_alert
    assert not await redis.exists(keys.alerted("newsroom", "ceasefire", "a1"))
    assert await dlq.replay(redis, keys, config, client) == (1, 0)  # the channel is back: 200
    assert await dlq.list_dead(redis, keys) == []
    first, again = hook.received
    assert first.body == again.body
    assert await redis.exists(keys.alerted("newsroom", "ceasefire", "a1"))


async def test_replay_that_fails_again_keeps_the_entry(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                       client: SafeClient) -> None:
    config = await park_one(redis, keys, hook, client, 410, "channel_is_archived")
    hook.on(slack_path(), Reply(410, "channel_is_archived"), Reply(500), Reply(500))
    (item,) = await dlq.list_dead(redis, keys)
    assert await dlq.replay(redis, keys, config, client, [item.id]) == (0, 1)
    assert await dlq.replay(redis, keys, config, client, [item.id], attempts=2, backoff=0.01) == (0, 1)
    assert [i.id for i in await dlq.list_dead(redis, keys)] == [item.id]
    assert len(hook.received) == 4


async def test_replay_skips_a_story_alerted_meanwhile(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                      client: SafeClient) -> None:
    # the first copy is parked, the second copy of the same story then goes out
    config = await park_one(redis, keys, hook, client, 404, "channel_not_found", 1, 2)
    assert len(hook.received) == 2
    assert await dlq.replay(redis, keys, config, client) == (1, 0)
    assert len(hook.received) == 2  # nothing sent again
    assert await dlq.list_dead(redis, keys) == []


async def test_unknown_id_fails(redis: aioredis.Redis, keys: Keys, hook: Hook, client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    assert await dlq.replay(redis, keys, config, client, ["1-1"]) == (0, 1)


async def test_other_stage_dead_letter_requeued(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                                client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom"}])
    await redis.xadd(keys.entries, {"data": '{"link": "https://x.example/1"}', "feed": "f1"})
    consumer = Consumer(redis, [keys.entries], "articles", "c1", dead_stream=keys.dead, stage="article")
    await consumer.setup()
    (msg,) = await consumer.read()
    await consumer.dead_letter(msg, "gave up after 5 attempts")
    (item,) = await dlq.list_dead(redis, keys)
    assert (item.stage, item.stream, item.is_alert) == ("article", keys.entries, False)
    assert await dlq.replay(redis, keys, config, client) == (1, 0)
    assert await dlq.list_dead(redis, keys) == []
    (again,) = await consumer.read()
    assert again.fields == {"data": '{"link": "https://x.example/1"}', "feed": "f1"}
    assert hook.received == []


async def test_parked_digest_replayed(redis: aioredis.Redis, keys: Keys, hook: Hook,
                                      client: SafeClient) -> None:
    config = make_config(hook, [{"name": "newsroom", "digest": "1h"}])
    hook.on(slack_path(), Reply(400, "invalid_payload"))
    await publish(redis, keys, make_article(1), make_article(2))
    a = alerter(redis, keys, config, client)
    run = Running(a)
    await eventually(lambda: _acked_all(redis, keys, 2))
    assert await a.flush_digest("newsroom", "ceasefire") == 0
    await run.stop()
    (item,) = await dlq.list_dead(redis, keys)
    assert (item.kind, item.reason) == ("digest", "HTTP 400: invalid_payload")
    assert [s["id"] for s in orjson.loads(item.fields["data"])] == ["a1", "a2"]
    assert await dlq.replay(redis, keys, config, client) == (1, 0)
    assert hook.received[0].body == hook.received[1].body
    assert await redis.exists(keys.alerted("newsroom", "ceasefire", "a2"))
    assert await dlq.list_dead(redis, keys) == []
