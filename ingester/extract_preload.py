"""Imported once by the worker pools' forkserver (the Extractor's preload module): trafilatura is
imported and warmed up there, so every extraction worker forked from it starts warm."""

from ingester.extract import warm_up

warm_up()
