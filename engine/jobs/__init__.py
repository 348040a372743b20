"""The runtime's jobs: zero-shot classification (``classify``, prompt ``templates``), the
demo (``demo``) and generation (``generate``); search is the index reader's
(``vqclip.index.Index``). Import what you need from the submodules."""

__all__: list[str] = []
