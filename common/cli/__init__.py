"""`fedtl`, the command line: the edge where arguments become one RunConfig (or a daemon's
options); nothing in the core imports it."""

from common.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
