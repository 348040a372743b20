"""CLIP's text tokenizer: OpenAI's byte-level BPE, id for id, on a fast Rust engine.

The vocabulary is OpenAI's merges file shipped in ``engine/data`` (MIT, see
``engine/data/LICENSE-openai-clip.txt``). The pipeline, and where each step runs:

1. Cleaning, in Python, exactly as OpenAI does it: ``ftfy.fix_text``, HTML unescape
   twice, strip, collapse whitespace runs to one space, lower-case.
2. Splitting into words, in Python with the ``regex`` module and OpenAI's split rule
   (contractions, letter runs, single digits, runs of other symbols; the literal
   special-token strings are words of their own). Doing this step here rather than in
   the Rust pre-tokenizer keeps two OpenAI quirks exact: which characters count as
   whitespace is the ``regex`` module's Unicode rule, and a literal ``<|endoftext|>``
   typed into the text becomes the special token only where OpenAI's alternation order
   makes it one (not after other symbols, as in ``"!<|endoftext|>"``). The Rust
   pre-tokenizer's regex engine splits some characters differently (older Unicode
   tables, case-folded property classes; benchmarks/RESULTS.md), so it is not used here.
3. Byte-level mapping and BPE merges, in Rust (Hugging Face ``tokenizers``), with the
   ``</w>`` end-of-word suffix. Hugging Face's own ``CLIPTokenizerFast`` is not used: it
   replaces ftfy with NFC normalisation and differs from OpenAI on some inputs
   (transformers #12142, #22166, #26887).

``tests/test_tokenizer.py`` checks the ids against OpenAI's ``SimpleTokenizer`` and
``clip.tokenize`` on a generated corpus of several thousand strings.

Errors: a text too long for the context with ``truncate=False`` raises
``TextTooLongError``; anything but ``str`` (``bytes``, ``None``, numbers) raises
``InputShapeError`` (a ``ValueError`` and a ``VqclipError``, so the CLI and server
report it like every other bad input).

Example:
    >>> from vqclip.tokenizer import tokenize
    >>> tokenize(["a photo of a cat"]).shape
    (1, 77)
"""
from __future__ import annotations

import gzip
import html
import logging
import threading
from collections.abc import Sequence
from importlib import resources

import numpy as np

from vqclip.errors import CheckpointError, InputShapeError, TextTooLongError

__all__ = [
    "Tokenizer",
    "tokenize",
    "default_tokenizer",
    "clean_text",
    "SOT_TOKEN",
    "EOT_TOKEN",
    "VOCAB_SIZE",
    "CONTEXT_LENGTH",
]

logger = logging.getLogger(__name__)

SOT_TOKEN = 49406  # <|startoftext|>, first token of every sequence
EOT_TOKEN = 49407  # <|endoftext|>, last token; the text encoder pools at its position (largest id)
VOCAB_SIZE = 49408  # 2 x 256 byte symbols + 48,894 merges + 2 special tokens
CONTEXT_LENGTH = 77  # every released CLIP model's text context

_SOT_TEXT = "<|startoftext|>"
_EOT_TEXT = "<|endoftext|>"
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # the merges file holds more lines; OpenAI used these
_EOW = "</w>"  # end-of-word suffix on the last symbol of every word

# OpenAI's word-splitting rule: the special tokens, English contractions, runs of
# letters, single digits, runs of anything else that is not whitespace. Applied to
# lower-cased text, so the case-insensitive flag only matters for the special tokens.
_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def _printable_bytes() -> list[int]:
    """Bytes whose Latin-1 character is visible: they stand for themselves."""
    return [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes, in OpenAI's (= GPT-2's) vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the other 68 bytes
    (controls, space, NBSP, soft hyphen) are shifted to U+0100 onwards, in byte order,
    so that no symbol is whitespace or a control character. Returns the list indexed by
    vocabulary position; ``_byte_table()`` gives the byte -> symbol map.
    """
    printable = _printable_bytes()
    n_shifted = 256 - len(printable)
    return [chr(b) for b in printable] + [chr(0x100 + i) for i in range(n_shifted)]


def _byte_table() -> dict[str, int]:
    """Symbol -> byte, the inverse of the byte-level mapping (used by ``decode``)."""
    printable = _printable_bytes()
    shifted = sorted(set(range(256)) - set(printable))
    return dict(zip(_byte_symbols(), printable + shifted))


def clean_text(text: str) -> str:
    """OpenAI's text cleaning: ftfy, HTML unescape twice, whitespace collapse, lower-case.

    Printable ASCII without ``&`` skips ftfy and the unescaping: every ftfy fix acts on
    non-ASCII characters, control characters, line breaks or HTML entities, so both are
    the identity there (``tests/test_tokenizer.py`` checks the shortcut against the full
    cleaning). ftfy is most of the tokenizer's time on plain captions.

    Example: ``clean_text("  Caf&amp;eacute;\\n\\t BAR ")`` -> ``"café bar"``.
    """
    import regex

    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = _unescape_and_fix(text)
    return regex.sub(r"\s+", " ", text.strip()).strip().lower()


def _unescape_and_fix(text: str) -> str:
    """The ftfy + double HTML unescape part of OpenAI's cleaning."""
    import ftfy  # lazy: ftfy builds large tables on import

    return html.unescape(html.unescape(ftfy.fix_text(text)))


