"""The exported graphs: contract I/O, dynamic axes, EOT pooling, fp16 placement, parity."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from vqclip.export.graphs import components_for
from vqclip.export.onnx_export import graph_io

EOT = 49407


def session(manifest, component, precision="fp32"):
    path = manifest.path(manifest.graph(component, precision))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_clip_graph_io_follows_the_contract(clip_export):
    want = {
        "image_encoder": ([("pixels", "float32", ["batch", 3, 32, 32])], [("embedding", "float32", ["batch", 32])]),
        "text_encoder": ([("input_ids", "int64", ["batch", "tokens"])], [("embedding", "float32", ["batch", 32])]),
    }
    files = {g.file for g in clip_export.graphs}
    assert files == {"image_encoder.onnx", "image_encoder.fp16.onnx", "image_encoder.int8.onnx",
                     "text_encoder.onnx", "text_encoder.fp16.onnx", "text_encoder.int8.onnx"}
    for g in clip_export.graphs:
        model = onnx.load(str(clip_export.path(g)))
        onnx.checker.check_model(model, full_check=True)
        ins, outs = graph_io(model)
        assert [(s.name, s.dtype, list(s.shape)) for s in ins] == want[g.component][0], g.file
        assert [(s.name, s.dtype, list(s.shape)) for s in outs] == want[g.component][1], g.file
        assert [s.to_dict() for s in g.inputs] == [s.to_dict() for s in ins]  # manifest = graph
        assert any(o.domain in ("", "ai.onnx") and o.version == clip_export.opset for o in model.opset_import)


@pytest.mark.parametrize("batch", [1, 7])
def test_image_encoder_matches_torch_at_any_batch(clip_export, tiny_clip, batch):
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    ref = F.normalize(tiny_clip.encode_image(x), dim=-1).detach().numpy()  # the model's own method
    got = session(clip_export, "image_encoder").run(None, {"pixels": x.numpy()})[0]
    assert got.shape == (batch, 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in the graph
    assert np.abs(got - ref).max() <= 1e-4


def test_text_encoder_pools_at_eot_wherever_it_sits(clip_export, tiny_clip):
    # EOT right after the start token, in the middle, and in the last slot; zero padding
    # after it; the reference is CLIP.encode_text (torch argmax on int64).
    ids = torch.zeros(4, 77, dtype=torch.int64)
    ids[:, 0] = 49406
    for row, pos in enumerate([1, 9, 40, 76]):
        ids[row, 1:pos] = torch.arange(100, 100 + pos - 1)
        ids[row, pos] = EOT
    ref = F.normalize(tiny_clip.encode_text(ids), dim=-1).detach().numpy()
    got = session(clip_export, "text_encoder").run(None, {"input_ids": ids.numpy()})[0]
    assert got.shape == (4, 32) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4
    # Pooling really follows the EOT: moving it changes the embedding.
    moved = ids.clone()
    moved[0, 1], moved[0, 2] = 500, EOT
    got2 = session(clip_export, "text_encoder").run(None, {"input_ids": moved.numpy()})[0]
    assert np.abs(got2[0] - got[0]).max() > 1e-3


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_text_graphs_take_a_batch_padded_to_its_longest_query(clip_export, tiny_clip, precision):
    # The token axis is dynamic: a batch cut after its last end-of-text token gives the
    # embeddings of the full 77-token batch (the transformer is causal). fp32 and fp16 run
    # the same arithmetic on fewer positions (rounding only); int8 quantises activations
    # per tensor, padding included, so it is held to its parity bound against torch instead.
    ids = torch.zeros(3, 77, dtype=torch.int64)
    ids[:, 0] = 49406
    for row, pos in enumerate([1, 4, 6]):
        ids[row, 1:pos] = torch.arange(300, 300 + pos - 1)
        ids[row, pos] = EOT
    sess = session(clip_export, "text_encoder", precision)
    full = sess.run(None, {"input_ids": ids.numpy()})[0]
    ref = F.normalize(tiny_clip.encode_text(ids), dim=-1).detach().numpy().astype(np.float64)
    for rows, keep in ((3, 7), (3, 12), (3, 40), (1, 2)):  # (1, 2): start and end of text only
        short = sess.run(None, {"input_ids": ids[:rows, :keep].numpy()})[0]
        assert short.shape == (rows, 32)
        if precision == "int8":
            assert (short * ref[:rows]).sum(1).min() >= 0.99  # unit vectors: the cosine
        elif precision == "fp16":  # fp16 kernels differ by CPU (AVX512-FP16 or not): its own bound
            assert np.abs(short - full[:rows]).max() <= 1e-3
        else:
            assert np.abs(short - full[:rows]).max() <= 1e-5


def test_a_text_graph_that_ignores_the_token_axis_fails_parity(tiny_clip, tmp_path):
    # Exported with the token axis fixed at 77, the graph passes the 77-token parity inputs
    # but not the short-query case: export refuses it.
    from dataclasses import replace

    from vqclip.errors import ParityError
    from vqclip.export.onnx_export import export_onnx
    from vqclip.export.parity import measure
    from vqclip.manifest import TensorSpec

    text = components_for(tiny_clip)[1]
    fixed = replace(text, inputs=(TensorSpec("input_ids", "int64", ("batch", 77)),),
                    dynamic_shapes={"input_ids": {0: text.dynamic_shapes["input_ids"][0]}})
    export_onnx(fixed, tmp_path / "text_encoder.onnx")
    with pytest.raises(ParityError, match=r"cannot run inputs of shape \[\[3, 9\]\].*dynamic axis was lost"):
        measure(fixed, "fp32", tmp_path / "text_encoder.onnx")
    assert measure(replace(fixed, parity_more=list), "fp32", tmp_path / "text_encoder.onnx").failures() == []


def test_eot_argmax_runs_on_int32_not_float(clip_export):
    # ArgMax over int64 is missing in some ORT/TensorRT versions; a float cast rounds 49407 in fp16.
    for precision in ("fp32", "fp16", "int8"):
        model = onnx.load(str(clip_export.path(clip_export.graph("text_encoder", precision))))
        model = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
        argmax = [n for n in model.graph.node if n.op_type == "ArgMax"]
        assert len(argmax) == 1, precision
        assert types[argmax[0].input[0]] == onnx.TensorProto.INT32, precision


def test_fp16_graph_keeps_fragile_ops_in_fp32(clip_export):
    for component in ("image_encoder", "text_encoder"):
        # ORT's fusion pass fused each block's QuickGELU (2 blocks per tower) and says so.
        assert clip_export.graph(component, "fp16").notes["fusions"] == {"QuickGelu": 2}
        model = onnx.load(str(clip_export.path(clip_export.graph(component, "fp16"))))
        inits = {i.name: i.data_type for i in model.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in inits.values()  # the weights really are fp16
        producer = {o: n for n in model.graph.node for o in n.output}
        fragile = [n for n in model.graph.node
                   if n.op_type in ("LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceL2")]
        assert fragile
        # No fp32 -> fp16 -> fp32 round trip between kept nodes (it would round the final
        # normalisation to fp16 after all).
        for node in model.graph.node:
            src = producer.get(node.input[0]) if node.input else None
            if node.op_type == "Cast" and src is not None and src.op_type == "Cast":
                tos = [next(a.i for a in n.attribute if a.name == "to") for n in (src, node)]
                assert tos != [onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT], (component, node.name)
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
        types.update({i.name: i.data_type for i in model.graph.initializer})
        for node in fragile:
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, (component, node.name)


@pytest.mark.parametrize("precision,bound", [("fp16", 0.999), ("int8", 0.99)])
def test_reduced_precision_embeddings_stay_close(clip_export, tiny_clip, precision, bound):
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    ref = F.normalize(tiny_clip.encode_image(x), dim=-1).detach().numpy()
    got = session(clip_export, "image_encoder", precision).run(None, {"pixels": x.numpy()})[0]
    assert got.dtype == np.float32  # fp32 I/O whatever the precision inside
    assert (got * ref).sum(1).min() >= bound


def test_parity_figures_recorded_within_bounds(clip_export):
    for g in clip_export.graphs:
        p = g.parity
        assert p["n_samples"] == (5 + 3 if g.component == "text_encoder" else 5)  # + the short-query case
        if g.precision == "fp32":
            assert p["max_abs_diff"] <= 1e-4
        else:
            assert p["min_cosine"] >= p["bounds"]["min_cosine"]
            assert p["zero_shot_agreement"] is not None  # a probe was given
            assert 0.0 <= p["zero_shot_agreement"] <= 1.0
            if g.precision == "int8":
                assert p["bounds"]["zero_shot_agreement"] == 0.99
                assert p["zero_shot_agreement"] >= 0.99


def test_vqgan_graphs_have_dynamic_spatial_dims(vqgan_export, vqgan_model):
    assert {g.file for g in vqgan_export.graphs} == {"vqgan_decoder.onnx", "vqgan_decoder.fp16.onnx",
                                                     "vqgan_encoder.onnx", "vqgan_encoder.fp16.onnx"}
    dec, enc = session(vqgan_export, "vqgan_decoder"), session(vqgan_export, "vqgan_encoder")
    # Not 1x1: the tiny model's GroupNorm has one channel per group, so a 1x1 latent
    # normalises a single value and amplifies rounding noise 1000x (eps 1e-6); the zoo's
    # models have 16 channels per group there.
    for b, h, w in [(1, 2, 3), (2, 4, 7), (1, 9, 3)]:
        z = torch.randn(b, 16, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            ref = vqgan_model.decode(z).numpy()
        got = dec.run(None, {"latent": z.numpy()})[0]
        assert got.shape == (b, 3, 2 * h, 2 * w)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        img = torch.rand(b, 3, 2 * h, 2 * w, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            ref_z = vqgan_model.encode_latent(img).numpy()
        got_z = enc.run(None, {"image": img.numpy()})[0]
        assert got_z.shape == (b, 16, h, w)
        assert np.abs(got_z - ref_z).max() <= 1e-4 * np.abs(ref_z).max()


def test_vqgan_fp16_decoder_stays_close(vqgan_export, vqgan_model):
    z = torch.randn(2, 16, 5, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = vqgan_model.decode(z).numpy().reshape(2, -1)
    got = session(vqgan_export, "vqgan_decoder", "fp16").run(None, {"latent": z.numpy()})[0].reshape(2, -1)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.999


def test_text_wrapper_equals_model_method(tiny_clip):
    # The graph's pooling (int32 argmax + gather) is the model's (int64 argmax + index).
    text = components_for(tiny_clip)[1]
    ids = text.parity_inputs()[0]
    with torch.no_grad():
        torch.testing.assert_close(text.module(ids), F.normalize(tiny_clip.encode_text(ids), dim=-1))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_graph_forms_equal_the_towers(tiny, stem):
    # The traced forms (patch stem as a MatMul; last block for the pooled token only) are
    # the functions ImageEncoder / TextEncoder compute; only float32 summation order
    # differs (~1e-7 here), while a wrong row, weight slice, token or mask row moves the
    # unit-length outputs by > 1e-2. The text ids put end-of-text in the second, middle
    # and last slots, so the mask row and the pooled token vary per sample.
    from dataclasses import replace

    from vqclip.models.clip import CLIP

    torch.manual_seed(0)
    model = CLIP(replace(tiny.clip().config, vision_stem=stem)).eval()
    image, text = components_for(model)
    assert image.traced() is image.graph and text.traced() is text.graph
    ids = text.parity_inputs()[0]
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
            torch.testing.assert_close(image.graph(x), image.module(x), atol=1e-6, rtol=0)
            torch.testing.assert_close(text.graph(ids[:batch]), text.module(ids[:batch]), atol=1e-6, rtol=0)
        torch.testing.assert_close(text.graph(ids), text.module(ids), atol=1e-6, rtol=0)


def _weight_matmuls(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and n.input[1] in inits]


@pytest.mark.parametrize("component, layers", [("image_encoder", "vision_layers"), ("text_encoder", "text_layers")])
def test_int8_graphs_quantise_every_weight_matmul(clip_export, component, layers):
    # The patch embedding is a MatMul in the exported graph (not a Conv), and the last
    # block's split query / key-value weights are initializers, so dynamic int8 covers
    # them all: no float MatMul/Gemm/Conv with a weight initializer is left in the int8
    # graphs, while the fp32 graphs have them all (4 per block, +1 for the last block's
    # split, the projection, and the image's patch embedding).
    fp32 = onnx.load(str(clip_export.path(clip_export.graph(component, "fp32"))))
    int8 = onnx.load(str(clip_export.path(clip_export.graph(component, "int8"))))
    assert "Conv" not in {n.op_type for n in fp32.graph.node}
    extra = 3 if component == "image_encoder" else 2
    assert len(_weight_matmuls(fp32)) == 4 * clip_export.config[layers] + extra
    assert _weight_matmuls(int8) == []
