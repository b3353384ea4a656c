"""Build of boxsup_ext and its compiled kernels (boxsup_ext._C).

Install torch first, then build without build isolation so pip does not fetch a second torch:

    pip install torch==2.13.0            # or the CUDA build of your choice
    pip install --no-build-isolation .

CPU kernels are always built. CUDA kernels are built when a CUDA toolkit is found and either a GPU
is visible or FORCE_CUDA=1. Environment: FORCE_CUDA=1, CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

VERSION = "0.1.0"


def fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    fail(
        "boxsup_ext builds against an installed PyTorch, and none was found. Install torch first "
        "(e.g. `pip install torch==2.13.0`), then `pip install --no-build-isolation .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    forced = os.environ.get("FORCE_CUDA", "0") == "1"
    if forced and CUDA_HOME is None:
        fail("FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME to the toolkit (e.g. /usr/local/cuda)")
    if forced and torch.version.cuda is None:
        fail(f"FORCE_CUDA=1 but the installed torch {torch.__version__} is a CPU-only build; install a CUDA build")
    return CUDA_HOME is not None and torch.version.cuda is not None and (forced or torch.cuda.is_available())


def cuda_library_includes() -> list:
    """Header folders of the CUDA math libraries (cuSPARSE, cuBLAS, cuSOLVER) ATen includes.

    A minimal toolkit may lack them; CUDA builds of torch from PyPI bring them in the nvidia-*
    wheels beside torch (site-packages/nvidia/*/include), which then serve instead.
    """
    needed = ("cusparse.h", "cublas_v2.h", "cusolverDn.h")
    missing = [h for h in needed if not os.path.exists(os.path.join(CUDA_HOME, "include", h))]
    if not missing:
        return []
    nvidia_root = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    found = [
        folder
        for folder in sorted(glob.glob(os.path.join(nvidia_root, "*", "include")))
        if any(os.path.exists(os.path.join(folder, h)) for h in missing)
    ]
    if not found:
        fail(f"the CUDA toolkit at {CUDA_HOME} lacks {', '.join(missing)}; install the CUDA math libraries' headers")
    return found


def extensions():
    sources = sorted(
        glob.glob(os.path.join("csrc", "*.cpp"))
        + glob.glob(os.path.join("csrc", "common", "*.cpp"))
        + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    )
    # The torch the kernels are built against is recorded, so a load beside another torch can say so.
    define_macros = [("BOXSUP_VERSION", f'"{VERSION}"'), ("BOXSUP_TORCH_VERSION", f'"{torch.__version__}"')]
    # -fno-trapping-math lets GCC if-convert and vectorise the branch-free exp/log loops; the kernels
    # never rely on floating-point exceptions. Neither compiler may contract a * b + c into an FMA
    # (-ffp-contract=off, --fmad=false): the CPU and CUDA kernels run the same arithmetic
    # (csrc/common/proposal_math.h) and must round the same way.
    # The C++ standard is left to torch.utils.cpp_extension (C++17 or C++20, as the torch build needs).
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    extra_link_args = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp; ATen then uses its native pool.
        cxx_flags.remove("-fopenmp")
        extra_link_args = []
    if want_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        define_macros.append(("BOXSUP_WITH_CUDA", None))
        return [
            CUDAExtension(
                "boxsup_ext._C",
                sources,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr", "--fmad=false"]},
                include_dirs=cuda_library_includes(),
                extra_link_args=extra_link_args,
            )
        ]
    return [
        CppExtension(
            "boxsup_ext._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="boxsup_ext",
    version=VERSION,
    packages=find_packages(include=["boxsup_ext", "boxsup_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
