"""Builds vqclip: one import package, ``vqclip``, and its C++ extension ``vqclip._kernels``.

The repository keeps the runtime in ``engine/`` and the exporter in ``export/``; they
install as ``vqclip`` and ``vqclip.export`` (``package_dir``), so nothing lands in
site-packages under a generic top-level name.
"""
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOT = Path(__file__).parent


def _build_ext_class(build_ext_cls):
    """build_ext that probes -fopenmp and compiles the optional CUDA sources with nvcc."""

    class BuildExt(build_ext_cls):
        def build_extensions(self):
            from pybind11.setup_helpers import has_flag

            # OpenMP by a test compile; without it the kernels build single-threaded.
            if self.compiler.compiler_type == "unix" and has_flag(self.compiler, "-fopenmp"):
                for ext in self.extensions:
                    if ext.name == "vqclip._kernels":
                        ext.extra_compile_args.append("-fopenmp")
                        ext.extra_link_args.append("-fopenmp")
            super().build_extensions()

        def build_extension(self, ext):
            cuda_sources = getattr(ext, "cuda_sources", None)
            if cuda_sources:
                ext.extra_objects = list(ext.extra_objects or []) + self._nvcc(ext, cuda_sources)
            super().build_extension(ext)

        def _nvcc(self, ext, sources):
            import sysconfig

            import pybind11

            out_dir = Path(self.build_temp) / "cuda"
            out_dir.mkdir(parents=True, exist_ok=True)
            archs = os.environ.get("VQCLIP_CUDA_ARCHS", "80;90").split(";")
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
            gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX: newer GPUs
            objects = []
            for src in sources:
                obj = out_dir / (Path(src).stem + ".o")
                if obj.exists() and obj.stat().st_mtime > Path(src).stat().st_mtime and not self.force:
                    objects.append(str(obj))  # up to date: nvcc is slow
                    continue
                cmd = [ext.nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", *gencode,
                       "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"],
                       "-c", src, "-o", str(obj)]
                print(" ".join(cmd))
                subprocess.check_call(cmd)
                objects.append(str(obj))
            return objects

    return BuildExt


def cuda_extension():
    """vqclip._kernels_cuda, only when VQCLIP_BUILD_CUDA=1 and nvcc is found.

    Opt-in so that a CPU-only build (CI) never depends on a CUDA toolkit; the CPU
    kernels and their import never touch it. NOT YET RUN ON A GPU: benchmarks/gpu_check.sh
    builds and tests it there.
    """
    if os.environ.get("VQCLIP_BUILD_CUDA") != "1":
        return []
    nvcc_on_path = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             str(Path(nvcc_on_path).resolve().parents[1]) if nvcc_on_path else None, "/usr/local/cuda"]
    for home in filter(None, homes):
        libs = [Path(home) / d for d in ("lib64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib", "lib")]
        lib = next((d for d in libs if (d / "libcudart_static.a").exists()), None)
        nvcc = Path(home) / "bin" / "nvcc"
        if lib and nvcc.exists():
            break
    else:
        raise RuntimeError("VQCLIP_BUILD_CUDA=1 but no CUDA toolkit (bin/nvcc + libcudart_static.a) "
                           "was found; set CUDA_HOME")
    from pybind11.setup_helpers import Pybind11Extension

    # The static runtime: the module then needs only the driver (libcuda) at run time.
    ext = Pybind11Extension("vqclip._kernels_cuda", [], cxx_std=17, library_dirs=[str(lib)],
                            libraries=["cudart_static", "dl", "rt", "pthread"])
    ext.cuda_sources = ["csrc/cuda/topk_cuda.cu"]
    ext.nvcc = str(nvcc)
    return [ext]


