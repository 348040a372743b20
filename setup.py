"""Builds vqclip: the packages ``engine`` and ``export`` and the C++ extension ``engine._kernels``."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _openmp_flags(build_ext_cls):
    """Probe -fopenmp with a test compile; the kernels still build single-threaded without it."""

    class BuildExt(build_ext_cls):
        def build_extensions(self):
            from pybind11.setup_helpers import has_flag

            if self.compiler.compiler_type == "unix" and has_flag(self.compiler, "-fopenmp"):
                for ext in self.extensions:
                    if ext.name == "engine._kernels":
                        ext.extra_compile_args.append("-fopenmp")
                        ext.extra_link_args.append("-fopenmp")
            super().build_extensions()

    return BuildExt


def kernel_extensions():
    """The pybind11 extension engine._kernels built from csrc/*.cpp.

    One binary holds every SIMD variant (AVX-512, AVX2, scalar) through per-function
    target attributes, so no -march flag is passed: the module runs on any x86-64 or ARM
    CPU and picks its path at run time. The optional CUDA extension is built separately
    (see csrc/cuda/build.py) only on request.
    """
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    if not sources:
        return [], {}
    from pybind11.setup_helpers import Pybind11Extension, build_ext

    ext = Pybind11Extension("engine._kernels", sources, cxx_std=17, depends=["csrc/topk.h"])
    ext.extra_compile_args.append("-O3")
    return [ext], {"build_ext": _openmp_flags(build_ext)}


ext_modules, cmdclass = kernel_extensions()

setup(
    name="vqclip",
    version="0.1.0",
    description="An optimised inference engine for CLIP and VQGAN",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["engine", "engine.*", "export", "export.*"]),
    package_data={"engine": ["zoo/weights/*", "zoo/*.md", "data/*"]},
    include_package_data=True,
    install_requires=[
        # torch is a range that the local CPU build (2.13.0) satisfies; CI pins it first.
        "torch>=2.2",
        "numpy>=1.24",
        "pillow>=10.0",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "ftfy>=6.1",
        "regex>=2023.0",
        "tokenizers>=0.15",  # Rust BPE engine under engine.tokenizer
        "onnxscript>=0.1",  # torch's ONNX exporter (dynamo=True): export, and vqclip demo's cached export
    ],
    extras_require={
        # The reference packages the parity tests compare against. clip-anytorch and
        # taming-transformers are installed with --no-deps (see README), not listed here.
        "test": ["pytest>=8", "transformers>=4.40", "tritonclient[grpc]>=2.40", "psutil>=5.9"],
        "bench": ["faiss-cpu>=1.8", "transformers>=4.40", "psutil>=5.9"],
        "server": [],
        "gpu": ["onnxruntime-gpu>=1.17"],
        "trt": ["tensorrt>=10.0"],
    },
    entry_points={"console_scripts": ["vqclip=engine.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
