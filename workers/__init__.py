"""The long-running stages of ingester, wired to the scheduler and to Redis streams."""
