"""ingester: a media-monitoring feed ingester daemon."""

__version__ = "0.1.0"
