"""The ``vqclip`` command line (``vqclip.cli.main``), one module per command group."""
from vqclip.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
