"""ParityReport judging: each bound, in its direction; unmeasured figures are not judged."""
from vqclip.export.parity import TOLERANCES, ParityReport


def _report(precision, **figures):
    base = {"max_abs_diff": 0.0, "min_cosine": 1.0, "n_samples": 5}
    base.update(figures)
    bounds = dict(TOLERANCES[precision])
    if base.get("zero_shot_agreement") is None:
        bounds.pop("zero_shot_agreement", None)
    return ParityReport("image_encoder", precision, bounds=bounds, **base)


def test_bounds_match_the_issue():
    assert TOLERANCES == {"fp32": {"max_abs_diff": 1e-4}, "fp16": {"min_cosine": 0.999},
                          "int8": {"min_cosine": 0.99, "zero_shot_agreement": 0.99}}


def test_each_bound_fails_on_its_side():
    assert _report("fp32", max_abs_diff=1e-4).failures() == []
    assert _report("fp32", max_abs_diff=2e-4).failures() == ["image_encoder fp32: max_abs_diff 0.0002 > 0.0001"]
    assert _report("fp16", min_cosine=0.9991).failures() == []
    assert _report("fp16", min_cosine=0.998).failures() == ["image_encoder fp16: min_cosine 0.998 < 0.999"]
    assert _report("int8", min_cosine=0.995, zero_shot_agreement=0.99).failures() == []
    assert _report("int8", min_cosine=0.995, zero_shot_agreement=0.98).failures() == [
        "image_encoder int8: zero_shot_agreement 0.98 < 0.99"]


def test_unmeasured_agreement_is_not_judged():
    assert _report("int8", min_cosine=0.995).failures() == []
    assert _report("int8", min_cosine=0.995).to_dict()["zero_shot_agreement"] is None
