"""vqclip.tokenizer against OpenAI's own tokenizer (clip-anytorch), id for id.

The references are OpenAI's ``SimpleTokenizer`` and ``clip.tokenize`` from the
clip-anytorch package. Its ``clip/__init__.py`` imports torchvision (not installed, and
not wanted), so the test loads ``clip/simple_tokenizer.py`` by file path and runs the
unmodified source of ``clip.tokenize`` taken from ``clip/clip.py``.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import random
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from vqclip.errors import CheckpointError, InputShapeError, TextTooLongError
from vqclip.tokenizer import EOT_TOKEN, SOT_TOKEN, Tokenizer, clean_text, tokenize

CLIP_SPEC = importlib.util.find_spec("clip")
pytestmark = pytest.mark.skipif(
    CLIP_SPEC is None, reason="clip-anytorch (OpenAI's reference tokenizer) is not installed"
)


@pytest.fixture(scope="module")
def openai_tok():
    """OpenAI's SimpleTokenizer, loaded without running clip/__init__.py (torchvision)."""
    path = Path(CLIP_SPEC.origin).parent / "simple_tokenizer.py"
    spec = importlib.util.spec_from_file_location("_openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def openai_tokenize(openai_tok):
    """OpenAI's ``clip.tokenize``, its source unchanged, bound to the reference tokenizer."""
    import typing

    import torch

    source = (Path(CLIP_SPEC.origin).parent / "clip.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "tokenize")
    namespace = {"torch": torch, "Union": typing.Union, "List": typing.List, "_tokenizer": openai_tok}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "clip/clip.py", "exec"), namespace)
    return namespace["tokenize"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


# -- the corpus -----------------------------------------------------------------------

FRAGMENTS = [
    # contractions and apostrophes, straight and curly, upper and lower case
    "you're", "YOU'RE", "can't", "I'LL", "we'd", "she's", "they've", "I'm", "o'clock",
    "rock'n'roll", "it’s", "don’t", "'s", "''", "'", "`quoted`", "l'été", "isn't it?'",
    # punctuation and symbols
    "!", "?!", "...", "—", "–", "-", "--", "(a)", "[b]", "{c}", "<d>", "@user", "#tag", "$5",
    "100%", "a+b=c", "x*y", "1/2", "\\path\\", "|", "~", "^_^", ":-)", ";)", "©", "®", "™",
    "°C", "±", "µm", "§", "¶", "•", "…", "«quoted»", "„low“", "¿qué?", "¡hola!",
    # numbers
    "0", "7", "42", "3.14159", "1,000,000", "2nd", "1st", "10k", "1e-5", "0x1F", "²", "½",
    "٣", "४", "Ⅻ", "①", "１２３",
    # accents and other Latin
    "café", "naïve", "résumé", "Ångström", "straße", "STRASSE", "İstanbul", "ǅ", "ﬁne",
    "Ærøskøbing", "crème brûlée", "Łódź", "São Paulo", "mañana", "ĳ",
    # combining marks (decomposed) and zero-width characters
    "e\u0301", "a\u0308\u0304", "zero\u200bwidth", "join\u200dme", "soft\u00adhyphen",
    "\ufeffbom", "rtl\u200fmark",
    # case folding: U+0345 folds to iota (not a letter for OpenAI's regex), long s to s
    "\u0345", "a\u0345b", "\u0314\u0345", "it'\u017f", "'\u017f", "'\u212a", "\u0390", "ΐ'S",
    # letters assigned in recent Unicode versions (Armenian U+0558, Kawi, Garay, ...)
    "x\u0558!", "\u0c5c", "\U00011f04\U00011f05", "\U00010d50\U00010d51", "\u1c89",
    # other scripts
    "Ελληνικά", "русский", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "ქართული", "Հայերեն",
    "漢字", "中文字符测试", "日本語のテキスト", "カタカナ", "한국어", "ｆｕｌｌｗｉｄｔｈ",
    # emoji: single, skin tone, ZWJ family, flags, keycaps, variation selectors
    "🎉", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "1️⃣", "❤️", "☃", "🐈‍⬛", "🏳️‍🌈",
    # HTML entities, including double-escaped ones (OpenAI unescapes twice)
    "&amp;", "&amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;", "&quot;hi&quot;", "&nbsp;",
    "&eacute;", "&#x1F600;", "&amp;lt;", "&notanentity;", "AT&T", "&",
    # mojibake that ftfy repairs, and text it must leave alone
    "cafÃ©", "â€œquotesâ€\x9d", "Ã¼ber", "schÃ¶n",
    # OpenAI's special-token strings typed into text
    "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "!<|endoftext|>", "a<|endoftext|>b",
    "<|endoftext", "|>",
    # long words and repeated characters
    "a" * 80, "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "ab" * 40, "!!!!!!!!!!!!!!!!!!!!", "hahahahahahahahaha", "zzzzzzzzzzzzzz", "wooooooow",
    "https://example.com/path?q=1&r=2", "user@example.com", "snake_case_name", "CamelCaseName",
    "C++", "e.g.", "U.S.A.", "3D", "mp3", "H2O", "x86_64",
    # ordinary words
    "a", "photo", "of", "the", "cat", "dog", "diagram", "red", "circle", "blue", "square",
]
SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", "\r\n", " \u3000 ", "\u00a0", "\u2009", "\x0b", "\x1c"]
RANDOM_BLOCKS = [
    (0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x590, 0x6FF), (0x900, 0x97F), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x218F),
    (0x2190, 0x22FF), (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xE000, 0xE010),
    (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x0, 0x1F),
]

