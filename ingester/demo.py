"""`ingester demo`: the whole pipeline, offline, on two small local news sites.

It serves two feeds and their article pages on loopback, runs the daemon against them with a
private redis-server, and prints what reaches the streams: four stories, one of them a syndicated
copy clustered with its original, one link reached twice and written once, two topic matches.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from ingester.keys import Keys
from ingester.record import Article

if TYPE_CHECKING:
    from workers.daemon import Daemon

TALKS = [
    "Negotiators from both sides met for a third day on Tuesday as diplomats pressed for a ceasefire "
    "that would halt the fighting along the front line before the winter sets in.",
    "The draft agreement seen by reporters provides for a thirty-day truce, an exchange of prisoners "
    "and a joint commission to monitor violations, according to two officials familiar with the talks.",
    "Humanitarian agencies said a pause in the shelling would let convoys reach towns that have been "
    "cut off from food and medicine for weeks, and urged both delegations to sign without delay.",
    "The mediators said the remaining disputes concern the withdrawal of heavy weapons and the "
    "sequencing of the prisoner exchange, and that they hoped to announce a deal by the weekend.",
]
BIKES = [
    "The city council voted on Monday to build twelve kilometres of protected bike lanes across the "
    "centre, after a year of consultation with residents, shop owners and cycling groups.",
    "Construction is due to start in the spring and the first corridor, along the river, should open "
    "before the summer holidays, the transport department said in a statement.",
    "Opponents argued that the plan removes too many parking spaces, while supporters pointed to a "
    "rise in cycling since the pandemic and to the safety record of similar schemes elsewhere.",
]
GRAIN = [
    "Grain exports through the port rose by a fifth last month compared with a year earlier, as new "
    "storage terminals opened and rail deliveries from the interior recovered.",
    "Traders said wheat and maize shipments to North Africa and the Middle East drove most of the "
    "increase, while freight rates eased after a busy autumn.",
    "Port officials expect volumes to keep growing next year if the dredging of the main channel is "
    "completed on schedule and insurance costs continue to fall.",
]


def _page(title: str, paragraphs: list[str], dateline: str = "") -> bytes:
    body = "".join(f"<p>{dateline if i == 0 else ''}{p}</p>" for i, p in enumerate(paragraphs))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title></head>"
            f"<body><nav><a href='/'>Home</a> <a href='/world'>World</a></nav><article><h1>{title}</h1>"
            f"<p class=byline>By Demo Staff</p>{body}</article>"
            f"<footer>© Demo News. All rights reserved.</footer></body></html>").encode()


def _site(a: str, b: str) -> dict[str, tuple[str, bytes]]:
    """Site A (`a`, RSS) and site B (`b`, Atom) as path -> (content type, body)."""
    rss_items = "".join(
        f"<item><title>{t}</title><link>{a}{p}</link><guid>{a}{p}</guid>"
        f"<pubDate>Tue, 10 Jun 2025 0{i}:00:00 GMT</pubDate><description>{d}</description></item>"
        for i, (t, p, d) in enumerate([
            ("Ceasefire talks enter third day", "/world/ceasefire-talks", TALKS[0]),
            ("Council approves bike lanes", "/city/bike-lanes", BIKES[0]),
            ("Grain exports rise by a fifth", "/business/grain", GRAIN[0])]))
    atom_entries = "".join(
        f"<entry><title>{t}</title><link href='{u}'/><id>{u}</id>"
        f"<updated>2025-06-10T0{i}:30:00Z</updated><summary>{d}</summary></entry>"
        for i, (t, u, d) in enumerate([
            ("Diplomats push for truce as talks go on", f"{b}/wire/truce-talks", TALKS[0]),
            ("Talks on a ceasefire (via partner site)",
             f"{a}/world/ceasefire-talks?utm_source=partner&utm_medium=rss", TALKS[0])]))
    return {
        "/feed.xml": ("application/rss+xml", (
            "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Demo News A</title>"
            f"<link>{a}/</link><description>demo</description>{rss_items}</channel></rss>").encode()),
        "/atom.xml": ("application/atom+xml", (
            "<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
            f"<title>Demo Wire B</title><id>{b}/</id><updated>2025-06-10T02:00:00Z</updated>"
            f"{atom_entries}</feed>").encode()),
        "/world/ceasefire-talks": ("text/html", _page("Ceasefire talks enter third day", TALKS)),
        "/city/bike-lanes": ("text/html", _page("Council approves bike lanes", BIKES)),
        "/business/grain": ("text/html", _page("Grain exports rise by a fifth", GRAIN)),
        "/wire/truce-talks": ("text/html", _page("Diplomats push for truce as talks go on", TALKS,
                                                 dateline="GENEVA (Demo Wire) - ")),
    }


@contextmanager
def serve_demo_sites() -> Iterator[tuple[str, str]]:
    """Serve both sites on one loopback port, as http://localhost:P (A) and http://127.0.0.1:P (B)."""
    pages: dict[str, tuple[str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type, body = pages.get(self.path.split("?")[0], ("text/plain", b""))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    a, b = f"http://localhost:{port}", f"http://127.0.0.1:{port}"
    pages.update(_site(a, b))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield a, b
    finally:
        server.shutdown()
        server.server_close()


def demo_config(a: str, b: str, data_dir: Path) -> str:
    return f"""
[redis]
data_dir = "{data_dir}"
namespace = "demo"

[polling]
default_interval = "1h"

[network]
allow_private = ["127.0.0.0/8", "::1/128"]
host_min_gap = 0

[server]
port = 0  # no health endpoint for the demo

[[feeds]]
url = "{a}/feed.xml"

[[feeds]]
url = "{b}/atom.xml"

[[topics]]
name = "ceasefire"
query = '(ceasefire OR "cease-fire" OR truce OR armistice OR "peace talks")'
"""


EXPECTED_ARTICLES = 4


async def _watch(daemon: Daemon, keys: Keys, seconds: float) -> list[Article]:
    runner = asyncio.create_task(daemon.run())
    articles: list[Article] = []
    try:
        async with asyncio.timeout(seconds):
            await daemon.ready.wait()
            redis = daemon.redis
            while len(articles) < EXPECTED_ARTICLES and not runner.done():
                entries = await redis.xrange(keys.articles)
                articles = [Article.loads(fields["data"]) for _, fields in entries]
                await asyncio.sleep(0.2)
    except TimeoutError:
        pass
    daemon.stop.set()
    await runner
    return articles


def run_demo(seconds: float = 60.0) -> int:
    from workers.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="ingester-demo-") as tmp, serve_demo_sites() as (a, b):
        config_path = Path(tmp) / "demo.toml"
        config_path.write_text(demo_config(a, b, Path(tmp) / "redis"))
        print(f"demo: site A at {a}, site B at {b}; embedded redis-server in {tmp}")
        daemon = Daemon(config_path, consumer_name="demo")
        articles = asyncio.run(_watch(daemon, Keys("demo"), seconds))
    ids = {art.id: art for art in articles}
    for art in articles:
        copy = f" (copy of {ids[art.cluster_id].source})" if art.cluster_id != art.id else ""
        print(f"- [{art.source}] {art.title!r}: {len(art.text)} chars via {art.extraction}, "
              f"topics={art.topics}{copy}")
    copies = sum(1 for art in articles if art.cluster_id != art.id)
    print(f"demo: {len(articles)} articles written from 5 feed entries (one link reached twice), "
          f"{copies} syndicated copy clustered with its original")
    return 0 if len(articles) == EXPECTED_ARTICLES and copies == 1 else 1
