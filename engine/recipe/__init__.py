"""Training of the bundled models (``python -m vqclip.recipe.train``); the runtime never imports it."""

__all__: list[str] = []
