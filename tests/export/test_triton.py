"""The Triton model repository: every config.pbtxt parses as Triton's own ModelConfig."""
import pytest
from google.protobuf import text_format

onnx = pytest.importorskip("onnx")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (grpcio) is not installed")

from vqclip.errors import OutputExistsError  # noqa: E402
from vqclip.export.onnx_export import graph_io  # noqa: E402
from vqclip.export.triton import triton_model_name, write_triton_repo  # noqa: E402
from vqclip.manifest import sha256_file  # noqa: E402

_TYPES = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}


def _check_repo(manifest, repo):
    names = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert names == sorted(triton_model_name(manifest.model, g) for g in manifest.graphs)
    for g in manifest.graphs:
        name = triton_model_name(manifest.model, g)
        cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        model_file = repo / name / "1" / "model.onnx"
        assert sha256_file(model_file) == g.sha256  # the very graph the manifest vouches for
        ins, outs = graph_io(onnx.load(str(model_file), load_external_data=False))
        assert cfg.name == name
        assert cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size == 64
        assert cfg.HasField("dynamic_batching")
        for got, want in ((cfg.input, ins), (cfg.output, outs)):
            assert [t.name for t in got] == [s.name for s in want]
            assert [t.data_type for t in got] == [_TYPES[s.dtype] for s in want]
            assert [s.shape[0] for s in want] == ["batch"] * len(want)  # Triton batches dim 0
            assert [list(t.dims) for t in got] == [[d if isinstance(d, int) else -1 for d in s.shape[1:]]
                                                   for s in want]
        cpu_only = [ig.kind for ig in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        assert cpu_only == (g.precision == "int8")  # int8 graphs hold CPU-only kernels


def test_clip_repository(clip_export):
    repo = clip_export.directory.parent / "triton"
    _check_repo(clip_export, repo)
    for name in ("tiny-clip_text_encoder", "tiny-clip_text_encoder_int8"):  # the token axis is dynamic
        cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert list(cfg.input[0].dims) == [-1]


def test_vqgan_repository_has_dynamic_spatial_dims(vqgan_export):
    repo = vqgan_export.directory.parent / "triton"
    _check_repo(vqgan_export, repo)
    cfg = text_format.Parse((repo / "tiny-vqgan_vqgan_decoder" / "config.pbtxt").read_text(),
                            model_config_pb2.ModelConfig())
    assert list(cfg.input[0].dims) == [16, -1, -1] and list(cfg.output[0].dims) == [3, -1, -1]


def test_existing_models_refused_unless_force(clip_export, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(clip_export, repo)
    (repo / "someone_elses_model").mkdir()  # other models in the repository are left alone
    name = triton_model_name(clip_export.model, clip_export.graph("image_encoder"))
    (repo / name / "config.pbtxt").write_text("edited")
    with pytest.raises(OutputExistsError, match="already exist.*--force"):
        write_triton_repo(clip_export, repo)
    assert (repo / name / "config.pbtxt").read_text() == "edited"  # nothing touched
    write_triton_repo(clip_export, repo, force=True)
    _check_repo_names = sorted(p.name for p in repo.iterdir())
    assert "someone_elses_model" in _check_repo_names
    assert (repo / name / "config.pbtxt").read_text().startswith(f'name: "{name}"')
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.tmp-")]  # temp folder gone
