"""Zero-shot classification: templates, label embeddings vs a float64 reference, the
on-disk label cache, and bad input."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vqclip.errors import InvalidInputError
from vqclip.jobs.classify import ZeroShotClassifier, check_labels, label_embeddings
from vqclip.jobs.templates import SINGLE_TEMPLATE, format_prompts, read_lines, resolve_templates
from vqclip.tokenizer import tokenize

LABELS = ["a red circle", "a blue square", "a green triangle"]


# ----- templates -----
def test_builtin_template_sets():
    ens = resolve_templates("ensemble", "{}")
    short = resolve_templates("short", "{}")
    assert len(ens) == 80 and len(set(ens)) == 80
    assert len(short) == 7 and set(short) <= set(ens)  # the short set was selected from the 80
    assert all(t.count("{}") == 1 for t in ens)
    assert resolve_templates("single", "{}") == [SINGLE_TEMPLATE]
    assert resolve_templates(None, "{}") == ["{}"]  # the model's own default
    assert resolve_templates("default", "a photo of a {}.") == ["a photo of a {}."]


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my prompts\n\na drawing of {}\n  {} on a wall  \n", encoding="utf-8")
    assert resolve_templates(str(f), "{}") == ["a drawing of {}", "{} on a wall"]
    f.write_text("no placeholder here\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="exactly one"):
        resolve_templates(str(f), "{}")


def test_non_utf8_files_are_refused(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9 {}\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        resolve_templates(str(f), "{}")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        read_lines(f, "label file")


def test_unknown_template_name_lists_the_choices():
    with pytest.raises(InvalidInputError, match="ensemble"):
        resolve_templates("imagenet-81", "{}")


def test_prompts_keep_literal_braces():
    assert format_prompts(["{x}"], ["a {} here"]) == ["a {x} here"]


def test_bad_label_lists():
    with pytest.raises(InvalidInputError, match="no labels"):
        check_labels([])
    with pytest.raises(InvalidInputError, match="blank"):
        check_labels(["cat", "  "])
    with pytest.raises(InvalidInputError, match="twice"):
        check_labels(["cat", "cat"])


# ----- values vs a float64 reference on the torch module -----
def _reference_label_embeddings(m, labels, templates):
    with torch.no_grad():
        ids = torch.from_numpy(tokenize(format_prompts(labels, templates)))
        e = m.encode_text(ids).double()
    e = e / e.norm(dim=-1, keepdim=True)
    e = e.view(len(labels), len(templates), -1).mean(1)
    return (e / e.norm(dim=-1, keepdim=True)).numpy()


def test_label_embeddings_match_reference(tiny, tmp_path):
    enc = tiny.encoder()
    templates = resolve_templates("short", "{}")
    emb, cached = label_embeddings(enc, LABELS, templates, cache_dir=tmp_path)
    ref = _reference_label_embeddings(tiny.clip(), LABELS, templates)
    assert emb.shape == (3, 32) and emb.dtype == np.float32 and not cached
    # float32 encoder vs float64 averaging: differences are float32 rounding of unit vectors.
    np.testing.assert_allclose(emb, ref, atol=2e-6)


def test_probabilities_match_reference(tiny, tmp_path):
    enc = tiny.encoder()
    clf = ZeroShotClassifier(enc, LABELS, "single", cache_dir=tmp_path)
    px = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        img = tiny.clip().encode_image(torch.from_numpy(px)).double()
    img = (img / img.norm(dim=-1, keepdim=True)).numpy()
    txt = _reference_label_embeddings(tiny.clip(), LABELS, ["a photo of a {}."])
    logits = enc.logit_scale * img @ txt.T
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    preds = clf.classify_pixels(px, top_k=10)  # k above the label count gives every label
    for row, p in zip(ref, preds):
        assert [x.label for x in p] == [LABELS[j] for j in np.argsort(-row, kind="stable")]
        # logit_scale 100 amplifies float32 cosine rounding (~1e-7) to ~1e-5 in the logits.
        np.testing.assert_allclose([x.prob for x in p], np.sort(row)[::-1], atol=1e-4)
        assert abs(sum(x.prob for x in p) - 1) < 1e-5


def test_top_k_below_one_is_refused(tiny, tmp_path):
    clf = ZeroShotClassifier(tiny.encoder(), LABELS, cache_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="at least 1"):
        clf.classify_pixels(np.zeros((1, 3, 32, 32), np.float32), top_k=0)


def test_logits_are_the_softmax_input_and_threshold_keeps_the_likely_labels(tiny, tmp_path):
    clf = ZeroShotClassifier(tiny.encoder(), LABELS, "single", cache_dir=tmp_path)
    px = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    every = clf.classify_pixels(px, top_k=10)
    for p in every:
        logits = np.array([x.logit for x in p], np.float64)
        soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose([x.prob for x in p], soft, atol=1e-6)  # float32 softmax of the same logits
        assert all(abs(x.logit) <= clf.encoder.logit_scale + 1e-4 for x in p)  # logit scale x a cosine
    kept = clf.classify_pixels(px, top_k=10, threshold=0.34)
    for p, k in zip(every, kept):
        assert k == [x for x in p if x.prob >= 0.34]  # best first still; a row may keep none
    assert clf.classify_pixels(px, top_k=10, threshold=1.0) == [[x for x in p if x.prob >= 1.0] for p in every]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.5", True])
def test_a_threshold_outside_0_1_is_refused(tiny, tmp_path, threshold):
    clf = ZeroShotClassifier(tiny.encoder(), LABELS, cache_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="probability from 0 to 1"):
        clf.classify_pixels(np.zeros((1, 3, 32, 32), np.float32), threshold=threshold)


def test_to_dict_shows_probabilities_or_logits():
    from vqclip.jobs.classify import ImageResult, Prediction

    r = ImageResult("a.png", [Prediction("cat", 0.9, 3.5)])
    assert r.to_dict() == {"image": "a.png", "labels": [{"label": "cat", "prob": 0.9}]}
    assert r.to_dict(logits=True) == {"image": "a.png", "labels": [{"label": "cat", "logit": 3.5}]}


def test_a_label_too_long_is_refused_or_truncated(tiny, tmp_path):
    from vqclip.errors import TextTooLongError

    long_label = " ".join(["word"] * 100)  # 100 tokens: past the 77-token context
    with pytest.raises(TextTooLongError, match="truncate=True") as e:
        ZeroShotClassifier(tiny.encoder(), [long_label, "cat"], "single", cache_dir=tmp_path)
    assert "--truncate" in e.value.cli  # the CLI's wording names its flag
    clf = ZeroShotClassifier(tiny.encoder(), [long_label, "cat"], "single", cache_dir=tmp_path, truncate=True)
    assert clf.text_embeddings.shape == (2, 32)


# ----- cache -----
def test_second_run_encodes_no_text(tiny, tmp_path):
    enc = tiny.encoder()
    first = ZeroShotClassifier(enc, LABELS, "ensemble", cache_dir=tmp_path)
    assert enc.session.texts == 3 * 80 and not first.text_from_cache
    enc2 = tiny.encoder()  # a fresh process would start from nothing but the cache
    second = ZeroShotClassifier(enc2, LABELS, "ensemble", cache_dir=tmp_path)
    assert second.text_from_cache and enc2.session.texts == 0
    np.testing.assert_array_equal(first.text_embeddings, second.text_embeddings)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]  # atomic writes leave no temp files


def test_cache_key_covers_model_templates_and_labels(tiny, tmp_path):
    ZeroShotClassifier(tiny.encoder(), LABELS, "single", cache_dir=tmp_path)
    for enc, labels, tmpl in [(tiny.encoder(), LABELS, "short"), (tiny.encoder(), LABELS[:2], "single"),
                              (tiny.encoder(seed=1), LABELS, "single")]:
        clf = ZeroShotClassifier(enc, labels, tmpl, cache_dir=tmp_path)
        assert not clf.text_from_cache and enc.session.texts > 0


def _scribble(f):  # other numbers of the same shape, the recorded key and digest kept
    with np.load(f) as d:
        emb, key, digest = d["emb"], d["key"], d["sha256"]
    np.savez(f.with_suffix(".tmp.npz"), emb=np.roll(emb, 1, axis=0), key=key, sha256=digest)
    f.with_suffix(".tmp.npz").replace(f)


def _other_key(f):  # a verified file written for other labels, put in this one's place
    with np.load(f) as d:
        emb = d["emb"]
    np.savez(f.with_suffix(".tmp.npz"), emb=emb, key=np.array("0" * 64),
             sha256=np.array(__import__("hashlib").sha256(emb.tobytes()).hexdigest()))
    f.with_suffix(".tmp.npz").replace(f)


def _flip_a_stored_byte(f):  # damage inside a member: the zip's own CRC no longer matches
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [lambda f: f.write_bytes(b"PK garbage"), _scribble, _other_key,
                                    _flip_a_stored_byte],
                         ids=["garbage", "scribbled", "other-key", "flipped-byte"])
def test_a_cache_that_does_not_verify_is_recomputed(tiny, tmp_path, caplog, damage):
    # On the module's own logger: other suites raise the root logger's level for the session.
    caplog.set_level(logging.WARNING, logger="vqclip.jobs.classify")
    first = ZeroShotClassifier(tiny.encoder(), LABELS, "single", cache_dir=tmp_path)
    [f] = list(tmp_path.glob("*.npz"))
    damage(f)
    enc = tiny.encoder()
    again = ZeroShotClassifier(enc, LABELS, "single", cache_dir=tmp_path)
    assert not again.text_from_cache and enc.session.texts == 3
    np.testing.assert_array_equal(first.text_embeddings, again.text_embeddings)
    assert "does not verify" in caplog.text
    assert ZeroShotClassifier(tiny.encoder(), LABELS, "single", cache_dir=tmp_path).text_from_cache


def test_a_cache_root_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from vqclip._files import cache_root
    from vqclip.errors import InvalidInputError

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "afile"))
    with pytest.raises(InvalidInputError, match="is a file, not a folder"):
        cache_root()


# ----- files -----
def test_bad_images_are_reported_and_the_rest_classified(tiny, images, tmp_path):
    good = [images.png(tmp_path / f"g{i}.png", i) for i in range(3)]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    broken = images.truncated(tmp_path / "broken.png")
    paths = [str(good[0]), str(empty), str(good[1]), str(broken), str(tmp_path / "missing.png"), str(good[2])]
    clf = ZeroShotClassifier(tiny.encoder(), LABELS, cache_dir=tmp_path / "cache")
    res = clf.classify_paths(paths, top_k=2, batch_size=2)
    assert [r.image for r in res] == paths  # input order kept
    assert [r.error is None for r in res] == [True, False, True, False, False, True]
    assert "empty" in res[1].error and "does not exist" in res[4].error
    for r in res:
        if r.error is None:
            assert len(r.labels) == 2 and r.labels[0].prob >= r.labels[1].prob


# ----- the bundled model knows its world -----
def _shapes_encoder():
    from vqclip.encoder import open_encoder
    from vqclip.errors import CheckpointError

    try:
        return open_encoder("shapes-clip")
    except CheckpointError as e:  # the weights are trained by the zoo recipe and committed separately
        pytest.skip(f"bundled shapes-clip weights missing: {e}")


def test_shapes_clip_names_held_out_scenes(tmp_path):
    from vqclip.zoo import shapes

    enc = _shapes_encoder()
    labels = [shapes.label(c, s) for c, s in shapes.all_labels()]
    clf = ZeroShotClassifier(enc, labels, cache_dir=tmp_path)  # the model's own "{}" template
    assert clf.templates == ["{}"]
    scenes = shapes.sample_scenes("test", 0, 40)
    px = enc.preprocess([Image.fromarray(a) for a in shapes.render_batch(scenes, size=64)])
    preds = clf.classify_pixels(px, top_k=1)
    hits = [p[0].label == shapes.label(s.colour, s.shape) for p, s in zip(preds, scenes)]
    # Chance is 1/40. The model card measures colour 100% and shape 96.9% on held-out
    # scenes; 85% leaves room for sampling noise on 40 scenes (a drop below it is a regression).
    assert np.mean(hits) >= 0.85, f"top-1 {np.mean(hits):.0%} on 40 held-out scenes"
    right = next(i for i, h in enumerate(hits) if h)
    assert preds[right][0].prob > 0.2  # a confident answer, not a near-tie among 40 labels