REFERENCE_EXAMPLES = {  # from REFERENCE.md
    "You should've done this": [592, 1535, 1200, 1700, 589],
    "résumé": [29106, 7054, 4166],
}


def make_corpus(n: int = 2600, seed: int = 0) -> list[str]:
    """``n`` varied strings: each fragment alone, random mixes, random code points, edges."""
    rng = random.Random(seed)
    corpus = ["", " ", "\n\t  ", *REFERENCE_EXAMPLES, *FRAGMENTS]
    corpus += [f.upper() for f in FRAGMENTS] + [f"  {f}  " for f in FRAGMENTS[::3]]
    while len(corpus) < n * 3 // 4:
        k = rng.randint(1, 12)
        parts = [rng.choice(FRAGMENTS) for _ in range(k)]
        corpus.append("".join(p + rng.choice(SEPARATORS) for p in parts))
    while len(corpus) < n:
        lo, hi = rng.choice(RANDOM_BLOCKS)
        chars = [chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 20))]
        corpus.append("".join(chars))
    return corpus


CORPUS = make_corpus()


# -- parity ---------------------------------------------------------------------------


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 2000
    assert len(set(CORPUS)) > 0.9 * len(CORPUS)


@pytest.mark.parametrize("text,ids", REFERENCE_EXAMPLES.items())
def test_reference_examples(tok, text, ids):
    assert tok.encode(text) == ids


def test_encode_matches_openai_on_corpus(tok, openai_tok):
    ours = tok.encode_batch(CORPUS)
    mismatches = [(t, o, r) for t, o in zip(CORPUS, ours) if o != (r := openai_tok.encode(t))]
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ, first: {mismatches[:3]}"


def test_single_encode_matches_batch(tok):
    sample = CORPUS[::50]
    assert [tok.encode(t) for t in sample] == tok.encode_batch(sample)


def test_decode_matches_openai(tok, openai_tok):
    for text in CORPUS[::5]:
        ids = openai_tok.encode(text)
        assert tok.decode(ids) == openai_tok.decode(ids), text
    specials = [SOT_TOKEN, 320, 2368, EOT_TOKEN]
    assert tok.decode(np.array(specials)) == openai_tok.decode(specials)


def test_padded_arrays_match_clip_tokenize(tok, openai_tokenize):
    fits = [t for t in CORPUS if len(tok.encode(t)) <= 75]
    assert len(fits) > 1500
    ours = tok(fits)
    ref = openai_tokenize(fits).numpy()
    assert ours.dtype == np.int64 and ours.shape == ref.shape == (len(fits), 77)
    np.testing.assert_array_equal(ours, ref)


def test_truncate_matches_clip_tokenize(tok, openai_tokenize):
    long = [t for t in CORPUS if len(tok.encode(t)) > 75]
    long += ["a photo of " * 60, "🎉" * 100, "word " * 76, "word " * 75, "word " * 74]
    for context_length in (77, 16):
        ours = tok(long, context_length=context_length, truncate=True)
        ref = openai_tokenize(long, context_length=context_length, truncate=True).numpy()
        np.testing.assert_array_equal(ours, ref)
    assert (ours[:, -1] == EOT_TOKEN).all()


