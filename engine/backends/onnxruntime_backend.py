"""The ONNX Runtime backend: an export folder's graphs in ``onnxruntime`` sessions.

CPU by default. ``device="cuda"`` uses the CUDA execution provider and
``device="tensorrt"`` ONNX Runtime's TensorRT provider (both need ``onnxruntime-gpu``;
neither has been run in this project's own tests, which have no GPU). fp32, fp16 and int8
graphs run alike: the fp16 and int8 graphs keep float32 inputs and outputs.

Text graphs exported with a dynamic token axis (vqclip >= 0.2.1) run each batch cut to
its longest query (``vqclip.backends._io_spec.cut_after_eot``): callers still pass ids
padded to the context length, and get the same embeddings (int8: within its parity bound) for
less work (benchmarks/RESULTS.md, "Dynamic token axis").

Session defaults are chosen for a small, shared CPU (benchmarks/RESULTS.md has the
measurements): one intra-op thread per
CPU this process may use; idle threads sleep rather than spin (spinning threads take the
cores the rest of the process needs); a single inter-op thread with sequential execution
(an encoder is one chain of ops); all graph optimisations; the memory arena and pattern
planner on.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vqclip._cpus import available_cpus, has_vnni, int8_gemm_path
from vqclip.backends._io_spec import GraphSpec, cut_after_eot, specs_of
from vqclip.backends.base import Backend, BackendInfo
from vqclip.errors import BackendUnavailableError, ManifestError
from vqclip.manifest import Manifest, min_row_cosine, read_manifest, verify_sha256

__all__ = ["OnnxRuntimeBackend"]

log = logging.getLogger(__name__)

# Min cosine of each int8 graph's self-test on this CPU, by (graph, self-test) sha256: run once per process.
_SELF_TESTED: dict[tuple, float] = {}

_OPT_LEVELS = ("disable", "basic", "extended", "all")
_DEVICE_PROVIDERS = {  # device -> providers in priority order (CPU last catches unsupported ops)
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailableError(
            "onnxruntime backend: the onnxruntime package is not installed; pip install onnxruntime"
        ) from e
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """Graphs from an export folder, run by ONNX Runtime.

    Args:
        export_dir: a folder written by ``vqclip export`` (``manifest.json`` + graphs).
        precision: "fp32", "fp16" or "int8"; must be among the folder's graphs.
        device: "cpu" (None), "cuda" (CUDA provider) or "tensorrt" (TensorRT provider).
        intra_op_threads: threads inside one op; None -> ``vqclip._cpus.available_cpus()``.
        inter_op_threads: threads across independent ops (1: an encoder is one chain).
        graph_optimization_level: "disable", "basic", "extended" or "all".
        enable_mem_pattern: plan buffers from the first run's shapes and reuse them.
        enable_cpu_mem_arena: keep freed CPU buffers in ORT's arena for reuse.
        allow_spinning: idle intra-op threads spin for work (ORT's own default); off here,
            as spinning threads steal the cores that the rest of the process (image
            decoding, other sessions) and machine need; turn it on for a dedicated CPU.
        dynamic_block_base: > 0 splits each parallel loop into shrinking blocks that
            threads claim as they come free (ORT's ``session.dynamic_block_base``), which
            keeps one descheduled thread from stalling the op on a shared CPU; 0: ORT's
            static split.
        verify: check each graph's sha256 against the manifest before loading it.
        provider_options: per-provider option dicts, e.g. ``{"CUDAExecutionProvider":
            {"device_id": 1}}``.

    Sessions are created on first use of each component (or all at once by ``load()``).
    Raises ``BackendUnavailableError`` if the provider for ``device`` is missing (naming
    the package to install) or the folder has no graph at ``precision``;
    ``ManifestError`` for a missing/unreadable manifest or a graph whose hash differs.

    Example::

        be = OnnxRuntimeBackend("exports/vit-b-32", precision="int8", intra_op_threads=2)
        emb = be.encode_text(ids)  # (B, 512) float32, unit norm
    """

    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, *, precision: str = "fp32", device: str | None = None,
                 intra_op_threads: int | None = None, inter_op_threads: int = 1,
                 graph_optimization_level: str = "all", enable_mem_pattern: bool = True,
                 enable_cpu_mem_arena: bool = True, allow_spinning: bool = False,
                 dynamic_block_base: int = 0, verify: bool = True,
                 provider_options: dict[str, dict[str, Any]] | None = None):
        self._ort = _import_ort()
        device = device or "cpu"
        if device not in _DEVICE_PROVIDERS:
            raise BackendUnavailableError(
                f"onnxruntime backend has no device {device!r}; available: {', '.join(_DEVICE_PROVIDERS)}"
            )
        if graph_optimization_level not in _OPT_LEVELS:
            raise BackendUnavailableError(
                f"graph_optimization_level {graph_optimization_level!r} is not one of {_OPT_LEVELS}"
            )
        self.providers = _DEVICE_PROVIDERS[device]
        installed = self._ort.get_available_providers()
        if self.providers[0] not in installed:
            raise BackendUnavailableError(
                f"onnxruntime backend: device {device!r} needs {self.providers[0]}, which this "
                f"onnxruntime ({self._ort.__version__}) lacks (it has {', '.join(installed)}); "
                "install onnxruntime-gpu in place of onnxruntime"
            )
        self.manifest: Manifest = read_manifest(export_dir, verify=False)  # each graph is hashed as it loads
        super().__init__(precision, vocab_size=self.manifest.vocab_size)
        # text graphs in _cut_tokens run on batches cut to their longest query
        self._graphs, self._cut_tokens = specs_of(self.manifest, precision, "onnx")
        if not self._graphs:
            raise BackendUnavailableError(
                f"{export_dir} has no ONNX graphs at {precision}; it has: "
                f"{', '.join(self.manifest.precisions('onnx')) or 'none'} "
                f"(export with --precision {precision})"
            )
        if device != "cpu" and precision == "int8":
            # Dynamic int8 (DynamicQuantizeLinear + MatMulInteger) has CPU kernels only:
            # those nodes fall back to the CPU, with a copy across the bus around each.
            log.warning("int8 graphs on %s run their quantised MatMuls on the CPU; fp16 is the GPU "
                        "precision", device)
        self.device = device
        self.verify = verify
        self.provider_options = dict(provider_options or {})
        self.options = {
            "intra_op_threads": intra_op_threads or available_cpus(),
            "inter_op_threads": inter_op_threads,
            "graph_optimization_level": graph_optimization_level,
            "enable_mem_pattern": enable_mem_pattern,
            "enable_cpu_mem_arena": enable_cpu_mem_arena,
            "allow_spinning": allow_spinning,
            "dynamic_block_base": dynamic_block_base,
        }
        self._sessions: dict[str, Any] = {}
        self._create_lock = threading.Lock()  # a session is created once, whoever asks first

    def _session_options(self) -> Any:
        ort, o = self._ort, self.options
        so = ort.SessionOptions()
        so.intra_op_num_threads = o["intra_op_threads"]
        so.inter_op_num_threads = o["inter_op_threads"]
        so.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if o["inter_op_threads"] <= 1
                             else ort.ExecutionMode.ORT_PARALLEL)
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[o["graph_optimization_level"]]
        so.enable_mem_pattern = o["enable_mem_pattern"]
        so.enable_cpu_mem_arena = o["enable_cpu_mem_arena"]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if o["allow_spinning"] else "0")
        if o["dynamic_block_base"] > 0:
            so.add_session_config_entry("session.dynamic_block_base", str(o["dynamic_block_base"]))
        return so

    def _session(self, component: str) -> Any:
        sess = self._sessions.get(component)
        if sess is not None:
            return sess
        with self._create_lock:
            return self._sessions.get(component) or self._create_session(component)

    def _create_session(self, component: str) -> Any:
        spec = self.spec(component)
        if self.verify and spec.sha256:
            verify_sha256(spec.path, spec.sha256)
        providers = [(p, self.provider_options.get(p, {})) for p in self.providers]
        try:
            sess = self._ort.InferenceSession(str(spec.path), self._session_options(), providers=providers)
        except self._load_errors() as e:
            raise ManifestError(
                f"onnxruntime {self._ort.__version__} cannot load {spec.path} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); re-export the model with this vqclip"
            ) from e
        # ORT falls back to the CPU silently when a GPU provider fails to initialise.
        if sess.get_providers()[0] != self.providers[0]:
            raise BackendUnavailableError(
                f"onnxruntime could not start {self.providers[0]} for {spec.path.name} (it runs "
                f"{sess.get_providers()}); check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs"
            )
        self._check_io(spec, sess)
        if spec.precision == "int8":
            self._self_test(spec, sess)
        self._sessions[component] = sess
        log.info("loaded %s (%s) with %s", spec.path.name, self.precision, sess.get_providers())
        return sess

    def _self_test(self, spec: GraphSpec, sess: Any) -> None:
        """Run an int8 graph on its recorded inputs, once per graph and process, and refuse
        it when its outputs are off on this CPU (int8 GEMM kernels differ by CPU class)."""
        st, here = spec.selftest, int8_gemm_path()
        key = (spec.sha256 or str(spec.path), st.get("sha256"))
        cos = _SELF_TESTED.get(key)
        made_on = self.manifest.measured_on.get("int8_gemm", "an unrecorded CPU")
        redo = "re-export it on this machine (export_model(..., ['int8'], force=True)) or use precision='fp32'"
        redo_cli = "re-export it on this machine (vqclip export MODEL --precision int8 --force) or use --precision fp32"
        if not st:
            if not has_vnni():
                what = (f"{spec.path.name} was exported by an older vqclip without an int8 self-test, and this CPU's "
                        f"int8 GEMM ({here}) can saturate on such graphs; ")
                raise BackendUnavailableError(what + redo, cli=what + redo_cli)
            return
        path = spec.path.parent / st["file"]
        if self.verify:  # as the graph itself was: a small file, hashed at each load
            verify_sha256(path, st["sha256"])
        if cos is None:
            with np.load(path, allow_pickle=False) as data:
                x = np.ascontiguousarray(data["inputs"], dtype=spec.inputs[0].dtype)
                want = data["outputs"].astype(np.float64)
            (got,) = sess.run([spec.outputs[0].name], {spec.inputs[0].name: x})
            cos = min_row_cosine(got, want)
            _SELF_TESTED[key] = cos
            log.info("%s self-test on this CPU (%s): min cosine %.5f", spec.path.name, here, cos)
        if cos < float(st["min_cosine"]):
            what = (f"{spec.path.name} fails its int8 self-test on this CPU: cosine {cos:.4f} against its recorded "
                    f"outputs, bound {st['min_cosine']} (int8 GEMM here: {here}; validated on: {made_on}); ")
            raise BackendUnavailableError(what + redo, cli=what + redo_cli)

    def _load_errors(self) -> tuple[type[BaseException], ...]:
        # ORT's own exception types (they derive from Exception only) for a graph that
        # does not parse, validate or have kernels; an input error never reaches here.
        state = self._ort.capi.onnxruntime_pybind11_state
        names = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile", "Fail", "NotImplemented")
        return tuple(getattr(state, n) for n in names if hasattr(state, n))

    @staticmethod
    def _check_io(spec: GraphSpec, sess: Any) -> None:
        names = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        want = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        if names != want:
            raise ManifestError(
                f"{spec.path.name} has inputs/outputs {names}, but its manifest says {want}; re-export"
            )

    def _specs(self) -> dict[str, GraphSpec]:
        return self._graphs

    def _missing_hint(self, component: str) -> str:
        return f" (export the model with that component at {self.precision})"

    def load(self) -> None:
        for component in self.components:
            self._session(component)

    def _run(self, component: str, x: np.ndarray) -> np.ndarray:
        spec = self._graphs[component]
        sess = self._session(component)
        if component in self._cut_tokens:
            x = cut_after_eot(x)  # (B, T' <= T): the pooled output sees no padding
        (y,) = sess.run([spec.outputs[0].name], {spec.inputs[0].name: x})
        return y

    def describe(self) -> BackendInfo:
        o = self.options
        return BackendInfo(
            backend=self.name,
            device=self.device,
            precision=self.precision,
            providers=self.providers,
            threads={"intra_op": o["intra_op_threads"], "inter_op": o["inter_op_threads"]},
            components=self.components,
            options={k: v for k, v in o.items() if not k.endswith("_threads")}
            | {"onnxruntime": self._ort.__version__, "export_dir": str(self.manifest.directory)},
        )

    def close(self) -> None:
        self._sessions.clear()
