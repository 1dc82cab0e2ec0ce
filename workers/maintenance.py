"""Periodic housekeeping: trim streams by retention and refresh the stream gauges."""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from ingester import metrics
from ingester.config import Config
from ingester.keys import Keys
from ingester.streams import trim

log = structlog.get_logger("ingester.workers.maintenance")


class Maintenance:
    def __init__(self, redis: aioredis.Redis, keys: Keys, config: Config) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config

    def streams(self) -> list[str]:
        return [self.keys.entries, self.keys.articles,
                *(self.keys.topic(t.name) for t in self.config.topics)]

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(stage="maintenance")  # this scheduler run's own task
        try:
            for stream in self.streams():
                trimmed = await trim(self.redis, stream, self.config.streams.retention)
                if trimmed:
                    log.info("stream trimmed", stream=stream, entries=trimmed)
                await self._gauges(stream)
        except Exception as exc:  # Redis away: try again next time
            log.warning("maintenance failed", error=repr(exc))

    async def _gauges(self, stream: str) -> None:
        metrics.STREAM_LENGTH.labels(stream=stream).set(await self.redis.xlen(stream))
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:
            return
        for group in groups:
            labels = {"stream": stream, "group": str(group["name"])}
            metrics.STREAM_PENDING.labels(**labels).set(int(group.get("pending") or 0))
            if group.get("lag") is not None:  # Redis >= 7
                metrics.STREAM_LAG.labels(**labels).set(int(group["lag"]))