class Tokenizer:
    """OpenAI CLIP's BPE tokenizer. Built on first use; safe to share between threads.

    Args:
        vocab_path: a gzip'd merges file in OpenAI's format; ``None`` uses the bundled one.

    Example:
        >>> tok = Tokenizer()
        >>> tok.encode("You should've done this")
        [592, 1535, 1200, 1700, 589]
        >>> tok(["a cat", "a dog"]).dtype, tok(["a cat", "a dog"]).shape
        (dtype('int64'), (2, 77))
    """

    def __init__(self, vocab_path: str | None = None) -> None:
        self._vocab_path = vocab_path
        self._lock = threading.Lock()
        self._engine = None  # tokenizers.Tokenizer, built by _build()
        self._split = None  # compiled regex
        self._id_to_symbol: list[str] = []
        self._symbol_to_byte: dict[str, int] = {}

    # -- construction -------------------------------------------------------------------

    def _ready(self):
        """The Rust BPE engine, building it (once, under a lock) on first use."""
        engine = self._engine
        if engine is not None:
            return engine
        with self._lock:
            if self._engine is None:
                self._build()
            return self._engine

    def _read_merges(self) -> list[tuple[str, str]]:
        if self._vocab_path is None:
            raw = resources.files("vqclip").joinpath("data", _VOCAB_FILE).read_bytes()
            source = f"engine/data/{_VOCAB_FILE}"
        else:
            source = self._vocab_path
            try:
                with open(source, "rb") as f:
                    raw = f.read()
            except OSError as e:
                raise CheckpointError(
                    f"cannot read BPE merges file {source!r} ({e.strerror}); pass the path "
                    f"of OpenAI's bpe_simple_vocab_16e6.txt.gz or None for the bundled one"
                ) from e
        try:
            lines = gzip.decompress(raw).decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"BPE merges file {source!r} is not gzip'd UTF-8 text ({e}); pass OpenAI's "
                f"bpe_simple_vocab_16e6.txt.gz"
            ) from e
        # Line 0 is a version header; OpenAI's vocabulary uses the next _N_MERGES lines.
        merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise CheckpointError(
                f"BPE merges file {source!r} has {len(merges)} usable merge lines, expected "
                f"{_N_MERGES} pairs; pass OpenAI's bpe_simple_vocab_16e6.txt.gz"
            )
        return merges  # type: ignore[return-value]

    def _build(self) -> None:
        import regex
        from tokenizers import AddedToken, models, pre_tokenizers
        from tokenizers import Tokenizer as RustTokenizer

        merges = self._read_merges()
        symbols = _byte_symbols()
        # Vocabulary order fixes the ids: bytes, bytes ending a word, merges, specials.
        id_to_symbol = symbols + [s + _EOW for s in symbols]
        id_to_symbol += ["".join(m) for m in merges]
        id_to_symbol += [_SOT_TEXT, _EOT_TEXT]
        vocab = {s: i for i, s in enumerate(id_to_symbol)}
        assert len(vocab) == VOCAB_SIZE, len(vocab)  # our invariant: symbols are unique

        bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=_EOW, fuse_unk=False)
        engine = RustTokenizer(bpe)
        # Words arrive joined by single spaces (no word contains one), so a literal split
        # on " " recovers exactly the Python split; then each word's UTF-8 bytes map to
        # symbols. One string per text keeps the Rust side's per-sequence overhead low.
        engine.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(" ", behavior="removed"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        # A word that is exactly a special-token string maps to that id, as in OpenAI. No
        # other word contains one: letter runs have no "<|", symbol runs no letters.
        engine.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in (_SOT_TEXT, _EOT_TEXT)]
        )
        if engine.token_to_id(_SOT_TEXT) != SOT_TOKEN or engine.token_to_id(_EOT_TEXT) != EOT_TOKEN:
            raise RuntimeError("special tokens did not keep their vocabulary ids")  # our bug

        self._split = regex.compile(_SPLIT_PATTERN, regex.IGNORECASE)
        self._id_to_symbol = id_to_symbol
        self._symbol_to_byte = _byte_table()
        self._engine = engine
        logger.debug("built CLIP BPE tokenizer: %d merges, vocabulary %d", len(merges), len(vocab))

    # -- encoding -----------------------------------------------------------------------

    @staticmethod
    def _check_text(text: object, where: str) -> str:
        if not isinstance(text, str):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise InputShapeError(
                f"{where} is {type(text).__name__}, expected str{hint}; pass text as str "
                f"or a list of str"
            )
        return text

    def _joined_words(self, text: str) -> str:
        """The text cleaned and split by OpenAI's rule, words joined by single spaces."""
        self._ready()
        return " ".join(self._split.findall(clean_text(text)))

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start/end tokens.

        Empty or whitespace-only text gives ``[]``. Raises ``InputShapeError`` for non-str.
        Example: ``Tokenizer().encode("résumé")`` -> ``[29106, 7054, 4166]``.
        """
        text = self._check_text(text, "text")
        return self._ready().encode(self._joined_words(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts; the BPE step runs in parallel in Rust."""
        texts = [self._check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        joined = [self._joined_words(t) for t in texts]
        return [e.ids for e in self._ready().encode_batch(joined, add_special_tokens=False)]

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int = CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> np.ndarray:
        """Token ids ready for the text encoder: int64 ``[B, context_length]``.

        Each row is ``[SOT, ids..., EOT, 0, 0, ...]``. A single ``str`` gives ``B = 1``;
        an empty list gives shape ``(0, context_length)``.

        Raises:
            TextTooLongError: a text needs more than ``context_length`` tokens with its
                start/end tokens and ``truncate`` is False. With ``truncate=True`` the
                first ``context_length - 1`` tokens are kept and the last is EOT (as
                OpenAI's ``clip.tokenize``).
            InputShapeError: an item is not ``str``, or ``context_length < 2``.

        Example: ``Tokenizer()("a cat")[0, :4]`` -> ``array([49406, 320, 2368, 49407])``.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            raise InputShapeError(
                f"texts is {type(texts).__name__}, expected str or a sequence of str"
            )
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise InputShapeError(
                f"context_length={context_length!r}, expected an int >= 2 (room for the "
                f"start and end tokens); CLIP models use {CONTEXT_LENGTH}"
            )
        out = np.zeros((len(texts), context_length), dtype=np.int64)  # (B, T), 0 pads
        for i, ids in enumerate(self.encode_batch(texts)):
            n = len(ids) + 2
            if n > context_length:
                if not truncate:
                    preview = texts[i] if len(texts[i]) <= 40 else texts[i][:37] + "..."
                    msg = (f"text {i} ({preview!r}) has {n} tokens, the model takes at most "
                           f"{context_length} ({context_length - 2} + start/end); shorten it")
                    raise TextTooLongError(f"{msg} or pass truncate=True", cli=f"{msg} or pass --truncate")
                ids = ids[: context_length - 2]
            out[i, 0] = SOT_TOKEN
            out[i, 1 : len(ids) + 1] = ids
            out[i, len(ids) + 1] = EOT_TOKEN
        return out

    # -- decoding -----------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids, as OpenAI decodes it: each word followed by one space.

        Special tokens decode to their literal strings; padding zeros are not stripped
        (slice them off first). Bytes that do not form UTF-8 become U+FFFD. Raises
        ``InputShapeError`` for an id outside ``[0, 49408)``.
        Example: ``Tokenizer().decode([320, 2368])`` -> ``"a cat "``.
        """
        self._ready()
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= VOCAB_SIZE):
            raise InputShapeError(
                f"token ids must lie in [0, {VOCAB_SIZE}), got min {flat.min()} max "
                f"{flat.max()}; pass ids produced by this tokenizer"
            )
        symbols = self._id_to_symbol
        text = "".join(symbols[i] for i in flat.tolist())
        data = bytes(self._symbol_to_byte[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(_EOW, " ")


_default: Tokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> Tokenizer:
    """The shared ``Tokenizer`` over the bundled vocabulary (created on first call)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Tokenizer()
    return _default


def tokenize(
    texts: str | Sequence[str],
    context_length: int = CONTEXT_LENGTH,
    truncate: bool = False,
) -> np.ndarray:
    """``default_tokenizer()(texts, context_length, truncate)``: int64 ``[B, context_length]``.

    Example: ``tokenize(["a diagram", "a dog"]).shape`` -> ``(2, 77)``.
    """
    return default_tokenizer()(texts, context_length=context_length, truncate=truncate)
