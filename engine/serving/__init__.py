"""The HTTP server (``vqclip serve``): app, batcher, schemas and the static web page."""

__all__: list[str] = []
