"""The edgebot command line: the one composition root that launches and calls services."""

__version__ = "0.1.0"
