"""jaxconv's CPU kernel, compiled on first use and called from XLA through its FFI.

One kernel, ``csrc/kernel_grad.cc``: the kernel gradient of a 3-D conv (2-D as one slab,
1-D as one row) of stride ``s``, input padded by ``lo``, no dilation::

    R[c, a, b, i, j] = sum_{n, d, h, w} x[n, s_d d + c - lo_d, s_h h + a - lo_h,
                                          s_w w + b - lo_w, i] y[n, d, h, w, j]

read where ``x`` and ``y`` are (no im2col); depthwise, ``i = j`` only; in groups, each
group's channels of ``x`` against its channels of ``y``. XLA:CPU's own
route, an im2col and a matmul contracting both operands' rows, ran few-channel layers
at 2-4x the time of one matmul of their FLOPs (``docs/benchmark.md``).

The first call compiles the file with the system's C++ compiler (``$CXX``, else ``c++``
or ``g++``; about 6 s) into ``$JAXCONV_CACHE_DIR`` (default ``~/.cache/jaxconv``), keyed
by the source, the compiler, jaxlib and the CPU; later processes load that build.
Without a compiler, or with ``JAXCONV_NATIVE=0``, :func:`available` is false and
``jaxconv.fast_conv`` keeps XLA's route: the same results to float32 rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

TARGET = "jaxconv_kernel_grad"
SOURCE = "csrc/kernel_grad.cc"


def enabled() -> bool:
    """Whether the kernel may be used: ``JAXCONV_NATIVE`` is not ``0``."""
    return os.environ.get("JAXCONV_NATIVE", "1") != "0"


@functools.cache
def available() -> bool:
    """Whether the kernel is compiled, loaded and registered for the CPU (once a process).

    A failed build warns once, with the compiler's message, and leaves XLA's route."""
    if not enabled():
        return False
    try:
        library = ctypes.CDLL(str(_built()))
    except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        warnings.warn(
            f"jaxconv: the native CPU kernel did not build; XLA's route is used "
            f"(same results, slower kernel gradients): {detail[-2000:]}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    jax.ffi.register_ffi_target(
        TARGET, jax.ffi.pycapsule(library.JaxconvKernelGrad), platform="cpu"
    )
    return True


def kernel_grad(
    x: jax.Array,
    y: jax.Array,
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    lows: tuple[int, ...],
    depthwise: bool,
    groups: int = 1,
) -> jax.Array:
    """``R(x, y)`` above: ``x`` ``(N, *spatial, Cx)``, ``y`` ``(N, *rows, Cy)`` float32, 1-D,
    2-D or 3-D; ``(*kernel_size, Cx, Cy)``, or ``(*kernel_size, 1, Cy)`` depthwise. With
    ``groups`` (channels ordered (group, channel), ``Cy / groups`` a multiple of 8), each
    group's channels of ``x`` against its channels of ``y``: ``(*kernel_size, Cx / groups,
    Cy)``.

    Raises ``RuntimeError`` where the kernel is not :func:`available`."""
    if not available():
        raise RuntimeError(
            "jaxconv's native CPU kernel is not available (JAXCONV_NATIVE=0 or no build)"
        )
    shape = (*kernel_size, 1 if depthwise else x.shape[-1] // groups, y.shape[-1])
    more = 3 - len(kernel_size)  # 1-D as one row of one slab, 2-D as one slab
    x, y = (a.reshape(a.shape[0], *(1,) * more, *a.shape[1:]) for a in (x, y))
    kernel_size, strides = ((1,) * more + tuple(v) for v in (kernel_size, strides))
    lows = (0,) * more + tuple(lows)
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential"
    )
    (kd, kh, kw), (sd, sh, sw), (lo_d, lo_h, lo_w) = (
        tuple(np.int64(v) for v in values) for values in (kernel_size, strides, lows)
    )
    return call(
        x,
        y,
        kd=kd,
        kh=kh,
        kw=kw,
        sd=sd,
        sh=sh,
        sw=sw,
        lo_d=lo_d,
        lo_h=lo_h,
        lo_w=lo_w,
        groups=np.int64(groups),
        depthwise=depthwise,
    )


def _built() -> Path:
    """The compiled library in the cache, built there first if it is not."""
    source = resources.files("jaxconv").joinpath(SOURCE).read_bytes()
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler (set CXX)")
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", *_arch_flags(compiler)]
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            s.encode() if isinstance(s, str) else s
            for s in (source, version, " ".join(flags), jaxlib.__version__, _cpu())
        )
    ).hexdigest()[:16]
    cache = Path(os.environ.get("JAXCONV_CACHE_DIR") or Path.home() / ".cache" / "jaxconv")
    library = cache / f"kernel_grad-{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        (Path(scratch) / "kernel_grad.cc").write_bytes(source)
        built = Path(scratch) / "kernel_grad.so"
        command = [compiler, *flags, "-isystem", jax.ffi.include_dir()]
        command += [str(Path(scratch) / "kernel_grad.cc"), "-o", str(built)]
        subprocess.run(command, capture_output=True, text=True, check=True)
        os.replace(built, library)  # atomic: processes building at once each land one
    return library


def _arch_flags(compiler: str) -> list[str]:
    """``-march=native`` where the compiler takes it (the build is cached per CPU)."""
    probe = subprocess.run(
        [compiler, "-march=native", "-x", "c++", "-E", "-", "-o", os.devnull],
        input="",
        capture_output=True,
        text=True,
    )
    return ["-march=native"] if probe.returncode == 0 else []


def _cpu() -> str:
    """What the build depends on of this CPU: its architecture and, on Linux, its flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"
