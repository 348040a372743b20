"""The HTTP server (``vqclip serve``): the app factory (``app``), dynamic batching
(``batcher``), settings (``config``), the loaded models and indexes (``runtime``), the
routes, schemas and the static web page. Import what you need from the submodules; they
need the ``server`` extra (FastAPI, uvicorn, python-multipart, prometheus-client)."""

__all__: list[str] = []