def test_module_level_tokenize_is_the_default_instance(tok):
    np.testing.assert_array_equal(tokenize(["a red circle", ""]), tok(["a red circle", ""]))
    assert tokenize("a cat").shape == (1, 77)


def test_boundary_75_tokens_fits_76_does_not(tok):
    assert tok.encode("word " * 75) == [2653] * 75  # one token per word
    assert tok("word " * 75)[0, 76] == EOT_TOKEN
    with pytest.raises(TextTooLongError):
        tok("word " * 76)


# -- errors ---------------------------------------------------------------------------


def test_500_token_text_raises_text_too_long(tok):
    text = " ".join(["cat"] * 500)
    with pytest.raises(TextTooLongError) as info:
        tok(["fine", text])
    msg = str(info.value)
    assert "text 1" in msg and "has 502 tokens" in msg and "at most 77 (75 + start/end)" in msg
    assert "truncate=True" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [b"bytes", None, 42, ["ok", 3], ("ok", b"x")])
def test_non_str_input_raises_input_shape_error(tok, bad):
    with pytest.raises(InputShapeError, match="expected str"):
        tok(bad)


def test_non_str_encode_and_bad_context(tok):
    with pytest.raises(InputShapeError, match="decode bytes"):
        tok.encode(b"abc")
    with pytest.raises(InputShapeError, match="context_length"):
        tok("a", context_length=1)
    with pytest.raises(InputShapeError, match=r"\[0, 49408\)"):
        tok.decode([1, 49408])
    with pytest.raises(InputShapeError):
        tok.decode([-1])


def test_empty_batch_and_empty_text(tok):
    assert tok([]).shape == (0, 77)
    np.testing.assert_array_equal(tok("")[0, :3], [SOT_TOKEN, EOT_TOKEN, 0])


def test_bad_vocab_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        Tokenizer(str(tmp_path / "missing.txt.gz")).encode("a")
    not_gzip = tmp_path / "plain.txt"
    not_gzip.write_text("hello")
    with pytest.raises(CheckpointError, match="not gzip"):
        Tokenizer(str(not_gzip)).encode("a")
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version\nh e\n"))
    with pytest.raises(CheckpointError, match="usable merge lines"):
        Tokenizer(str(short)).encode("a")


# -- packaging, laziness, threads -----------------------------------------------------


def test_vocabulary_and_licence_ship_in_the_package(openai_tok):
    data = resources.files("vqclip").joinpath("data")
    vocab = data.joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    ref = (Path(CLIP_SPEC.origin).parent / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert hashlib.sha256(vocab).hexdigest() == hashlib.sha256(ref).hexdigest()
    assert "MIT License" in data.joinpath("LICENSE-openai-clip.txt").read_text(encoding="utf-8")
    setup_py = (Path(__file__).parents[1] / "setup.py").read_text(encoding="utf-8")
    assert '"data/*"' in setup_py  # package_data carries engine/data into wheels


def test_import_does_no_work():
    code = (
        "import sys, vqclip.tokenizer as t; "
        "assert t._default is None; "
        "assert not {'tokenizers', 'ftfy'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_first_use_from_many_threads():
    fresh = Tokenizer()  # not yet built: the threads race to build it
    texts = CORPUS[:400]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = fresh(texts[i::8], truncate=True)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(8):
        np.testing.assert_array_equal(results[i], Tokenizer()(texts[i::8], truncate=True))


def test_clean_text_follows_openai():
    assert clean_text("  Caf&amp;eacute;\n\t BAR  ") == "café bar"
    assert clean_text("cafÃ©") == "café"  # ftfy repairs mojibake


def test_plain_ascii_shortcut_is_exact():
    """clean_text skips ftfy + unescape for printable ASCII without '&': prove it a no-op."""
    from vqclip.tokenizer import _unescape_and_fix

    rng = random.Random(1)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    texts += [t for t in CORPUS if t.isascii() and t.isprintable() and "&" not in t]
    texts += ["<b>x</b>", "a;b", "#39;", "lt;", "\\x00", "don't", "''quoted''", "--", "..."]
    changed = [t for t in texts if _unescape_and_fix(t) != t]
    assert not changed, changed[:5]

