"""The TOML configuration: load, validate, and report errors with the offending key's path."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_NAMESPACE = "ingester"
REDIS_URL_ENV = "INGESTER_REDIS_URL"


class ConfigError(Exception):
    """A configuration problem, phrased as one line naming the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from an int/float (seconds) or a string such as "500ms", "30s", "5m", "1h", "30d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, \"500ms\", \"5m\" or \"1h\"")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30, \"500ms\", \"5m\" or \"1h\", got {value!r}")
    if not math.isfinite(seconds):  # TOML has inf and nan
        raise ValueError(f"a duration must be finite, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _resolve_secret(value: object) -> object:
    """`env:NAME` reads the secret from the environment; anything else is taken literally."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RedisConfig(_Section):
    url: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    data_dir: str = ""  # embedded redis-server files; "" = $XDG_DATA_HOME/ingester

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("must be a non-empty string without spaces")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://",
                   "redis+cluster://", "rediss+cluster://")
        if v is not None and not v.startswith(schemes):
            raise ValueError("must start with " + ", ".join(schemes))
        return v

    @model_validator(mode="after")
    def _cluster_namespace(self) -> RedisConfig:
        from ingester.connection import namespace_problem

        if problem := namespace_problem(self.url, self.namespace):
            raise ValueError(problem)
        return self


class PollingConfig(_Section):
    default_interval: Duration = 300.0
    min_interval: Duration = 1.0
    max_interval: Duration = 86400.0
    concurrency: int = Field(default=100, ge=1)  # polls in flight per daemon

    @model_validator(mode="after")
    def _bounds(self) -> PollingConfig:
        if not self.min_interval <= self.default_interval <= self.max_interval:
            raise ValueError("need min_interval <= default_interval <= max_interval")
        return self


class NetworkConfig(_Section):
    allow_private: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    timeout: Duration = 30.0  # whole request, connect to last byte
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)  # decoded body cap
    max_redirects: int = Field(default=5, ge=0, le=20)
    host_concurrency: int = Field(default=2, ge=1)  # per host, shared by all daemons
    host_min_gap: Duration = 1.0  # between two requests to one host
    user_agent: str = "ingester/0.1 (+https://github.com/ingester/ingester)"

    @field_validator("allow_private", mode="before")
    @classmethod
    def _cidrs(cls, v: object) -> object:
        if not isinstance(v, list):
            raise ValueError("must be a list of CIDRs such as [\"127.0.0.0/8\"]")
        try:
            return [ipaddress.ip_network(str(c), strict=False) for c in v]
        except ValueError as exc:
            raise ValueError(f"not a CIDR: {exc}") from None


class FeedConfig(_Section):
    url: str
    interval: Duration | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        try:
            urlsplit(v).port  # noqa: B018 -- raises ValueError on a port out of 0-65535
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        return v


class SourcesConfig(_Section):
    opml: list[str] = []


class ArticlesConfig(_Section):
    dedup_retention: Duration = 30 * 86400.0
    min_text_length: int = Field(default=200, ge=0)
    max_attempts: int = Field(default=5, ge=1)  # then the entry goes to <namespace>:dead
    reclaim_idle: Duration = 300.0  # pending entries idle this long are taken over
    extract_timeout: Duration = 30.0
    workers: int | None = Field(default=None, ge=1)  # extraction processes; default: CPU count
    concurrency: int = Field(default=16, ge=1)  # articles in flight per daemon
    near_duplicate_threshold: float = Field(default=0.6, gt=0, le=1)


class StreamsConfig(_Section):
    retention: Duration = 7 * 86400.0  # acknowledged entries older than this are trimmed


class TopicConfig(_Section):
    name: str
    query: str
    notify: list[str] = []
    min_score: float = Field(default=0.0, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("must use only letters, digits, '_', '.' and '-'")
        return v

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        from ingester.query import parse  # the query language lives in its own module

        parse(v)  # QueryError is a ValueError: pydantic reports it under this key
        return v


class NotifierConfig(_Section):
    name: str
    type: Literal["slack", "webhook"]
    webhook_url: Secret
    digest: Duration = 0.0
    secret: Secret | None = None
    rate: float = Field(default=1.0, gt=0)  # messages per second

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (or env:NAME)")
        return v

    @model_validator(mode="after")
    def _secret_only_for_webhooks(self) -> NotifierConfig:
        if self.secret is not None and self.type != "webhook":
            raise ValueError("secret is only for type = \"webhook\"")
        return self


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9180, ge=0, le=65535)  # /healthz, /readyz, /metrics; 0 = off
    shutdown_grace: Duration = 10.0


class Config(_Section):
    redis: RedisConfig = RedisConfig()
    polling: PollingConfig = PollingConfig()
    network: NetworkConfig = NetworkConfig()
    feeds: list[FeedConfig] = []
    sources: SourcesConfig = SourcesConfig()
    articles: ArticlesConfig = ArticlesConfig()
    streams: StreamsConfig = StreamsConfig()
    topics: list[TopicConfig] = []
    notifiers: list[NotifierConfig] = []
    server: ServerConfig = ServerConfig()
    base_dir: Path = Field(default=Path("."), exclude=True)  # set by load(): relative paths start here

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        _unique("topics", [t.name for t in self.topics])
        _unique("notifiers", [n.name for n in self.notifiers])
        known = {n.name for n in self.notifiers}
        used: set[str] = set()
        for i, topic in enumerate(self.topics):
            for name in topic.notify:
                if name not in known:
                    raise ValueError(f"topics[{i}].notify: unknown notifier {name!r}")
                used.add(name)
        for i, notifier in enumerate(self.notifiers):
            if notifier.name not in used:
                raise ValueError(f"notifiers[{i}]: notifier {notifier.name!r} is used by no topic")
        return self

    @property
    def redis_url(self) -> str | None:
        return os.environ.get(REDIS_URL_ENV) or self.redis.url

    def path(self, relative: str) -> Path:
        return self.base_dir / relative


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{section}[{i}].name: duplicate name {name!r}")
        seen.add(name)


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith(("function-", "json-or-python", "lax-or-strict")):
            path += f".{part}" if path else part
    return path


def from_dict(data: dict[str, Any], base_dir: Path = Path(".")) -> Config:
    """Validate a parsed TOML document; every error names the key it is about."""
    if "base_dir" in data:  # a field of Config, but set by load(), not by the file
        raise ConfigError("base_dir: unknown key")
    try:
        return Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        path = _key_path(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(f"{path}: {message}" if path else message) from None


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not UTF-8
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(data, base_dir=path.parent)
