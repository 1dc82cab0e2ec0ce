"""Prometheus metrics, all defined here so that every stage counts the same way."""

from __future__ import annotations

import resource

from prometheus_client import Counter, Gauge, Histogram

FEED_POLLS = Counter("ingester_feed_polls_total", "Feed polls by outcome (200, 304, error kind)",
                     ["outcome"])
POLL_SECONDS = Histogram("ingester_poll_seconds", "Feed poll latency, request to parsed entries",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
NEW_ENTRIES = Counter("ingester_new_entries_total", "New feed entries queued for the article stage")
FEED_PARSE_ERRORS = Counter("ingester_feed_parse_errors_total", "Feeds that could not be parsed")
PRIVATE_REFUSALS = Counter("ingester_private_address_refusals_total",
                           "Fetches refused by the private-address guard")

ARTICLES = Counter("ingester_articles_total", "Articles written, by extraction method",
                   ["extraction"])
EXTRACT_SECONDS = Histogram("ingester_extract_seconds", "Time to extract one page",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
EXTRACT_FAILURES = Counter("ingester_extract_failures_total",
                           "Pages whose extraction failed or timed out", ["reason"])
PAGE_RETRIES = Counter("ingester_page_retries_total",
                       "Entries left pending because their page failed for a passing reason")
DUPLICATES = Counter("ingester_duplicates_total",
                     "Exact duplicates dropped and near duplicates clustered", ["kind"])
DEAD_LETTERS = Counter("ingester_dead_letters_total", "Items parked in <namespace>:dead", ["stage"])

MATCHES = Counter("ingester_topic_matches_total", "Articles written to a topic stream", ["topic"])

ALERTS = Counter("ingester_alerts_total", "Alerts by outcome (sent, parked, retried, skipped)",
                 ["notifier", "outcome"])

STREAM_LENGTH = Gauge("ingester_stream_length", "Entries in a stream", ["stream"])
STREAM_LAG = Gauge("ingester_consumer_group_lag", "Entries a consumer group has not yet read",
                   ["stream", "group"])
STREAM_PENDING = Gauge("ingester_consumer_group_pending",
                       "Entries read but not yet acknowledged", ["stream", "group"])
RSS_BYTES = Gauge("ingester_process_rss_bytes", "Resident memory of the daemon process")


def current_rss() -> int:
    """Resident bytes now (Linux), else the peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


RSS_BYTES.set_function(current_rss)  # read at each scrape