def kernel_extensions():
    """The pybind11 extension vqclip._kernels built from csrc/*.cpp.

    One binary holds every SIMD variant (AVX-512, AVX2, scalar) through per-function
    target attributes, so no -march flag is passed: the module runs on any x86-64 or ARM
    CPU and picks its path at run time. The optional CUDA extension is built separately
    (vqclip._kernels_cuda) only with VQCLIP_BUILD_CUDA=1.
    """
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    if not sources:
        return [], {}
    from pybind11.setup_helpers import Pybind11Extension, build_ext

    headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.h"))
    ext = Pybind11Extension("vqclip._kernels", sources, cxx_std=17, depends=headers)
    ext.extra_compile_args.append("-O3")
    return [ext, *cuda_extension()], {"build_ext": _build_ext_class(build_ext)}


def _packages() -> list[str]:
    """``vqclip`` and its subpackages from engine/, ``vqclip.export`` from export/, ``vqclip.bench``
    (what ``vqclip bench`` runs) from benchmarks/."""
    runtime = ["vqclip"] + [f"vqclip.{p}" for p in find_namespace_packages("engine", exclude=["*__pycache__*"])
                            if (ROOT / "engine" / p.replace(".", "/") / "__init__.py").is_file()]
    return runtime + ["vqclip.export", "vqclip.bench"]


ext_modules, cmdclass = kernel_extensions()

# `vqclip serve`: request.form(max_part_size) needs starlette >= 0.40 (fastapi >= 0.115.3);
# abandon_on_cancel needs anyio >= 4.1.
SERVER = ["fastapi>=0.115.3", "uvicorn[standard]>=0.30", "python-multipart>=0.0.18", "prometheus-client>=0.17",
          "anyio>=4.1"]
RAY = ["ray[data]>=2.50,<3", "pyarrow>=14"]
MILVUS = ["pymilvus>=2.5", "milvus-lite>=2.5"]

setup(
    name="vqclip",
    version="0.3.0",
    description="An optimised inference engine for CLIP and VQGAN",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir={"vqclip": "engine", "vqclip.export": "export", "vqclip.bench": "benchmarks"},
    package_data={"vqclip": ["zoo/weights/*", "zoo/*.md", "data/*", "serving/static/*"]},
    include_package_data=True,
    install_requires=[
        # torch is a range that the local CPU build (2.13.0) satisfies; CI pins it first.
        "torch>=2.2",
        "numpy>=1.24",
        "pillow>=10.0",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "onnxscript>=0.2",  # torch.onnx.export(dynamo=True), the exporter `vqclip export` uses
        "safetensors>=0.4",
        "tqdm>=4.60",
        "ftfy>=6.1",
        "regex>=2023.0",
        "tokenizers>=0.15",  # Rust BPE engine under vqclip.tokenizer
        "pyyaml>=6.0",  # taming-transformers run configs (vqclip.checkpoints.vqgan)
    ],
    extras_require={
        # The reference packages the parity tests compare against. clip-anytorch and
        # taming-transformers are installed with --no-deps (see README), not listed here.
        "test": ["pytest>=8", "transformers>=4.40", "tritonclient[grpc]>=2.40", "psutil>=5.9", *SERVER,
                 "httpx>=0.27",  # FastAPI's TestClient and the load-run clients
                 "playwright>=1.40",  # drives Debian's Chromium in the page tests (no browser download)
                 "faiss-cpu>=1.8", "kornia>=0.7", "matplotlib>=3.7",  # the bench jobs' smoke tests: peers, plots
                 *RAY, *MILVUS],  # the cluster path, on a local Ray and Milvus Lite
        # `vqclip bench`: the peers it measures (kornia: the VQGAN-CLIP step) and its plots
        "bench": ["faiss-cpu>=1.8", "transformers>=4.40", "kornia>=0.7", "matplotlib>=3.7", *SERVER, "httpx>=0.27"],
        "server": SERVER,
        "ray": RAY,  # `vqclip index build --ray`; pyarrow alone reads and imports shards
        "milvus": MILVUS,  # `vqclip index export-milvus`, milvus:// targets; Lite is the embedded engine
        "gpu": ["onnxruntime-gpu>=1.17"],
        "trt": ["tensorrt>=10.0"],
    },
    entry_points={"console_scripts": ["vqclip=vqclip.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
