"""Prompt templates for zero-shot classification: which sentences a label is put into.

A template is a string with one ``{}`` where the label goes ("a photo of a {}.").
``resolve_templates`` turns what the user asked for into a list of templates:

- ``"default"``: the model's own template from its zoo record (OpenAI's models:
  ``"a photo of a {}."``; the bundled shapes models: ``"{}"``, labels as the captions say them);
- ``"single"``: OpenAI's single template ``"a photo of a {}."``, whatever the model;
- ``"ensemble"``: OpenAI's 80 ImageNet templates; ``"short"``: the 7-template short ensemble;
- a path to a UTF-8 text file, one template per line (blank lines and ``#`` comments
  are ignored), in the same format as the built-in lists in ``engine/data``.

``read_lines`` reads label files in that same format.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from vqclip._files import read_regular
from vqclip.errors import InvalidInputError

__all__ = ["SINGLE_TEMPLATE", "NAMED_TEMPLATES", "resolve_templates", "read_lines", "format_prompts"]

SINGLE_TEMPLATE = "a photo of a {}."

# Built-in ensembles, by the name the CLI accepts -> file in engine/data.
_NAMED_FILES = {
    "ensemble": "templates_imagenet80.txt",
    "short": "templates_imagenet_short.txt",
}
NAMED_TEMPLATES = ("default", "single", *_NAMED_FILES)


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """Non-empty, non-comment lines of a UTF-8 text file, stripped.

    Raises ``InvalidInputError`` when the file is missing, is not UTF-8, or holds no line.

    Example: ``read_lines("labels.txt", "label file") -> ["a red circle", "a blue square"]``
    """
    path = Path(path)
    try:
        raw = read_regular(path, 64 << 20)  # a FIFO or a device would block or never end
    except OSError as e:
        raise InvalidInputError(f"cannot read {what} {str(path)!r} ({e.strerror}); give a readable text file") from e
    try:
        text = raw.decode("utf-8-sig")  # a BOM from Windows editors is fine
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{what} {str(path)!r} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
        ) from e
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InvalidInputError(f"{what} {str(path)!r} holds no entries; write one per line")
    return lines


def _check_template(t: str, origin: str) -> str:
    if t.count("{}") != 1:
        raise InvalidInputError(
            f"template {t!r} from {origin} must contain exactly one '{{}}' where the label goes"
        )
    return t


def resolve_templates(spec: str | list[str] | tuple[str, ...] | None, default_template: str) -> list[str]:
    """The list of templates for ``spec`` (a name, a file path, or explicit templates).

    ``None`` means ``"default"``, i.e. ``[default_template]``. Each template must contain
    exactly one ``{}``; otherwise ``InvalidInputError``.

    Example: ``resolve_templates("single", "{}") -> ["a photo of a {}."]``
    """
    if spec is None or spec == "default":
        return [_check_template(default_template, "the model's zoo record")]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise InvalidInputError("an empty template list was given; give at least one template with '{}'")
        return [_check_template(str(t), "the given list") for t in spec]
    if spec == "single":
        return [SINGLE_TEMPLATE]
    if spec in _NAMED_FILES:
        text = resources.files("vqclip").joinpath("data", _NAMED_FILES[spec]).read_text(encoding="utf-8")
        lines = [ln.strip() for ln in text.splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("#")]
    path = Path(spec)
    if not path.exists():
        raise InvalidInputError(
            f"templates {spec!r} is neither a built-in set ({', '.join(NAMED_TEMPLATES)}) nor an existing file"
        )
    return [_check_template(t, str(path)) for t in read_lines(path, "template file")]


def format_prompts(labels: list[str], templates: list[str]) -> list[str]:
    """All prompts, label-major: ``[t.format(l) for l in labels for t in templates]``.

    Uses ``str.replace`` rather than ``str.format`` so labels or templates with other
    braces ("{x}") are taken literally.
    """
    return [t.replace("{}", label) for label in labels for t in templates]
