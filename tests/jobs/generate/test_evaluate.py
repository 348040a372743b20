"""The independent judges of generated images: trusted only as far as they read real scenes."""
import numpy as np

from vqclip.jobs.generate.evaluate import judge_run, measure_colour, prompt_list
from vqclip.zoo import shapes


def test_colour_measure_reads_rendered_scenes():
    scenes = shapes.sample_scenes("test", 0, 400)
    images = shapes.render_batch(scenes)  # (400, 64, 64, 3), every background style
    right = [measure_colour(im) == s.colour for im, s in zip(images, scenes)]
    assert np.mean(right) >= 0.99  # measured 1.000 on the first 1,000 test scenes
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert measure_colour(flat) is None  # nothing stands out: no colour, never a guess


def test_prompt_lists_cover_every_class_and_never_share_seeds():
    val, test = prompt_list("val"), prompt_list("test")
    for items in (val, test):
        assert len(items) == 40
        assert sorted((i["colour"], i["shape"]) for i in items) == sorted(shapes.all_labels())
        assert all(i["colour"] in i["text"] and i["shape"] in i["text"] for i in items)
    assert not {i["seed"] for i in val} & {i["seed"] for i in test}
    assert [i["text"] for i in val] != [i["text"] for i in test]


def test_judge_run_reports_rates_and_writes_the_grid(tmp_path):
    from vqclip.jobs.generate import CutoutSpec, GenerateSettings

    items = prompt_list("val")[:2]
    report = judge_run(items, GenerateSettings(steps=2, cutouts=CutoutSpec(cutn=2), save_every=0),
                       grid=tmp_path / "grid.png")
    assert set(report["rates"]) == {"colour", "shape", "both", "clip", "n"} and report["rates"]["n"] == 2
    assert len(report["verdicts"]) == 2 and (tmp_path / "grid.png").is_file()
    v = report["verdicts"][0]
    assert v["shape_ok"] == (v["judge_shape"] == v["shape"])
