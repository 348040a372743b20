"""Prompt parsing as VQGAN-CLIP users write prompts, and every mistake in one line."""
import math

import pytest

from vqclip.errors import InvalidInputError
from vqclip.jobs.generate.prompts import Prompt, noise_prompt, parse_prompts


def test_text_weight_stop_and_story_sets():
    sets = parse_prompts("a red star:1|blurry:-0.5:0.3^a blue circle")
    assert sets == [
        (Prompt("text", "a red star", 1.0), Prompt("text", "blurry", -0.5, 0.3)),
        (Prompt("text", "a blue circle", 1.0, -math.inf),),
    ]


def test_escaped_colons_and_image_and_noise_prompts():
    sets = parse_prompts(r"ratio 16\:9 screen:2", image_prompts=["photo.png:0.5"], noise_prompts=[(7, -1.0)])
    assert sets[0] == (Prompt("text", "ratio 16:9 screen", 2.0), Prompt("image", "photo.png", 0.5),
                       Prompt("noise", 7, -1.0))
    assert parse_prompts(None, image_prompts=["a.png"]) == [(Prompt("image", "a.png"),)]


@pytest.mark.parametrize("text,match", [
    ("", "no prompts"), ("   ", "no prompts"), ("a|", "empty prompt"), ("a^^b", "empty prompt"),
    ("a red star:heavy", "weight 'heavy' is not a number"), ("a:1:soon", "stop 'soon' is not a number"),
    ("a:nan", "finite"), (":1", "has no text"),
])
def test_bad_prompts_are_refused_in_one_line(text, match):
    with pytest.raises(InvalidInputError, match=match) as err:
        parse_prompts(text)
    assert "\n" not in str(err.value)


def test_bad_noise_and_image_prompts():
    with pytest.raises(InvalidInputError, match="seed"):
        noise_prompt(-1)
    with pytest.raises(InvalidInputError, match="names no file"):
        parse_prompts("x", image_prompts=[":0.5"])
