"""What ingester.speedups.guard_regex_tests saves: extract_sync with and without it, page by page.

    .venv/bin/python bench/speedups_bench.py [--pages N]

Both variants run in this one process, alternating on every page (and which goes first alternates too),
so a drift of the machine's speed during the run weighs on both alike; process CPU time per page. The
pages are ../shared/pages/trafilatura-eval/ with the date and byline searches of bench/ingest_bench.py.
Also checks that both give the same record on every page.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import feed_date, page_files, page_metas, quiet
from ingester import speedups
from ingester.extract import extract_sync

State = list[tuple[object, str, Any]]


def snapshot() -> State:
    """The selectors trafilatura's modules hold now (copies of the lists, which change in place)."""
    return [(module, name, list(value) if isinstance(value, list) else value)
            for module, name, value in speedups.selectors()]


def install(state: State) -> None:
    for module, name, value in state:
        current = getattr(module, name)
        if isinstance(current, list):
            current[:] = value
        else:
            setattr(module, name, value)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    args.add_argument("--pages", type=int, default=None, help="how many pages (default: all 990)")
    files = page_files(args.parse_args().pages)
    metas = page_metas(files)
    quiet()
    speedups.plain_html_elements()  # as in the workers, in both variants
    plain = snapshot()
    speedups.guard_regex_tests()
    guarded = snapshot()
    times: dict[str, list[float]] = {"without": [], "guarded": []}
    same = 0
    for n, (file, (date, author)) in enumerate(zip(files, metas, strict=True)):
        page = gzip.decompress(file.read_bytes())
        call = (page, f"http://127.0.0.{1 + n % 4}:1/page/{n}", "text/html", feed_date(date) is None,
                author is None)
        records = {}
        for label, state in (("without", plain), ("guarded", guarded))[::1 if n % 2 else -1]:
            install(state)
            started = time.process_time()
            records[label] = extract_sync(*call)
            times[label].append(time.process_time() - started)
        same += records["without"] == records["guarded"]
    without, guarded_times = times["without"], times["guarded"]
    print(f"{len(files)} pages, identical records on {same}")
    for label, values in times.items():
        print(f"  {label:8s} mean {statistics.fmean(values) * 1000:6.2f} ms  "
              f"median {statistics.median(values) * 1000:6.2f} ms")
    print(f"  guarded / without: {sum(guarded_times) / sum(without):.3f} (total CPU), median of per-page "
          f"ratios {statistics.median(g / w for w, g in zip(without, guarded_times, strict=True)):.3f}")


if __name__ == "__main__":
    main()
