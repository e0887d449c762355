"""Strided and transposed convolutions that XLA:CPU runs fast, as pure functions.

Layouts are those of :mod:`jaxconv.ops`: channels-last arrays, and one kernel
``(*k, a // g, b)`` shared by a pair of adjoint ops:

- :func:`conv` ``C``: the strided conv from ``a`` to ``b`` channels (``kernel`` in
  the conv layout ``(*k, in // g, out)``);
- :func:`conv_transpose` ``T``: the transposed conv from ``b`` to ``a`` channels
  (``kernel`` in the transposed-conv layout ``(*k, out // g, in)``).

Per spatial dimension, with stride ``s``, dilation ``d``, taps ``j < k`` and
``pads`` ``(lo, hi)`` (channels contracted within each group)::

    C(x)[i] = sum_j xp[i*s + j*d] K[j]                 xp: x padded by (lo, hi)
    T(y)[o] = sum_{i, j : i*s + j*d = o + lo} y[i] K[j]   0 <= o < (n-1)s + d(k-1) + 1 - lo - hi

``T`` is the adjoint of ``C`` in its input, ``<C(x, K), y> = <x, T(y, K)>``: it
crops its full output by the pads that ``C`` adds (a negative ``hi`` appends zeros:
PyTorch's ``output_padding``). Arguments are validated by :mod:`jaxconv.ops` before
anything is traced; here every argument is already one value per spatial dimension.

XLA:CPU lowers ``lax.conv_transpose`` to a convolution over the input dilated with
``s - 1`` zeros, multiplies those zeros, and emits its kernel gradient as a slow
loop nest. Here instead:

- ``T`` by phase (sub-pixel) decomposition: with ``o + lo = q*s + r`` (phase
  ``r < s``) and ``j*d = a_j*s + b_j``, tap ``j`` reaches phase ``b_j`` of row ``q``
  from input ``q - a_j``. So ``T`` is one stride-1 'VALID' conv of the undilated
  input, with ``ceil((d(k-1)+1)/s)`` taps and ``s**n`` blocks of output channels
  (``K[j]`` at tap ``a_j`` in block ``b_j``, zero where no tap lands), followed by
  depth-to-space and a crop. A 1x1 input is one matmul.
- ``T`` by overlap-add where its products fit ``OVERLAP_ADD_MAX_BYTES`` (times the phase
  kernel's slots per tap, 16/9 for k3 s2), are at most ``OVERLAP_ADD_KERNEL_RATIO``
  times its kernel, or its phase conv would have fewer than ``PHASES_MIN_CHANNELS``
  channels (:func:`_transposed`) (bounds calibrated on the benchmark suite; not
  depthwise): one matmul gives every useful product ``Z[i, j] = K[j] y[i]`` (no zero
  multiplied, ``K`` read where it is), and each output phase sums its taps' ``Z``,
  shifted. Measured on the suite's forwards: 1.2-19x
  faster than the phases where the phase kernel has zeros (k3 s2), the kernel is large
  (transposed into the phase kernel: 34 MB in pix2pix) or few output channels make
  XLA's conv slow; up to 5x slower where ``Z`` is far over 16 MB (ENet, FCN). The
  bound, 15 MiB: jax#31662's 13.5 MiB gain 22x; at 16 MiB (MelGAN up 3, HiFi-GAN up 4,
  3-D U-Net, V-Net) the phases took 0.82-1.04 of the overlap-add's forward time in
  two full benchmark runs. Where XLA:CPU runs its dots itself (its YNN fusion off), a
  kernel of far more rows than ``y`` goes first in the product (:func:`_matmul_nt`).
- A 3-D ``T`` of disjoint taps (each kernel size its stride: every output one product)
  to 32-48 channels, in a forward not differentiated, by tap planes: one matmul per tap
  of the first axis, stacked beside that axis, and one transpose (:func:`_by_tap_planes`;
  V-Net's forward 1.25-1.30x faster than by phases).
- ``C`` as ``lax.pad`` and a 'VALID' strided conv; or, where each kernel size is a
  multiple ``t*s`` of its stride and the blocks are deep enough, by blocks
  (:func:`_by_blocks`, :func:`_blocks_wanted`): ``x`` cut into blocks
  of ``s`` times the kernel arranged ``(s * in, t * out)`` (one matmul, or in 2-D one per
  phase of the first axis: :func:`_split_axes`), and each output sums its ``t`` tap
  blocks' products (the adjoint of ``T``'s overlap-add). FCN-8s's input
  gradient (k16 s8) 190 -> 29 ms. In 2-D, from 4-64 input channels to at least 32, where
  YNNPACK runs XLA's convs, the width's phases folded into the channels (``x`` read as
  ``(B, H, W/s, s*c)``), so that XLA's conv is unstrided along the width
  (:func:`_by_width_phases`): seg U-Net's input gradient 4.9 -> 3.9 ms.
- A 'VALID' conv is XLA's own (in 2-D, where YNNPACK runs it and nothing pads its
  input, padded by one column and cropped: :func:`_xla_conv`), or im2col (the kernel's
  windows stacked) and one matmul where XLA:CPU's conv is slower (measured): 3-D, a
  contraction of at most
  ``IM2COL_MAX_DEPTH`` (``taps * in``, e.g. one input channel), a single window (the
  kernel covers the padded input: a 1x1 output), at most ``IM2COL_MAX_POSITIONS``
  outputs in the whole batch, or a strided 2-D conv at least ``IM2COL_STRIDED_MIN_DEPTH``
  deep (PyTorch's DCGAN discriminator's 16x16x128 -> 256 k4 s2 at batch 64 19.0 -> 14.7
  ms). On the suite's forward+backward (the input gradient is
  such a conv of the cotangent), im2col took pix2pix 8->16 from 55 to 35 ms,
  StyleGAN2 from 128 to 100 and U-Net 16->32 from 28 to 19; it was slower from
  1,024 outputs up (DCGAN G3, CycleGAN). A pointwise (1x1) conv is always XLA's, which
  XLA rewrites as one matmul: its im2col would be a copy (the phase convs of k2 s2 3-D
  layers: the forward of 3-D U-Net and V-Net 10-30 % faster, measured).
- The kernel gradient ``R(x, y) = d<C(x, K), y>/dK`` (the same for both ops) is one
  matmul: im2col of ``C``'s input against ``y``, or, where that copies more, im2col
  of ``T``'s input (``y``) against ``x`` taken back to phases (space-to-depth), in
  the phase domain. (XLA:CPU's own, a conv with the batch as its features, is
  several times slower, except in 1-D with a stride of 8, few taps and many channels,
  where it is ``R``: :func:`_xla_r_wanted`.) The matmul contracts the rows of both
  operands; with few channels against a deep im2col it goes by rows instead
  (:func:`_matmul_t`); an im2col of one channel in 1-D or 3-D is built transposed, for a
  plain matmul (:func:`_windows_of_one_channel_t`). Up to 256 x 256 channels, depthwise
  or in groups, ``R`` is :mod:`jaxconv.native`'s CPU kernel instead, which reads ``x``
  and ``y`` where they are (:func:`_native_wanted`), also where XLA's route would share
  an im2col with the other gradient or the forward.
- Every im2col and its matmul run over chunks of the batch (``lax.map``; a kernel
  gradient's chunks are added up in the loop) whose im2col is at most
  ``CHUNK_BYTES`` (a kernel gradient of at least ``WHOLE_MIN_ADDED_BYTES`` within two
  chunks goes whole), so that it is
  written and read back in cache: memory here moves a few GB/s into freshly
  allocated buffers, and an unchunked im2col (e.g. 29 MB
  for a kernel gradient at batch 256) made that gradient 4x slower (measured). A
  kernel gradient whose one image's im2col is larger goes by blocks of rows
  (:func:`_kernel_grad_by_row_blocks`). Chunks are rematerialised
  (``jax.checkpoint``): reverse mode recomputes a chunk's im2col rather than keeping
  all of them. No one image's im2col is larger than ``IM2COL_MAX_BYTES``: past it,
  XLA's own conv.
- Derivatives (``jax.custom_jvp``): the tangent of each op in its input is the
  other op's transpose, and in its kernel the transpose of ``R``. Reverse mode
  transposes them back: the input gradient of ``T`` is the strided conv ``C``,
  that of ``C`` the phase-decomposed ``T``, and both kernel gradients are ``R``. Where
  ``R`` of ``T`` takes the im2col of the cotangent, ``C`` is that im2col's product
  with the kernel: one im2col for both gradients (:func:`_shared_windows_wanted`); where
  ``C`` goes by blocks and ``R`` by phases, one cut of the cotangent into blocks for both
  (:func:`_shared_blocks_wanted`). Likewise a 2-D ``C`` differentiated in its kernel
  takes its forward from the im2col that ``R`` reads where the batch's is within
  ``CHUNK_BYTES`` (:func:`_windows_shared`): XLA computes those windows once.
  Forward mode and higher derivatives follow JAX's rules for those operations.
- Groups (channels ordered (group, channel)), in one program whatever their number.
  Where each group contracts one channel (depthwise: ``C`` with ``a = g``, ``T`` with
  ``b = g``, ``R`` over such windows), all groups at once: the conv is one fused
  multiply-add loop over the taps' strided slices; ``R`` one product summed per shift of
  ``x`` cut into rows of ``s`` (:func:`_tap_sums`), image by image; the phase kernel's
  output channels are ordered (group, phase, channel) and a 1x1 input is one einsum
  batched over the groups. Where groups contract several channels, ``C``, ``T`` and
  ``R`` run group by group in one ``lax.fori_loop`` over their one-group paths, reading
  and writing each group's channels in place; ``R`` of at most ``UNROLLED_MAX_GROUPS``
  groups unrolled, the groups' parts concatenated (:func:`_group_by_group`). (Measured
  on the benchmark's grouped layers: XLA:CPU's grouped conv, ``feature_group_count``,
  was 1.5-2x slower than a conv per group and 10-40x slower than tap by tap on depthwise
  ones; an einsum batched over the groups up to 5x slower, from the transposition of its
  im2col, groups first. XLA's grouped kernel gradient, a ``batch_group_count`` conv, is
  used only past ``IM2COL_MAX_BYTES``.)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxconv import native

Pads = tuple[tuple[int, int], ...]
IM2COL_MAX_DEPTH = 16
IM2COL_MAX_POSITIONS = 256  # outputs in the batch (batch x rows) at most for im2col
IM2COL_STRIDED_MIN_DEPTH = 2048  # a strided 2-D conv's contraction at least this: im2col
ROW_BLOCK_MIN_CHANNELS = 8  # see _row_blocks_wanted
PER_TAP_MAX_TAPS = 9  # a conv of one input channel (no groups) tap by tap up to this
IM2COL_MAX_BYTES = 1 << 30  # the largest im2col of one image; past it, XLA's conv
CHUNK_BYTES = 4 << 20  # the im2col of one batch chunk (see _by_chunks)
WHOLE_BATCH_MAX_BYTES = 16 << 20  # see _whole_batch_wanted
WHOLE_MIN_ADDED_BYTES = 512 << 10  # a kernel gradient this large within two chunks goes whole
OVERLAP_ADD_MAX_BYTES = 15 << 20  # T's products (float32) for the overlap-add at most
OVERLAP_ADD_KERNEL_RATIO = 4  # or at most this many times its kernel (see _transposed)
PHASES_MIN_CHANNELS = 16  # or its phase conv to fewer channels (s**n * out): see _transposed
TAP_PLANES_MIN_CHANNELS, TAP_PLANES_MAX_CHANNELS = 32, 48  # 3-D T by tap planes: _transposed
BLOCKS_MIN_DEPTH, BLOCKS_MAX_KERNEL_BYTES = 64, 8 << 20  # C by blocks: see _blocks_wanted
BLOCKS_OVERLAP_MIN_DEPTH = 1024  # and where its taps overlap blocks (k > s)
BLOCKS_OVERLAP_MAX_EXTRA = 1.2  # their blocks over C's outputs at most (see _blocks_wanted)
NN_MAX_CHANNELS, NN_MIN_DEPTH = 64, 64  # a kernel gradient's product by rows: see _matmul_t
NN_WIDE_MAX_CHANNELS, NN_WIDE_DEPTH_RATIO = 256, 4  # and by rows with more channels
NN_ALONE_DEPTH_RATIO, NN_WRITTEN_MIN_CHANNELS = 2, 128  # _matmul_t's own: see there
NN_LONG_MAX_CHANNELS, NN_LONG_MIN_ROWS = 512, 256  # and _matmul_t's by long rows
EIGEN_LARGER_FIRST_RATIO = 4  # see _matmul_nt
UNROLLED_MAX_GROUPS = 16  # a grouped kernel gradient group by group, unrolled (see _group_by_group)
NATIVE_MAX_CHANNEL_PAIRS, NATIVE_MAX_TAPS = 256 * 256, 64  # R by jaxconv.native: _native_wanted
XLA_R_1D_MAX_TAPS, XLA_R_1D_MIN_CHANNELS, XLA_R_1D_MIN_STRIDE = 16, 64, 8  # _xla_r_wanted
FOLD_MIN_CHANNELS, FOLD_MAX_CHANNELS, FOLD_MIN_OUT_CHANNELS = 4, 64, 32  # _width_fold_wanted
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


class Geometry(NamedTuple):
    """Per spatial dimension: stride, ``(lo, hi)`` padding of ``C``'s input, dilation;
    and the number of groups.

    The pads are exact: ``C`` reads all of its padded input (``n + lo + hi - d(k-1) - 1``
    a multiple of ``s``), so that ``T`` gives back exactly ``C``'s input shape.
    """

    strides: tuple[int, ...]
    pads: Pads
    dilation: tuple[int, ...]
    groups: int = 1


def conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    groups: int,
) -> jax.Array:
    """``C``: the strided conv of ``x`` padded with zeros by ``pads``.

    ``hi`` is first lowered by what the output's floor division leaves unread, so
    that ``T`` with the same pads gives back ``x``'s shape.
    """
    kernel_size = kernel.shape[:-2]
    exact = tuple(
        (lo, hi - (n + lo + hi - d * (k - 1) - 1) % s)
        for n, k, s, (lo, hi), d in zip(x.shape[1:-1], kernel_size, strides, pads, dilation)
    )
    return _conv(x, kernel, Geometry(strides, exact, dilation, groups))


def conv_transpose(
    y: jax.Array,
    kernel: jax.Array,
    *,
    strides: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    groups: int,
) -> jax.Array:
    """``T``: the transposed conv, cropped by ``pads`` (PyTorch: ``(p, p - output_padding)``)."""
    return _conv_transpose(y, kernel, Geometry(strides, pads, dilation, groups))


# ----------------------------------------------------------------------------------
# C: the strided conv


def _strided(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``C(x, K)``: a 'VALID' conv with the strides of ``x`` padded by the pads, by
    :func:`_by_blocks` where :func:`_blocks_wanted`."""
    if geometry.groups > 1 and kernel.shape[-2] > 1:
        one = functools.partial(_strided, geometry=geometry._replace(groups=1))
        return _group_by_group(one, geometry.groups, x, kernel)
    if _blocks_wanted(x, kernel, geometry):
        return _by_blocks(x, kernel, geometry)
    if _width_fold_wanted(x, kernel, geometry):
        return _by_width_phases(x, kernel, geometry)
    return _padded_conv(
        x, geometry.pads, kernel, geometry.strides, geometry.dilation, geometry.groups
    )


def _width_fold_wanted(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> bool:
    """Whether ``C`` goes by :func:`_by_width_phases`: 2-D, one group, undilated, strided
    along the width, which is a multiple of its stride and padded by ``lo >= 0`` before;
    ``FOLD_MIN_CHANNELS``-``FOLD_MAX_CHANNELS`` input channels, at least
    ``FOLD_MIN_OUT_CHANNELS`` output channels; where YNNPACK runs XLA's convs
    (:func:`_convs_by_ynn`) and :func:`_padded_conv` would take XLA's conv.

    Measured, ``C`` alone (ms, medians of paired rounds; XLA's strided conv, which YNNPACK
    runs, against the width folded): the suite's input gradients seg U-Net (k3 s2, 64x64x16
    -> 32 channels at batch 32) 4.88 -> 3.89, the lecture decoder's second (14x14x16 -> 32,
    batch 256) 1.98 -> 1.30; k3 s2 convs of 64x64 images 32 -> 32 channels 4.81 -> 3.62,
    32 -> 64 9.36 -> 6.32, 64 -> 64 8.48 -> 6.89; k4 s2 16 -> 32 8.41 -> 6.94, k5 s2 of
    128x128x16 -> 32 23.2 -> 15.6. Slower with fewer output channels (16 -> 16 k3 s2 1.55
    -> 2.09, 8 -> 8 k4 s2 1.38 -> 1.84), three input channels (DCGAN G5, 3 -> 64 k4 s2:
    6.7 -> 12.8), 128 (CycleGAN, 128 -> 256: 3.8 -> 5.2) or one (FSRCNN, k9 s3: 10.0 ->
    13.0); 8 -> 32 equal (2.11 against 2.21). Forward+backward, seg U-Net 14.5 -> 11.1,
    the lecture decoder's second 6.2 -> 5.5.
    """
    if x.ndim != 4 or geometry.groups > 1 or geometry.dilation != (1, 1):
        return False
    stride, (lo, _), width = geometry.strides[1], geometry.pads[1], x.shape[2]
    channels, out_channels = kernel.shape[-2:]
    if stride == 1 or width % stride or lo < 0 or kernel.shape[1] < stride:
        return False  # the last: phases that no tap reads
    if out_channels < FOLD_MIN_OUT_CHANNELS:
        return False
    if not FOLD_MIN_CHANNELS <= channels <= FOLD_MAX_CHANNELS or not _convs_by_ynn():
        return False
    rows = _conv_rows(x.shape[1:-1], geometry.pads, kernel.shape[:-2], geometry.strides, (1, 1))
    return not _im2col_wanted(x.shape[0], rows, kernel.shape, geometry.strides)


def _by_width_phases(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``C`` with the width's ``s`` phases folded into the channels: ``x`` read as ``(B, H,
    W/s, s*c)`` (no copy), so that the conv is unstrided along the width.

    With ``j - lo = e_j*s + r_j`` (``r_j < s``), width tap ``j`` reads phase ``r_j`` of
    folded column ``i + e_j``: the folded kernel holds ``K[:, j]`` at tap ``e_j - e_0``,
    channels ``r_j*c ...``, zeros elsewhere (``K`` padded by ``(-lo) mod s`` taps before),
    and the folded conv is padded by ``-e_0`` before. After, it is padded so as to give
    one column more than ``C``'s, cropped: as in :func:`_xla_conv`, YNNPACK was 1.5-1.7x
    slower without that column (seg U-Net's input gradient 6.2-6.6 against 3.6-4.3 ms).
    """
    (height_pads, (lo, hi)), stride = geometry.pads, geometry.strides[1]
    batch, height, width, channels = x.shape
    kh, kw, _, out_channels = kernel.shape
    columns = (width + lo + hi - kw) // stride + 1
    first, last = -lo // stride, (kw - 1 - lo) // stride
    taps, before = last - first + 1, -lo % stride
    kernel = jnp.pad(kernel, ((0, 0), (before, taps * stride - kw - before), (0, 0), (0, 0)))
    kernel = kernel.reshape(kh, taps, stride * channels, out_channels)
    folded = x.reshape(batch, height, width // stride, stride * channels)
    after = max(0, columns + taps - width // stride + first)
    out = lax.conv_general_dilated(
        _pad(folded, (tuple(min(p, 0) for p in height_pads),)),  # a negative pad: cropped
        kernel,
        window_strides=(geometry.strides[0], 1),
        padding=(tuple(max(p, 0) for p in height_pads), (-first, after)),
        dimension_numbers=_dimension_numbers(2),
    )
    return out[:, :, :columns]


def _blocks_wanted(
    x: jax.Array, kernel: jax.Array, geometry: Geometry, shared: bool = False
) -> bool:
    """Whether ``C`` goes by :func:`_by_blocks`: one group, 2-D or 3-D, strided, undilated,
    each kernel size a multiple ``t*s`` of its stride, blocks of at least ``BLOCKS_MIN_DEPTH``
    numbers (``s**n * in``), a kernel within ``BLOCKS_MAX_KERNEL_BYTES`` and ``x`` in
    blocks within ``IM2COL_MAX_BYTES`` per image. Where the taps overlap blocks (some ``t
    > 1``), each block's product is ``t**n`` times as wide as its output and added back
    shifted, so the blocks must be ``BLOCKS_OVERLAP_MIN_DEPTH`` deep and at most
    ``BLOCKS_OVERLAP_MAX_EXTRA`` times as many as the outputs (``q + t - 1`` blocks per
    dimension for ``q`` outputs), unless ``shared``: ``R`` takes the same cut
    (:func:`_shared_blocks_wanted`). Outside these, a conv whose windows are
    ``IM2COL_STRIDED_MIN_DEPTH`` deep goes by im2col (:func:`_padded_conv`).

    Measured, forwards of k4 s2 convs (ms, medians of paired rounds; blocks against XLA's
    conv, which YNNPACK runs): PyTorch's DCGAN discriminator at batch 64, 32x32x64 -> 128
    56.8 -> 22.1 and 61.2 -> 22.8, 16x16x128 -> 256 42.8 -> 22.4 and 49.5 -> 26.9, 8x8x256
    -> 512 (1024 deep) 20.4 against 21.2; 8x64x64x64 -> 128 31.2 -> 11.1, 8x128x128x32 ->
    32 28.0 -> 7.5; near equal from 128x128x64 -> 64 on (8 images 49.4 against 47.3, 32
    images 204 and 293 against 281 and 284). Blocks against im2col, 1024 deep and more:
    8x8x256 -> 512 (4x4 outputs, 25 blocks) at batch 64 21.2 against 14.9, 16x16x512 ->
    512 at 16 52.1 against 35.6; 32x32x256 -> 256 at 8 (16x16, 289 blocks) 15.1 against
    16.5, 64x64x256 -> 256 7.4 against 7.2.

    Measured, the input gradient of the suite's transposed convs alone (``C`` of the
    cotangent; ms, medians of paired rounds, two runs): FCN-8s (k16 s8, 21 channels) 194
    -> 26 and 190 -> 29, FCN-32s (k64 s32) 159 -> 41 and 149 -> 42, Mask R-CNN (k2 s2)
    11.8 -> 9.5 and 12.0 -> 9.1; DCGAN G3 (k4 s2), U-Net 16->32, 3-D U-Net and V-Net
    within noise; forward+backward FCN-8s 222 -> 110, FCN-32s 213 -> 117. Slower with a
    large kernel, which the matmul reads rearranged (pix2pix, 32 MB: 12 -> 38), shallow
    blocks (DCGAN G5, 4 x 3 channels: 11 -> 45) and in 1-D (MelGAN, HiFi-GAN, WaveGAN:
    1.1-19x).
    """
    strides, kernel_size = geometry.strides, kernel.shape[:-2]
    overlap = any(k > s for k, s in zip(kernel_size, strides)) and not shared
    if overlap:
        rows = _conv_rows(x.shape[1:-1], geometry.pads, kernel_size, strides, geometry.dilation)
        blocks = [q + k // s - 1 for q, k, s in zip(rows, kernel_size, strides)]
        if math.prod(blocks) > BLOCKS_OVERLAP_MAX_EXTRA * math.prod(rows):
            return False
    min_depth = BLOCKS_OVERLAP_MIN_DEPTH if overlap else BLOCKS_MIN_DEPTH
    return (
        _cuts_into_blocks(kernel_size, geometry)
        and len(strides) > 1
        and any(s > 1 for s in strides)
        and math.prod(strides) * kernel.shape[-2] >= min_depth
        and kernel.size * kernel.dtype.itemsize <= BLOCKS_MAX_KERNEL_BYTES
        and _fits(math.prod(x.shape[1:]), x.dtype)
    )


def _by_blocks(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``C`` (one group, ``k = t*s``, no dilation) as matmuls and an overlap-add: the
    adjoint of :func:`_by_overlap_add`.

    The padded ``x`` cut into blocks of ``s`` (:func:`_in_blocks`) times the kernel
    arranged ``(s * in, t * out)`` gives every block's product with each tap block ``a <
    t``, ``P[b, a]``; output ``i`` sums ``P[i + a, a]`` (:func:`_blocks_times`). No window
    is copied (an im2col of ``k = 2s`` copies ``x`` ``2**n`` times) and XLA:CPU's strided
    conv is not called.
    """
    split = _split_axes(x, kernel.shape)
    parts, rows = _in_blocks(x, kernel.shape[:-2], geometry, split)
    return _blocks_times(parts, rows, kernel, geometry, split)


def _in_blocks(
    x: jax.Array, kernel_size, geometry: Geometry, split: int
) -> tuple[list[jax.Array], list]:
    """``x`` padded by the pads and cut into blocks of ``s`` (``q + k/s - 1`` blocks for
    ``C``'s ``q`` rows), as one part per phase ``r`` of the first ``split`` axes, ``(B,
    *blocks, prod(s[split:]) * c)`` (:func:`_split_axes`); and ``q``."""
    ndim, strides = len(kernel_size), geometry.strides
    x = _pad(x, geometry.pads)
    rows = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], kernel_size, strides)]
    blocks = [q + k // s - 1 for q, k, s in zip(rows, kernel_size, strides)]
    x = _in_rows_of_strides(x, blocks, strides)  # (B, b0, s0, b1, s1, ..., c)
    kept = [*range(1 + 2 * split, 2 * ndim, 2), *range(2 + 2 * split, 2 * ndim + 1, 2)]
    parts = []
    for lead in itertools.product(*map(range, strides[:split])):
        part = x[(slice(None), *(i for r in lead for i in (slice(None), r)))]
        # axes left: B, the blocks of the split axes, then (block, phase) pairs, c
        part = part.transpose(0, *range(1, 1 + split), *(a - split for a in kept), -1)
        parts.append(part.reshape(x.shape[0], *blocks, -1))
    return parts, rows


def _split_axes(x: jax.Array, kernel_shape) -> int:
    """The leading axes whose phases :func:`_in_blocks` splits into parts: in 2-D the
    first where the kernel is at most half the size of ``x``, else none.

    A part is ``x`` in rows of ``s`` sliced at a phase, contiguous runs of it, where one
    part is a space-to-depth transposition, 4-5x slower than a copy in XLA:CPU (FCN-8s's
    27 MB: 16 against 3.4 ms), but each part reads its own rows of the kernel, a copy of
    it in all. Input gradients (ms, medians of paired rounds, two runs): FCN-8s 31.8 -> 25.2
    and 26.1 -> 16.8, FCN-32s 35.4 -> 16.5 and 47.9 -> 31.4, Mask R-CNN 9.1 -> 8.3 and 7.8
    -> 7.7; forward+backward FCN-32s 136 -> 112 and 135 -> 113 (FCN-8s 116 -> 106 and 109 ->
    103, near the A/A spread). Slower split with a kernel larger than ``x`` (U-Net 16->32,
    8 MB against 2 MB: 12.8 -> 14.5; equal unsplit) and in 3-D over two axes (V-Net 16.5 ->
    42.9).
    """
    return 1 if x.ndim == 4 and 2 * math.prod(kernel_shape) <= x.size else 0


def _cuts_into_blocks(kernel_size, geometry: Geometry) -> bool:
    """Whether ``C``'s input can be cut into blocks of ``s`` (:func:`_in_blocks`): one
    group, no dilation, each kernel size a multiple of its stride."""
    return (
        geometry.groups == 1
        and all(d == 1 for d in geometry.dilation)
        and all(k % s == 0 for k, s in zip(kernel_size, geometry.strides))
    )


def _phases_are_blocks(kernel_size, geometry: Geometry) -> bool:
    """Whether ``R``'s phases of ``x`` (:func:`_kernel_grad_by_phases`) are the blocks of
    :func:`_in_blocks`: ``x`` cuts into blocks (:func:`_cuts_into_blocks`), and pads ``0 <=
    lo, hi < s`` (the phases start at the first block and end at the last)."""
    return _cuts_into_blocks(kernel_size, geometry) and all(
        0 <= p < s for pads, s in zip(geometry.pads, geometry.strides) for p in pads
    )


def _blocks_times(parts: list[jax.Array], rows, kernel: jax.Array, geometry: Geometry, split):
    """``C`` from ``x`` in blocks (:func:`_in_blocks`, ``split``): each part's matmul with its
    rows of the arranged kernel, added; see :func:`_by_blocks`."""
    kernel_size, (channels, out_channels) = kernel.shape[:-2], kernel.shape[-2:]
    ndim, strides, dtype = len(kernel_size), geometry.strides, parts[0].dtype
    taps = [k // s for k, s in zip(kernel_size, strides)]
    k = kernel.reshape(*(n for t, s in zip(taps, strides) for n in (t, s)), channels, out_channels)
    # after the split axes' phases are taken: their taps, then (tap, phase) pairs, c, o
    tap_axes = [*range(split), *range(split, 2 * ndim - split, 2)]
    phase_axes = range(split + 1, 2 * ndim - split, 2)
    wide = jnp.promote_types(dtype, jnp.float32)
    products = []
    for lead, part in zip(itertools.product(*map(range, strides[:split])), parts):
        k_part = k[tuple(i for r in lead for i in (slice(None), r))]
        last = k_part.ndim - 1
        k_part = k_part.transpose(*phase_axes, last - 1, *tap_axes, last)
        products.append(
            lax.dot_general(
                part.reshape(-1, part.shape[-1]), k_part.reshape(part.shape[-1], -1),
                (((1,), (0,)), ((), ())), preferred_element_type=wide,
            )
        )  # fmt: skip
    total = sum(products[1:], products[0]).reshape(*parts[0].shape[:-1], *taps, out_channels)
    terms = [
        total[(slice(None), *(slice(a, a + q) for a, q in zip(tap, rows)), *tap)]
        for tap in itertools.product(*map(range, taps))
    ]
    return sum(terms[1:], terms[0]).astype(dtype)


def _padded_conv(x, pads, kernel, strides, dilation, groups, im2col: bool = False) -> jax.Array:
    """A 'VALID' conv of ``x`` padded by ``pads`` (``lax.pad``): XLA's, or im2col and a
    matmul where XLA:CPU's conv is slower or ``im2col`` asks for it; tap by tap with
    groups of one input channel, and for one input channel and at most
    ``PER_TAP_MAX_TAPS`` taps (the lecture encoder's first conv at batch 1024: 18 -> 2 ms;
    with 25-81 taps, 2-3x slower than im2col)."""
    kernel_size, depth = kernel.shape[:-2], math.prod(kernel.shape[:-1])
    rows = _conv_rows(x.shape[1:-1], pads, kernel_size, strides, dilation)
    one_channel = kernel.shape[-2] == 1  # per group
    if one_channel and groups > 1:
        return _per_tap_conv(x, pads, kernel, strides, dilation, rows)
    x = _pad(x, pads)
    if one_channel and math.prod(kernel_size) <= PER_TAP_MAX_TAPS:
        return _per_tap_conv(x, ((0, 0),) * len(rows), kernel, strides, dilation, rows)
    pointwise = math.prod(kernel_size) == 1 and all(s == 1 for s in strides)
    if pointwise and groups == 1 and len(rows) == 2:
        return _pointwise_2d(x, kernel)
    wanted = im2col or _im2col_wanted(x.shape[0], rows, kernel.shape, strides)
    columns_per_image = math.prod(rows) * math.prod(kernel_size) * x.shape[-1]
    if not (wanted and math.prod(kernel_size) > 1 and _fits(columns_per_image, x.dtype)):
        unpadded = all(lo <= 0 and hi <= 0 for lo, hi in pads)
        return _xla_conv(x, kernel, strides, dilation, groups, widened=unpadded)

    def im2col_matmul(x):
        columns = _windows(x, kernel_size, strides, dilation, rows)
        out = columns.reshape(-1, depth) @ kernel.reshape(depth, -1)
        return out.reshape(x.shape[0], *rows, kernel.shape[-1])

    return _by_chunks(im2col_matmul, (x,), columns_per_image)


def _im2col_wanted(batch: int, rows, kernel_shape, strides) -> bool:
    """Whether :func:`_padded_conv` takes im2col and a matmul over XLA's conv (a kernel of
    several taps, within ``IM2COL_MAX_BYTES``): see there."""
    kernel_size, depth = kernel_shape[:-2], math.prod(kernel_shape[:-1])
    return math.prod(kernel_size) > 1 and (
        len(rows) == 3
        or depth <= IM2COL_MAX_DEPTH
        or math.prod(rows) == 1
        or batch * math.prod(rows) <= IM2COL_MAX_POSITIONS
        or (len(rows) == 2 and max(strides) > 1 and depth >= IM2COL_STRIDED_MIN_DEPTH)
    )


def _pointwise_2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 2-D 1x1 conv (one group, unit strides) as XLA's conv of ``x``'s rows flattened to
    1-D, which XLA makes its own matmul: a 2-D one goes to YNNPACK's conv (XLA's YNN
    fusion on, jax's default).

    Forwards, medians of paired rounds (ms; XLA's 2-D conv against the 1-D one, and a
    plain matmul, which YNNPACK runs): 1x1 convs 32x28x28x256 to 64 channels 9.57 -> 3.13
    (matmul 3.67), 8x64x64x64 to 64 1.83 -> 1.26 (1.28), 1x128x128x32 to 2 0.158 -> 0.127
    (0.093); a k2 s2 transposed conv by phases (its phase conv is 1x1), 1x128x128x128 to
    64 channels, 11.6 -> 7.1 (7.2), forward+backward 47.2 -> 38.7 (40.9). With the fusion
    off, the 2-D conv was that matmul already (equal). Not in 1-D, where XLA's conv is its
    matmul, nor in 3-D (3-D U-Net's forward, as a plain matmul, 4.6 -> 5.5).
    """
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    out = _xla_conv(rows, kernel.reshape(1, *kernel.shape[-2:]), (1,), (1,), 1)
    return out.reshape(*x.shape[:-1], kernel.shape[-1])


def _conv_rows(spatial, pads, kernel_size, strides, dilation) -> list[int]:
    """The rows of a 'VALID' conv of ``spatial`` padded by ``pads``: ``(n + lo + hi -
    d(k-1) - 1) // s + 1``."""
    return [
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, (lo, hi), k, s, d in zip(spatial, pads, kernel_size, strides, dilation)
    ]


def _group_by_group(
    fn: Callable, groups: int, *operands: jax.Array, added: bool = False
) -> jax.Array:
    """``fn`` on each group's part of every operand's last axis (``groups`` equal parts),
    in one loop (``lax.fori_loop``): its result is that group's part of the output's
    last axis.

    A group's parts are sliced inside ``jax.checkpoint``, so that reverse mode slices
    them again rather than keeping every group's copy (StyleGAN2's forward+backward 86
    -> 61 ms: its kernel's parts, 38 MB, were stacked for the transposed loop).
    ``added``: for a kernel gradient, which reverse mode computes transposed twice. Up to
    ``UNROLLED_MAX_GROUPS`` groups, each group's own operations, their results concatenated:
    no loop, and no zero output to add into; their parts are plain slices taken before the
    checkpoint (sliced inside it like the loop's, ``grouped g=4``'s kernel gradient took
    36.7 ms against 21.6, its forward+backward 117 against 106). With more, each result is
    added into its part of a zero output (a scatter-add) rather than written over it: an
    overwritten part transposes to a part zeroed, so the written output came back as a pass
    zeroing each part and a pass adding to it (StyleGAN2's kernel gradient 35.2 -> 28.9 ms,
    its forward+backward 67.3 -> 57.3). A forward writes (the ``grouped g=4`` op case 54.6
    ms written, 72.5 added).

    Kernel gradients alone, concatenated over the scatter-add loop (medians of 9-11
    paired rounds, 2026-12-04, a 2-core AMD EPYC VM; transposed convs k3 s2): StyleGAN2
    (4 groups of 512, 8x8) 0.91, ``grouped g=4`` (16 channels a group, batch 64, 28x28)
    0.66, 2 groups of 512 (16x16) 0.58, 8 of 16 (batch 16, 28x28) 0.86, 16 of 16 0.57;
    32 groups of 16 (14x14) 1.54, slower. Forward+backward 0.79-0.97, and 1.12 with 32.
    """
    if added and groups <= UNROLLED_MAX_GROUPS:
        one = jax.checkpoint(fn)
        return jnp.concatenate(
            [one(*(_part(a, groups, i) for a in operands)) for i in range(groups)], axis=-1
        )
    parts = [
        jax.ShapeDtypeStruct((*a.shape[:-1], a.shape[-1] // groups), a.dtype) for a in operands
    ]
    part = jax.eval_shape(fn, *parts)
    width, ndim = part.shape[-1], len(part.shape)

    @jax.checkpoint
    def group(i, *operands):
        args = [
            lax.dynamic_slice_in_dim(a, i * p.shape[-1], p.shape[-1], axis=-1)
            for a, p in zip(operands, parts)
        ]
        return fn(*args)

    def written(i, out):
        return lax.dynamic_update_slice_in_dim(out, group(i, *operands), i * width, axis=-1)

    into_last_axis = lax.ScatterDimensionNumbers(tuple(range(ndim)), (), (ndim - 1,))

    def add(i, out):
        start = jnp.reshape(i * width, (1,))
        result = group(i, *operands)
        return lax.scatter_add(
            out, start, result, into_last_axis, indices_are_sorted=True, unique_indices=True
        )

    out = jnp.zeros((*part.shape[:-1], groups * width), part.dtype)
    return lax.fori_loop(0, groups, add if added else written, out)


def _part(a: jax.Array, parts: int, index: int) -> jax.Array:
    """Part ``index`` of ``a``'s last axis cut into ``parts`` equal parts."""
    width = a.shape[-1] // parts
    return lax.slice_in_dim(a, index * width, (index + 1) * width, axis=-1)


def _per_tap_conv(x: jax.Array, pads, kernel: jax.Array, strides, dilation, rows) -> jax.Array:
    """A 'VALID' conv of ``x`` padded by ``pads`` with one input channel per group
    (depthwise, ``K`` ``(*k, 1, g * m)``): ``sum_j xp[i*s + j*d, group] K[j, group, :]``,
    tap by tap, in float32 at least.

    One fused loop over the output that reads ``x`` where it is: no im2col, no
    group-batched matmul (whose operands XLA:CPU transposes, groups first). Each tap's
    window is padded where it leaves ``x`` (:func:`_tap_windows`), rather than ``x``
    padded whole: CenterNet f2's forward+backward 35 -> 19 ms, its input gradient's
    padded copy being a fresh 17 MB buffer. (With one channel and no groups, the
    lecture encoder's first conv, ``x`` comes padded: per-tap pads there made the train
    step at batch 1024 slower, 14.5k -> 13.0k images/s.)
    """
    groups = x.shape[-1]
    weights = kernel.reshape(*kernel.shape[:-2], groups, kernel.shape[-1] // groups)
    wide = jnp.promote_types(x.dtype, jnp.float32)
    out = jnp.zeros((x.shape[0], *rows, *weights.shape[-2:]), wide)
    for j, window in _tap_windows(x, pads, kernel.shape[:-2], strides, dilation, rows):
        out = out + window[..., None].astype(wide) * weights[j].astype(wide)
    return out.reshape(x.shape[0], *rows, kernel.shape[-1]).astype(x.dtype)


def _tap_windows(x: jax.Array, pads, kernel_size, strides, dilation, rows):
    """``(j, W_j)`` for each tap ``j`` that reads ``x`` (not only its padding), with
    ``W_j[:, i] = xp[:, i*s + j*d]`` for the rows ``i`` (``xp``: ``x`` padded by
    ``pads``): a strided slice of ``x``, padded where the window leaves it."""
    for j in itertools.product(*map(range, kernel_size)):
        starts, extents, borders = [], [], []
        for n, (lo, _), t, s, d, q in zip(x.shape[1:-1], pads, j, strides, dilation, rows):
            first = max(0, -((t * d - lo) // s))  # the rows that read x: first to last
            last = min(q, (n - 1 + lo - t * d) // s + 1)
            starts.append(first * s + t * d - lo)
            extents.append((last - first - 1) * s + 1)
            borders.append((first, q - last))
        if all(first < q - after for (first, after), q in zip(borders, rows)):
            yield j, _pad(_slice(x, starts, extents, strides), borders)


def _xla_conv(
    x: jax.Array, kernel: jax.Array, strides, dilation, groups, widened: bool = False
) -> jax.Array:
    """XLA's 'VALID' conv. ``widened`` (``x`` not padded before): where YNNPACK runs XLA's
    2-D convs (:func:`_convs_by_ynn`) and the kernel has several taps, ``x`` gets one
    column of zeros after its last axis, as conv padding, and the output any column that
    adds is cropped: YNNPACK's conv of an unpadded input was 1.3-5x slower than with
    that padding (:func:`_padded_conv`). Forwards, medians of paired rounds (ms): k3
    convs of 64x32x32x64 to 128 channels 99.1 -> 52.2, of 8x64x64x32 19.9 -> 3.0, of
    1x572x572x64 (U-Net's first, unpadded) 329 -> 107; k5 of 16x28x28x64 43.0 -> 8.9; k4
    s2 of 64x34x34x64 to 128 59.5 -> 16.8; forward+backward 209 -> 160, 33.6 -> 16.4, 70
    -> 27, 107 -> 64. Equal on 64x8x8x64 (1.27 against 1.10, 3.2 against 3.3); not in
    1-D or 3-D, where it was slower (a k5 1-D conv 1.68 against 1.81, a k3 3-D one 31
    against 34), nor with XLA's own convs (the YNN fusion off), where the unpadded conv
    was as fast or faster (a k3 of 64x32x32x64 24 against 28).
    """
    ndim = x.ndim - 2
    pads = [(0, 0)] * ndim
    widen = widened and ndim == 2 and kernel.shape[0] * kernel.shape[1] > 1 and _convs_by_ynn()
    if widen:
        pads[-1] = (0, 1)
    out = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=_dimension_numbers(ndim),
        feature_group_count=groups,
    )
    if widen:
        columns = (x.shape[-2] - dilation[-1] * (kernel.shape[1] - 1) - 1) // strides[-1] + 1
        out = out[:, :, :columns]
    return out


@functools.cache
def _convs_by_ynn() -> bool:
    """Whether XLA hands its 2-D convs to YNNPACK: its default backend is the CPU and a
    2-D conv of 32 channels compiles to a YNNPACK fusion (XLA's YNN fusion on: the
    default; the ``jaxconv`` commands turn it off)."""
    if jax.default_backend() != "cpu":
        return False
    x = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
    conv = functools.partial(_xla_conv, strides=(1, 1), dilation=(1, 1), groups=1)
    return "__ynn_fusion" in jax.jit(conv).lower(x, kernel).compile().as_text()


def _windows(x, kernel_size, strides, dilation, rows) -> jax.Array:
    """im2col: ``(B, *rows, prod(kernel_size), C)``; window ``j`` of row ``i`` at ``i*s + j*d``.

    One strided slice where a single window covers each dimension; in 3-D, where
    windows do not overlap (``k <= s``, no dilation), one transposition of ``x`` cut into
    rows of ``s``; otherwise dimension by dimension from the last, stacked after the row
    axes (``sum(k)`` slices rather than ``prod(k)``): along the last, where windows
    overlap (``k > s > 1``, no dilation), ``ceil(k/s)`` shifted slices of ``x`` cut into
    rows of ``s``; else ``k`` strided slices (one per tap, all rows).
    """
    batch, channels, ndim = x.shape[0], x.shape[-1], len(rows)
    taps = math.prod(kernel_size)
    if math.prod(rows) == 1:
        window = _slice(
            x, [0] * ndim, [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation)], dilation
        )
        return window.reshape(batch, *rows, taps, channels)
    if ndim == 3 and all(d == 1 and k <= s for k, s, d in zip(kernel_size, strides, dilation)):
        # windows that do not overlap: rows of s, the first k of each, in one transposition
        # rather than three stacks that each copy it all (3-D U-Net's kernel gradient 25 ->
        # 15 ms; in 2-D the two stacks were faster, U-Net 16->32 4.1 against 5.1 ms)
        x = _in_rows_of_strides(x, rows, strides)
        x = x[(slice(None), *(a for k in kernel_size for a in (slice(None), slice(k))))]
        x = x.transpose(0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1)
        return x.reshape(batch, *rows, taps, channels)
    axes = list(reversed(range(ndim)))
    k, s, d, q = kernel_size[-1], strides[-1], dilation[-1], rows[-1]
    shifts = -(-k // s)
    if d == 1 and k > s > 1 and 8 * (shifts * s - k) <= k:
        # x cut into rows of s along its last axis: the taps j = a*s + b of window i are
        # row i + a, whole, so ceil(k/s) shifted slices of contiguous rows rather than k
        # strided slices, which XLA:CPU copies slowly (kernel gradient, paired rounds:
        # WaveGAN up 5 4.3 -> 3.5 ms, MelGAN up 3 14.5 -> 13.0; FSRCNN, 2-D, 11.4 -> 9.3 and
        # 11.5 -> 11.1 in a second run; DCGAN G5 and pix2pix within noise). Not where the
        # rows' slots past the last tap, cropped, are over an eighth of the taps (k3 s2:
        # seg U-Net 4.0 -> 4.3, lecture decoder 2 2.1 -> 2.3)
        lead = x.shape[1:-2]
        x = _pad(x, [(0, 0)] * (ndim - 1) + [(0, (q + shifts - 1) * s - x.shape[-2])])
        x = x.reshape(batch, *lead, q + shifts - 1, s * channels)
        x = jnp.stack([x[..., a : a + q, :] for a in range(shifts)], axis=ndim + 1)
        x = x.reshape(batch, *lead, q, shifts * s, channels)[..., :k, :]
        axes = axes[1:]
    for axis in axes:
        k, s, d, q = kernel_size[axis], strides[axis], dilation[axis], rows[axis]
        per_tap = [
            lax.slice_in_dim(x, j * d, j * d + (q - 1) * s + 1, s, axis=1 + axis) for j in range(k)
        ]
        x = jnp.stack(per_tap, axis=1 + ndim)
    return x.reshape(batch, *rows, taps, channels)


def _in_rows_of_strides(x: jax.Array, rows, strides) -> jax.Array:
    """``x`` cropped or padded (zeros) to ``rows * s`` and reshaped ``(B, q0, s0, q1, s1,
    ..., C)``: window ``i``'s tap ``j < s`` at ``[i, j]``."""
    x = _pad(x, [(0, q * s - n) for q, s, n in zip(rows, strides, x.shape[1:-1])])
    return x.reshape(x.shape[0], *(n for q, s in zip(rows, strides) for n in (q, s)), x.shape[-1])


def _slice(x: jax.Array, starts, extents, steps) -> jax.Array:
    """``x[:, start : start + extent : step, ..., :]`` on the spatial axes."""
    stops = [a + e for a, e in zip(starts, extents)]
    return lax.slice(x, (0, *starts, 0), (x.shape[0], *stops, x.shape[-1]), (1, *steps, 1))


# ----------------------------------------------------------------------------------
# T: the transposed conv


def _transposed(
    y: jax.Array,
    kernel: jax.Array,
    geometry: Geometry,
    overlap_add: bool = True,
    tap_planes: bool = False,
) -> jax.Array:
    """``T(y, K)``: one matmul for a 1x1 input; groups of several channels group by group
    (StyleGAN2's forward 27 -> 12 ms: an overlap-add batched over the groups copied its
    38 MB kernel groups first); where ``tap_planes`` (a forward not differentiated), in
    3-D, of disjoint taps and ``TAP_PLANES_MIN_CHANNELS`` to ``TAP_PLANES_MAX_CHANNELS``
    output channels, :func:`_by_tap_planes`; else, unless ``overlap_add`` is false, the
    overlap-add where its products fit ``OVERLAP_ADD_MAX_BYTES`` (times the phase
    kernel's slots per tap: the phases multiply its zeros, the overlap-add does not) or
    are at most ``OVERLAP_ADD_KERNEL_RATIO`` times the kernel (input positions at most
    that many times its channels: the phases would rearrange a kernel nearly as large),
    or its phase conv would have fewer than ``PHASES_MIN_CHANNELS`` output channels
    (``s**n`` times its own), at any size; not depthwise; else the phase decomposition.

    Forwards of k4 s2 layers past ``OVERLAP_ADD_MAX_BYTES``, medians of paired rounds (ms,
    the phases against the overlap-add): PyTorch's DCGAN generator's 4x4x512 -> 256 at
    batch 64 (positions 2 times the channels) 20.5 -> 11.9, forward+backward 55.1 -> 44.8;
    at 128 (4 times) 42.7 -> 36.0; 4x4x1024 -> 512 at 64 (once) 120 -> 60; 8x8x512 ->
    256 at 16 (2 times) 19.0 -> 12.9. Slower at 8 times (8x8x512 -> 256 at 64: 66 against
    73) and 16 (the generator's 8x8x256 -> 128 at 64: 15.5 against 23.9).

    XLA:CPU's conv to so few channels is slow. Forwards past ``OVERLAP_ADD_MAX_BYTES``,
    medians of 5-9 paired rounds (ms, the phases against the overlap-add; products in
    MiB, phase conv's channels): FSRCNN's 56 -> 1, k9 s3 (20 MiB, 9) 12.3 -> 10.8, at
    batch 96 (30 MiB) 18.2 -> 17.3; jax#31662's 3-D k3 s2 to 1 channel at batch 2 (27,
    8) 260 -> 14; 32 -> 3, k3 s2 (27, 12) 14.5 -> 8.3; 32 -> 1, k4 s2 (64, 4) 35 -> 16;
    1-D 64 -> 1, k25 s4 (64, 4) 28 -> 13. Slower: FSRCNN's at batch 128 (40, 9) 23 ->
    29; 32 -> 2, k4 s2 (64, 8) 20 -> 26.

    k3 s2 (16 slots for 9 taps: 15 MiB becomes 26.7), forwards of 18-24 MiB of products
    (paired rounds, ms, the phases against the overlap-add): seg U-Net (32 x 32x32x32 ->
    16) 4.60 -> 4.03, 16 x 32x32x64 -> 32 8.12 -> 6.48, 3-D 24^3 x 32 -> 16 12.95 ->
    8.27; slower 8 x 64x64x32 -> 16 4.46 -> 4.84, 2 x 90x120x32 -> 24 4.41 -> 5.42
    (geometric mean of the five 0.90); ENet's 36 MiB stay phases (6.3 against 17).
    """
    depthwise = geometry.groups > 1 and kernel.shape[-1] == geometry.groups
    if all(n == 1 for n in y.shape[1:-1]):
        return _from_one_pixel(y, kernel, geometry)
    if geometry.groups > 1 and not depthwise:
        one = functools.partial(_transposed, geometry=geometry._replace(groups=1))
        return _group_by_group(one, geometry.groups, y, kernel)
    products = y.size // y.shape[-1] * math.prod(kernel.shape[:-2]) * kernel.shape[-2]
    near_kernel = products <= OVERLAP_ADD_KERNEL_RATIO * kernel.size
    narrow = math.prod(geometry.strides) * kernel.shape[-2] < PHASES_MIN_CHANNELS
    bound = OVERLAP_ADD_MAX_BYTES * _phase_slots_per_tap(kernel.shape[:-2], geometry)
    by_bounds = products * 4 <= bound or near_kernel or narrow
    planes = TAP_PLANES_MIN_CHANNELS <= kernel.shape[-2] <= TAP_PLANES_MAX_CHANNELS
    if tap_planes and y.ndim == 5 and planes and _taps_disjoint(kernel.shape[:-2], geometry):
        return _by_tap_planes(y, kernel, geometry)
    if overlap_add and not depthwise and by_bounds:
        return _by_overlap_add(y, kernel, geometry)
    return _by_phases(y, kernel, geometry)


def _taps_disjoint(kernel_size, geometry: Geometry) -> bool:
    """Whether every output pixel is one tap's product: blocks of one tap each
    (:func:`_cuts_into_blocks`, each kernel size equal to its stride)."""
    same = tuple(kernel_size) == tuple(geometry.strides)
    return same and _cuts_into_blocks(kernel_size, geometry)


def _by_tap_planes(y: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``T`` (one group) of disjoint taps (:func:`_taps_disjoint`): one matmul per tap of
    the first axis, ``Z_i = y K[i]^T`` ``(B, *n, *k[1:], c)``, stacked after the first
    spatial axis; one transpose interleaves the other axes with their taps, then the crop.

    The phases and the overlap-add make the same products in one matmul, then move them
    all in one 8-axis transpose. 3-D k2 s2 forwards, paired rounds (medians of 11), the
    phases' time and the overlap-add's over tap planes' (two runs where two are given):
    V-Net's 32x32x16x128 -> 32 1.25 and 1.30, 1.16 and 1.13 (8.04, 7.38, 6.39 ms);
    32x32x16x64 -> 32 1.36 and 1.42, 1.22 and 1.23; 24^3x128 -> 32 1.13, 1.08; 2 x
    16^3x64 -> 32 1.05, 1.04; 20^3x96 -> 48 1.10 and 1.04, 1.10 and 1.05. With 16 output
    channels the phases were faster (32^3x64 -> 16: 0.90 and 0.95, 1.01 and 1.08), and
    with 64 and 128 both (16^3x128 -> 64: 0.93, 0.95; 3-D U-Net's 16^3x128 -> 128: 0.95,
    0.98). Only where not differentiated: 3-D U-Net's forward+backward with tap planes
    forced took 1.03 and 1.10 times its time by phases (two paired runs; the forward runs
    beside the input and kernel gradients).
    """
    kernel_size, spatial = kernel.shape[:-2], y.shape[1:-1]
    pixels, channels, ndim = math.prod(y.shape[:-1]), kernel.shape[-2], len(spatial)
    wide = jnp.promote_types(y.dtype, jnp.float32)
    rows = y.reshape(pixels, y.shape[-1])
    planes = [
        _matmul_nt(rows, plane.reshape(-1, plane.shape[-1]), wide)
        .astype(y.dtype)
        .reshape(*y.shape[:-1], *kernel_size[1:], channels)
        for plane in kernel
    ]
    z = jnp.stack(planes, axis=2)  # (B, n_0, k_0, n_1.., k_1.., c)
    rest = [axis for i in range(1, ndim) for axis in (2 + i, 1 + ndim + i)]
    z = z.transpose(0, 1, 2, *rest, 1 + 2 * ndim)
    out = z.reshape(y.shape[0], *(n * k for n, k in zip(spatial, kernel_size)), channels)
    return _pad(out, [(-lo, -hi) for lo, hi in geometry.pads])


def _phase_slots_per_tap(kernel_size, geometry: Geometry) -> float:
    """The phase kernel's taps over the kernel's, ``prod(s * ceil((d(k-1)+1)/s) / k)``: 1
    where each kernel size is a multiple of its stride, 16/9 for k3 s2."""
    return math.prod(
        s * -(-(d * (k - 1) + 1) // s) / k
        for k, s, d in zip(kernel_size, geometry.strides, geometry.dilation)
    )


def _by_overlap_add(y: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``T`` (one group) as one matmul and an overlap-add, in the phase domain of
    :func:`_by_phases`.

    The matmul makes every useful product ``Z[i, j] = K[j] y[i]`` (input pixel ``i``,
    tap ``j``) and reads ``K`` where it is. With ``j*d = a_j*s + b_j``, phase ``b_j`` of
    row ``q`` sums ``Z[q - a_j, j]`` over its taps (shifted pads, in float32 at least);
    then :func:`_to_space`.
    """
    kernel_size, spatial = kernel.shape[:-2], y.shape[1:-1]
    pixels, taps, channels = math.prod(y.shape[:-1]), math.prod(kernel_size), kernel.shape[-2]
    wide = jnp.promote_types(y.dtype, jnp.float32)
    z = _matmul_nt(
        y.reshape(pixels, y.shape[-1]), kernel.reshape(taps * channels, kernel.shape[-1]), wide
    )
    z = z.reshape(y.shape[0], *spatial, *kernel_size, channels)
    plan = _phase_plan(spatial, kernel_size, geometry)
    q_lo = [lo // s for (lo, _), s in zip(geometry.pads, geometry.strides)]
    phases = {}
    for j in itertools.product(*map(range, kernel_size)):
        shifts = [divmod(t * d, s) for t, d, s in zip(j, geometry.dilation, geometry.strides)]
        pads = [
            (a - lo, lo + rows - n - a)
            for (a, _), lo, rows, n in zip(shifts, q_lo, plan.rows, spatial)
        ]
        shifted = _pad(z[(slice(None), *(slice(None),) * len(spatial), *j)], pads)
        phase = tuple(b for _, b in shifts)
        phases[phase] = phases[phase] + shifted if phase in phases else shifted
    empty = jnp.zeros((y.shape[0], *plan.rows, z.shape[-1]), wide)
    stacked = _stacked_axis_by_axis(phases, empty, geometry.strides).astype(y.dtype)
    stacked = stacked.reshape(*empty.shape[:-1], math.prod(geometry.strides) * empty.shape[-1])
    return _to_space(stacked, plan, geometry)


def _stacked_axis_by_axis(phases: dict, empty: jax.Array, strides, phase: tuple = ()):
    """The phases ``(B, *rows, c)`` stacked to ``(B, *rows, *strides, c)`` (``empty`` where
    no tap lands), one spatial axis at a time.

    Stacked, not concatenated: XLA:CPU made the concatenation 2.5-4x slower in 3-D. One
    axis at a time: XLA:CPU left one stack of FSRCNN's 9 phases (k9 s3) out of the
    overlap-add's fusion, each phase a pass of its own over all of ``Z`` (its taps 81
    floats apart); stacks of 3 (and of 2) fuse into one pass. Forwards, medians of 9
    paired rounds (ms, one stack against axis by axis): FSRCNN 11.7 -> 10.8 (one stack
    spread 10.0-15.3), jax#31662's 3-D k3 s2 (8 phases) 7.67 -> 6.92.
    """
    if len(phase) == len(strides):
        return phases.get(phase, empty)
    return jnp.stack(
        [
            _stacked_axis_by_axis(phases, empty, strides, (*phase, r))
            for r in range(strides[len(phase)])
        ],
        axis=len(phase) - len(strides) - 1,
    )


def _matmul_nt(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """``a b^T`` in ``dtype``: one dot contracting both operands' last axes (an einsum adds
    copies).

    Where XLA:CPU runs its dots itself (:func:`_dots_by_eigen`) and ``b`` has at least
    ``EIGEN_LARGER_FIRST_RATIO`` times as many rows, the dot is ``b a^T``, transposed after
    an optimization barrier: Eigen's kernel for this dot is slow with the much smaller
    operand first. Forwards with the YNN fusion off, medians of paired rounds (ms; rows
    of ``a`` against ``b``): U-Net up-conv 16->32 (256 against 2048) 15.5 -> 4.6, pix2pix
    8->16 (64, 8192) 14.3 -> 4.4, MelGAN up 1 (256, 4096) 10.7 -> 3.9, StyleGAN2 (per
    group, 64, 4608) 17.0 -> 10.0, WaveGAN up 3 (512, 3200) 4.9 -> 3.4; no faster with
    twice the rows (DCGAN G3, 4.8 -> 4.9), slower with fewer (CycleGAN, 1024 against 1152:
    2.7 -> 3.1; DCGAN G5, 4096 against 48: 2.4 -> 7.6), and so with the fusion on, where
    YNNPACK runs the dot as it is.
    """
    over_last = (((1,), (1,)), ((), ()))
    if _dots_by_eigen() and b.shape[0] >= EIGEN_LARGER_FIRST_RATIO * a.shape[0]:
        product = lax.dot_general(b, a, over_last, preferred_element_type=dtype)
        return lax.optimization_barrier(product).T
    return lax.dot_general(a, b, over_last, preferred_element_type=dtype)


@functools.cache
def _dots_by_eigen() -> bool:
    """Whether XLA runs matrix products on the CPU in its own (Eigen) kernels: its
    default backend is the CPU and a plain matmul compiles to no YNNPACK fusion (XLA's
    YNN fusion off, as the ``jaxconv`` commands set it: ``XLA_FLAGS`` is read once, when
    the backend starts)."""
    if jax.default_backend() != "cpu":
        return False
    operand = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    return "__ynn_fusion" not in jax.jit(jnp.matmul).lower(operand, operand).compile().as_text()


def _from_one_pixel(y: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``T`` of a 1x1 input: ``K[j] y`` (group by group) placed at ``j*d``, then cropped
    by the pads."""
    batch, groups, (*kernel_size, channels) = y.shape[0], geometry.groups, kernel.shape[:-1]
    if groups == 1:  # one plain matmul (an einsum adds copies)
        taps = y.reshape(batch, y.shape[-1]) @ kernel.reshape(-1, kernel.shape[-1]).T
    else:
        taps = jnp.einsum(
            "ngc,tagc->ntga",
            y.reshape(batch, groups, y.shape[-1] // groups),
            kernel.reshape(math.prod(kernel_size), channels, groups, -1),
        )
    return _placed(taps.reshape(batch, *kernel_size, groups * channels), geometry)


def _placed(taps: jax.Array, geometry: Geometry) -> jax.Array:
    """A 1x1 input's products at its taps, ``(batch, *kernel_size, channels)``, placed at
    ``j*d`` and cropped by the pads: :func:`_from_one_pixel`'s output."""
    return _pad(taps, [(-lo, -hi, d - 1) for (lo, hi), d in zip(geometry.pads, geometry.dilation)])


class _PhasePlan(NamedTuple):
    """Per dimension, the phase decomposition of ``T``: see :func:`_by_phases`."""

    taps: tuple[int, ...]  # of the stride-1 phase kernel
    rhs_dilation: tuple[int, ...]  # d where unstrided, else 1
    pads: Pads  # of T's input
    rows: tuple[int, ...]  # q_hi - q_lo
    crops: tuple[tuple[int, int], ...]  # (start, size) of the output in the rows' phases


def _phase_plan(spatial: tuple[int, ...], kernel_size: tuple[int, ...], geometry: Geometry):
    taps, rhs_dilation, pads, rows, crops = [], [], [], [], []
    out_rows = _transposed_rows(spatial, kernel_size, geometry)
    for n, k, s, (lo, _), d, m in zip(
        spatial, kernel_size, geometry.strides, geometry.pads, geometry.dilation, out_rows
    ):
        taps.append(k if s == 1 else -(-(d * (k - 1) + 1) // s))
        rhs_dilation.append(d if s == 1 else 1)
        q_lo, q_hi = lo // s, -(-(lo + m) // s)
        reach = (taps[-1] - 1) * rhs_dilation[-1]
        pads.append((reach - q_lo, q_hi - n))
        rows.append(q_hi - q_lo)
        crops.append((lo - q_lo * s, m))
    return _PhasePlan(*map(tuple, (taps, rhs_dilation, pads, rows, crops)))


def _phase_kernel(kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """The stride-1 kernel ``(*taps, in / g, g * s**n * out / g)`` of ``T``, from ``K``
    ``(*k, out / g, in)``.

    Along a strided dimension, tap ``j`` goes to tap ``a_j`` and phase ``b_j`` of
    ``j*d = a_j*s + b_j``: the kernel dilated by ``d``, zero-filled to a multiple of
    ``s`` and reshaped ``(taps, s)``. An unstrided dimension keeps its ``k`` taps and
    leaves the dilation to the conv. Taps are reversed (a correlation); output
    channels are ordered (group, phase, channel).
    """
    ndim = kernel.ndim - 2
    k = kernel
    for i, (s, d) in enumerate(zip(geometry.strides, geometry.dilation)):
        axis = 2 * i  # the dimensions before i are already split into (taps, phase)
        size = k.shape[axis]
        if s > 1:
            extent = d * (size - 1) + 1
            taps = -(-extent // s)
            config = [(0, 0, 0)] * k.ndim
            config[axis] = (0, taps * s - extent, d - 1)
            k = lax.pad(k, jnp.zeros((), k.dtype), config)
            size = taps * s
        k = k.reshape(*k.shape[:axis], size // s, s, *k.shape[axis + 1 :])
    k = k.reshape(*k.shape[:-1], geometry.groups, -1)  # (..., out / g, g, in / g)
    tap_axes, phase_axes = tuple(range(0, 2 * ndim, 2)), tuple(range(1, 2 * ndim, 2))
    k = jnp.flip(k, tap_axes).transpose(
        *tap_axes, 2 * ndim + 2, 2 * ndim + 1, *phase_axes, 2 * ndim
    )
    return k.reshape(*k.shape[:ndim], k.shape[ndim], -1)


def _by_phases(y: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """``T`` as one stride-1 conv over ``s**n`` phases, then :func:`_to_space`.

    Output ``o`` (``o + lo = q*s + r``) is phase ``r`` of row ``q``; rows ``q_lo =
    floor(lo / s)`` to ``q_hi = ceil((lo + m) / s)`` are computed (``m`` outputs).
    Row ``q`` of the correlation reads the input from ``q - reach`` (``reach``: the
    phase kernel's dilated extent less one): the input is padded by
    ``(reach - q_lo, q_hi - n)`` (negative: cropped).
    """
    plan = _phase_plan(y.shape[1:-1], kernel.shape[:-2], geometry)
    unit = (1,) * len(plan.rows)
    phase_kernel = _phase_kernel(kernel, geometry)
    phases = _padded_conv(y, plan.pads, phase_kernel, unit, plan.rhs_dilation, geometry.groups)
    return _to_space(phases, plan, geometry)


def _to_space(phases: jax.Array, plan: _PhasePlan, geometry: Geometry) -> jax.Array:
    """Depth-to-space, ``(B, *rows, g * s**n * c)`` to ``(B, *(rows * s), g * c)``, and
    the crop."""
    strides, groups = geometry.strides, geometry.groups
    ndim, batch = len(strides), phases.shape[0]
    channels = phases.shape[-1] // (groups * math.prod(strides))
    out = phases.reshape(batch, *plan.rows, groups, *strides, channels)
    interleaved = [axis for i in range(ndim) for axis in (1 + i, 2 + ndim + i)]
    out = out.transpose(0, *interleaved, 1 + ndim, 2 + 2 * ndim)
    out = out.reshape(batch, *(q * s for q, s in zip(plan.rows, strides)), groups * channels)
    return out[(slice(None), *(slice(start, start + size) for start, size in plan.crops))]


def _kernel_grad(x: jax.Array, y: jax.Array, kernel_shape, geometry: Geometry) -> jax.Array:
    """``R(x, y) = d<C(x, K), y>/dK = d<T(y, K), x>/dK``, one matmul.

    A 1x1 ``y`` takes the transpose of :func:`_from_one_pixel` (a matmul; in one group
    :func:`_matmul_t` of ``x`` at the taps against ``y``: DCGAN G1's, 128 rows by 8192 x
    100, 3.0 -> 1.7 ms against the transpose's own dot, of ``x`` transposed); otherwise
    :func:`_kernel_grad_direct` or :func:`_kernel_grad_by_phases`, whichever copies
    less, or XLA's own where the im2col would be over ``IM2COL_MAX_BYTES`` or where
    :func:`_xla_r_wanted` (1-D, stride 8, few taps, many channels). With
    groups, ``x`` of one channel per group goes by :func:`_tap_sums`, image by image;
    a windowed input of several channels per group, group by group.
    """
    if all(n == 1 for n in y.shape[1:-1]):
        if geometry.groups > 1:
            return _transpose(lambda k: _from_one_pixel(y, k, geometry), kernel_shape, x)
        batch = y.shape[0]
        taps = _transpose(lambda t: _placed(t, geometry), (batch, *kernel_shape[:-1]), x)
        return _matmul_t(taps.reshape(batch, -1), y.reshape(batch, -1)).reshape(kernel_shape)
    if _xla_r_wanted(kernel_shape, geometry):
        return _kernel_grad_by_xla_conv(x, y, kernel_shape, geometry)
    kernel_size, y_channels = kernel_shape[:-2], kernel_shape[-1]
    x_channels = kernel_shape[-2] * geometry.groups
    if x_channels == geometry.groups > 1:  # one channel per group: tap sums, image by image
        grad = functools.partial(_kernel_grad_direct, kernel_shape=kernel_shape, geometry=geometry)
        return _by_chunks(grad, (x, y), math.prod(x.shape[1:]), summed=True)
    if _windows_of_x_copy_less(y, kernel_shape, geometry):
        grad, windowed = _kernel_grad_direct, x_channels
        columns_per_image = _direct_columns(y, kernel_size, x_channels)
    else:
        grad, windowed = _kernel_grad_by_phases, y_channels
        columns_per_image = _phase_columns(y, kernel_shape, geometry)
    if geometry.groups > 1 and windowed > geometry.groups:
        one = functools.partial(
            _kernel_grad,
            kernel_shape=(*kernel_shape[:-1], kernel_shape[-1] // geometry.groups),
            geometry=geometry._replace(groups=1),
        )
        return _group_by_group(one, geometry.groups, x, y, added=True)
    if _fits(columns_per_image, x.dtype):
        if grad is _kernel_grad_direct:
            return _by_windows_of_x(x, y, kernel_shape, geometry)
        grad = functools.partial(grad, kernel_shape=kernel_shape, geometry=geometry)
        return _by_chunks(grad, (x, y), columns_per_image, summed=True)
    return _kernel_grad_by_xla_conv(x, y, kernel_shape, geometry)


def _kernel_grad_by_xla_conv(x: jax.Array, y: jax.Array, kernel_shape, geometry) -> jax.Array:
    """``R`` as XLA's own: the transpose in the kernel of its conv of the padded ``x``."""
    padded = _pad(x, geometry.pads)
    xla = functools.partial(
        _xla_conv,
        padded,
        strides=geometry.strides,
        dilation=geometry.dilation,
        groups=geometry.groups,
    )
    return _transpose(xla, kernel_shape, y)


def _xla_r_wanted(kernel_shape, geometry: Geometry) -> bool:
    """Whether ``R`` is XLA's own (:func:`_kernel_grad_by_xla_conv`) rather than an im2col
    matmul or the native kernel: in 1-D, one group, no dilation, a stride of at least
    ``XLA_R_1D_MIN_STRIDE``, at most ``XLA_R_1D_MAX_TAPS`` taps and
    ``XLA_R_1D_MIN_CHANNELS`` channels or more on both sides.

    Against the native kernel since it loads its broadcasts (kernel gradient alone, XLA's
    conv over native, medians of 9 paired rounds, 2026-12-04): MelGAN up 1 (k16 s8, 512 ->
    256) 0.59, MelGAN up 2 (k16 s8, 256 -> 128) 0.91; native faster with smaller strides:
    MelGAN up 3 (k4 s2) 1.63, k8 s4 128 -> 64 1.26, k3 s1 64 -> 64 2.4. With 32 channels
    on a side (HiFi-GAN up 4's k4 s2 64 -> 32, a k16 s8 64 -> 32) the native kernel was as
    fast or faster even in its first version; with 25 taps im2col was faster than XLA's
    conv (WaveGAN).
    """
    kernel_size = kernel_shape[:-2]
    return (
        len(kernel_size) == 1
        and geometry.groups == 1
        and geometry.dilation == (1,)
        and kernel_size[0] <= XLA_R_1D_MAX_TAPS
        and geometry.strides[0] >= XLA_R_1D_MIN_STRIDE
        and min(kernel_shape[-2:]) >= XLA_R_1D_MIN_CHANNELS
    )


def _windows_of_x_copy_less(y: jax.Array, kernel_shape, geometry: Geometry) -> bool:
    """Whether ``R``'s im2col of ``x`` (:func:`_kernel_grad_direct`) copies no more per
    image than the phases (:func:`_kernel_grad_by_phases`): their im2col, and ``x`` in
    phases, a transposition that costs about twice a copy (measured)."""
    x_channels = kernel_shape[-2] * geometry.groups
    plan = _phase_plan(y.shape[1:-1], kernel_shape[:-2], geometry)
    in_phases = 2 * math.prod(plan.rows) * math.prod(geometry.strides) * x_channels
    direct = _direct_columns(y, kernel_shape[:-2], x_channels)
    return direct <= _phase_columns(y, kernel_shape, geometry) + in_phases


def _phase_columns(y: jax.Array, kernel_shape, geometry: Geometry) -> int:
    """The numbers of one image's im2col in :func:`_kernel_grad_by_phases` (windows of
    ``y``)."""
    plan = _phase_plan(y.shape[1:-1], kernel_shape[:-2], geometry)
    return math.prod(plan.rows) * math.prod(plan.taps) * kernel_shape[-1]


def _whole_batch_wanted(x: jax.Array, y: jax.Array, columns_per_image: int) -> bool:
    """Whether ``R`` by im2col of ``x`` goes over the whole batch rather than by chunks:
    where ``y``, which each chunk's matmul copies out, is at least as large per image as
    the im2col, and the whole im2col is within ``WHOLE_BATCH_MAX_BYTES``.

    Measured (ms, medians of paired rounds): WaveGAN up 5's kernel gradient (``y`` 64
    channels against 25 taps of one) 6.6 by chunks, 4.9 whole; by chunks where the im2col
    is larger than ``y``: seg U-Net 5.4 against 7.0 whole, FSRCNN 16 against 25.
    """
    whole = columns_per_image * x.shape[0] * x.dtype.itemsize
    return math.prod(y.shape[1:]) >= columns_per_image and whole <= WHOLE_BATCH_MAX_BYTES


def _direct_columns(y: jax.Array, kernel_size, x_channels: int) -> int:
    """The numbers of one image's im2col in :func:`_kernel_grad_direct` (windows of ``x``
    for ``y``'s rows)."""
    return math.prod(y.shape[1:-1]) * math.prod(kernel_size) * x_channels


def _row_block(x: jax.Array, y: jax.Array, kernel_size) -> int:
    """Rows of ``y`` per block of :func:`_kernel_grad_by_row_blocks`: an im2col within
    ``CHUNK_BYTES``."""
    per_row = _direct_columns(y, kernel_size, x.shape[-1]) // y.shape[1]
    return max(1, CHUNK_BYTES // (per_row * x.dtype.itemsize))


def _row_blocks_wanted(x: jax.Array, y: jax.Array, kernel_size, geometry: Geometry) -> bool:
    """Whether ``R`` goes by :func:`_kernel_grad_by_row_blocks`: 2-D, one image's im2col
    is over twice ``CHUNK_BYTES``, ``x`` has at least ``ROW_BLOCK_MIN_CHANNELS`` channels,
    and a block reads at most a quarter more rows of ``x`` than its own (the head and
    tail rows are copied), all within its neighbours.

    Measured on the suite (ms, medians of paired rounds, arrays as arguments): ENet's
    kernel gradient 29 -> 13, forward+backward 44 -> 34. In 3-D the kernel gradient alone
    was faster too (3-D U-Net 23 -> 17, V-Net 30 -> 21) but forward+backward slower (51
    -> 55, 52 -> 63: the loop ran beside the other ops and slowed them). Slower in 2
    blocks (CycleGAN, an im2col of 1.2 ``CHUNK_BYTES``: 4.9 whole, 5.4 in 2 blocks) and
    with one channel (jax#31662: 11.6 whole, 31 in blocks).
    """
    block = _row_block(x, y, kernel_size)
    own = block * geometry.strides[0]
    lo, tail = _block_edges(kernel_size, geometry)
    return (
        y.ndim == 4
        and y.shape[1] > 2 * block
        and x.shape[-1] >= ROW_BLOCK_MIN_CHANNELS
        and 4 * (lo + max(tail, 0)) <= own
        and 0 <= lo
        and -own < tail
    )


def _block_edges(kernel_size, geometry: Geometry) -> tuple[int, int]:
    """The rows of ``x`` that a block of ``y``'s rows reads beyond its own ``B*s``: ``lo``
    before and ``tail = d(k-1) + 1 - s - lo`` after (first spatial axis)."""
    s, d, k, lo = geometry.strides[0], geometry.dilation[0], kernel_size[0], geometry.pads[0][0]
    return lo, d * (k - 1) + 1 - s - lo


def _kernel_grad_by_row_blocks(x: jax.Array, y: jax.Array, kernel_shape, geometry, kernel=None):
    """``R`` as a sum over blocks of ``y``'s rows (its first spatial axis), one
    :func:`_kernel_grad_direct` per block in a loop. A block's im2col is within
    ``CHUNK_BYTES``, and the blocks are as few as that allows. Given ``kernel``, ``(C(x,
    K), R)``: each block's im2col also gives its rows of ``C`` (:func:`_one_im2col`).

    Block ``b`` of ``B`` rows of ``y`` reads ``x``'s rows ``b*B*s - lo`` up to ``(b+1)*B*s +
    tail`` (``tail = d(k-1) + 1 - s - lo``, cropping where negative), zeros past the ends
    of ``x``: its head (``lo`` rows before its own ``B*s``), sliced in the loop, then its
    own rows and tail, one slice of ``x``. ``y`` is padded with zero rows to whole blocks;
    ``x`` is copied only where its rows are not those of whole blocks and a tail.
    """
    kernel_size, rows = kernel_shape[:-2], y.shape[1]
    count = -(-rows // _row_block(x, y, kernel_size))
    block = -(-rows // count)  # as even as can be: the padding is less than a row per block
    own = block * geometry.strides[0]
    lo, tail = _block_edges(kernel_size, geometry)
    rest = x.shape[2:]
    x = _pad(x, [(0, count * own + max(tail, 0) - x.shape[1])])
    # no unit axis (batch * count, 1, block, ...): see _by_chunks
    y_blocks = _pad(y, [(0, count * block - rows)]).reshape(-1, block, *y.shape[2:])
    inner = geometry._replace(pads=((0, 0), *geometry.pads[1:]))

    def x_rows(image, first, extent):
        return lax.dynamic_slice(x, (image, first) + (0,) * len(rest), (1, extent, *rest))[0]

    # edges sliced in the loop: sliced before it (scanned), XLA:CPU scheduled them while a
    # transposed conv's forward outputs were live, adding to the program's peak memory
    @jax.checkpoint
    def one(index, y_block):
        image, start = index // count, index % count * own
        parts = [x_rows(image, start, own + tail)]
        if lo:
            head = x_rows(image, jnp.maximum(start - lo, 0), lo)
            parts.insert(0, jnp.where(start > 0, head, jnp.zeros_like(head)))
        x_block = jnp.concatenate(parts)[None]
        if kernel is None:
            return None, _kernel_grad_direct(x_block, y_block[None], kernel_shape, inner)
        out, grad = _one_im2col(x_block, y_block[None], kernel, inner)
        return out[0], grad

    def add(total, block):
        out, grad = one(*block)
        return total + grad, out

    total, outs = lax.scan(
        add, jnp.zeros(kernel_shape, x.dtype), (jnp.arange(len(y_blocks)), y_blocks)
    )
    if kernel is None:
        return total
    return outs.reshape(y.shape[0], count * block, *y.shape[2:])[:, :rows], total


def _kernel_grad_direct(x: jax.Array, y: jax.Array, kernel_shape, geometry) -> jax.Array:
    """``R``: ``C``'s windows of the padded ``x`` (im2col) against ``y``."""
    window = (geometry.pads, kernel_shape[:-2], geometry.strides, geometry.dilation)
    return _windows_t(x, *window, y, geometry.groups).reshape(kernel_shape)


def _input_and_kernel_grads(
    x: jax.Array, y: jax.Array, kernel: jax.Array, geometry: Geometry
) -> tuple[jax.Array, jax.Array]:
    """``(C(x, K), R(x, y))`` from one im2col of the padded ``x`` (``C``'s windows are those
    of :func:`_kernel_grad_direct`): in reverse mode, a transposed conv's input and kernel
    gradients (``x`` its cotangent)."""
    return _by_windows_of_x(x, y, kernel.shape, geometry, kernel)


def _by_windows_of_x(x: jax.Array, y: jax.Array, kernel_shape, geometry, kernel=None):
    """``R(x, y)`` by the im2col of ``x`` (given ``kernel``, ``(C(x, K), R(x, y))`` from it,
    :func:`_one_im2col`): by row blocks, over the whole batch or by chunks."""
    kernel_size = kernel_shape[:-2]
    if _row_blocks_wanted(x, y, kernel_size, geometry):
        return _kernel_grad_by_row_blocks(x, y, kernel_shape, geometry, kernel)
    if kernel is None:
        fn = functools.partial(_kernel_grad_direct, kernel_shape=kernel_shape, geometry=geometry)
        summed = True
    else:
        fn, summed = functools.partial(_one_im2col, kernel=kernel, geometry=geometry), (False, True)
    columns_per_image = _direct_columns(y, kernel_size, x.shape[-1])
    if _whole_batch_wanted(x, y, columns_per_image):
        return jax.checkpoint(fn)(x, y)
    return _by_chunks(fn, (x, y), columns_per_image, summed=summed)


def _one_im2col(
    x: jax.Array, y: jax.Array, kernel: jax.Array, geometry: Geometry
) -> tuple[jax.Array, jax.Array]:
    """``(C(x, K), R(x, y))``: the windows of the padded ``x`` times ``K``, and against
    ``y`` (:func:`_matmul_and_t`)."""
    kernel_size, rows = kernel.shape[:-2], y.shape[1:-1]
    columns = _windows(
        _pad(x, geometry.pads), kernel_size, geometry.strides, geometry.dilation, rows
    )
    out, grad = _matmul_and_t(columns, y, kernel)
    return out.reshape(y.shape), grad.reshape(kernel.shape)


def _input_then_native_kernel_grad(
    x: jax.Array, y: jax.Array, kernel: jax.Array, geometry: Geometry
) -> tuple[jax.Array, jax.Array]:
    """``(C(x, K), R(x, y))``, ``R`` by the native kernel once ``C`` is done (an optimization
    barrier joins ``x`` to ``C``'s result): in reverse mode, a transposed conv's input and
    kernel gradients (``x`` its cotangent).

    Both depend on ``x`` alone, so XLA:CPU ran them at once, the native kernel and
    XLA's product each on the same 2 cores. Forward+backward, medians of 9 paired rounds
    (ms, at once against in turn): ENet 19.8 -> 17.9, Mask R-CNN 21.6 -> 19.2 and 20.2 ->
    18.4, DCGAN G3 25.1 -> 23.7 and 25.9 -> 24.4, MelGAN up 3 24.0 -> 22.6, HiFi-GAN up 4
    14.3 -> 13.7, seg U-Net 13.0 -> 12.4, jax#31662 38.4 -> 37.4; CycleGAN, 3-D U-Net
    and lecture decoder 2 within 2 %; V-Net 36.0 -> 37.0 and 35.5 -> 36.9 (A/A 0.98-1.0).
    """
    c = _strided(x, kernel, geometry)
    after, _ = lax.optimization_barrier((x, c))
    return c, _native_r_p.bind(after, y, geometry=geometry, kernel_shape=tuple(kernel.shape))


def _shared_windows_wanted(x: jax.Array, y: jax.Array, kernel_shape, geometry) -> bool:
    """Whether the reverse mode of ``T(y)`` (``x``: its cotangent) takes ``C(x)`` and ``R(x,
    y)`` from one im2col (:func:`_input_and_kernel_grads`): where ``R`` takes the im2col of
    ``x`` (one group) and ``C`` would be XLA's conv or its own im2col (not tap by tap); in
    1-D only for one channel of ``x``.

    Forward+backward, medians of paired rounds (ms): lecture decoder 2 6.7 -> 5.1, seg
    U-Net 12.0 -> 10.2, DCGAN G3 17.6 -> 15.7, G5 21.1 -> 16.1, FSRCNN 39.5 -> 33.3, Mask
    R-CNN 14.6 -> 12.8, 3-D U-Net 33.6 -> 29.6; by row blocks, ENet 35.7 -> 33.9 and 35.3
    -> 33.5 in a second run. In 1-D with several channels XLA's conv was faster than the
    shared im2col's product and the copy of its chunks (HiFi-GAN 14.2 -> 17.1, MelGAN up 3
    25.4 -> 28.7), and so was ``C`` tap by tap (lecture decoder 3 1.8 -> 2.3).
    """
    kernel_size, channels = kernel_shape[:-2], kernel_shape[-2]
    taps = math.prod(kernel_size)
    if geometry.groups > 1 or taps == 1 or all(n == 1 for n in y.shape[1:-1]):
        return False
    if channels == 1 and taps <= PER_TAP_MAX_TAPS or len(kernel_size) == 1 and channels > 1:
        return False
    return _windows_of_x_copy_less(y, kernel_shape, geometry) and _fits(
        _direct_columns(y, kernel_size, channels), x.dtype
    )


def _input_and_kernel_grads_by_blocks(
    x: jax.Array, y: jax.Array, kernel: jax.Array, geometry: Geometry
) -> tuple[jax.Array, jax.Array]:
    """``(C(x, K), R(x, y))`` from one cut of ``x`` into blocks: ``C`` by blocks
    (:func:`_blocks_times`) and ``R`` by phases (:func:`_kernel_grad_by_phases`), whose
    phases are those blocks where :func:`_shared_blocks_wanted`; by chunks of the batch."""

    def both(x, y):
        split = _split_axes(x, kernel.shape)
        parts, rows = _in_blocks(x, kernel.shape[:-2], geometry, split)
        grad = _kernel_grad_by_phases(x, y, kernel.shape, geometry, parts=parts)
        return _blocks_times(parts, rows, kernel, geometry, split), grad

    columns_per_image = _phase_columns(y, kernel.shape, geometry) + math.prod(x.shape[1:])
    return _by_chunks(both, (x, y), columns_per_image, summed=(False, True))


def _shared_blocks_wanted(x: jax.Array, y: jax.Array, kernel: jax.Array, geometry) -> bool:
    """Whether the reverse mode of ``T(y)`` (``x``: its cotangent) takes ``C(x)`` and ``R(x,
    y)`` from one cut of ``x`` into blocks (:func:`_input_and_kernel_grads_by_blocks`):
    where ``C`` goes by blocks, ``R`` by phases, and the two cut ``x`` alike (pads ``0 <=
    lo, hi < s``: the phases start at the first block and end at the last).

    Forward+backward, medians of paired rounds (ms, two runs): FCN-8s 125 -> 111 and 128
    -> 119, FCN-32s 132 -> 124 and 128 -> 120 (the only suite layers it reaches).
    """
    return (
        _blocks_wanted(x, kernel, geometry, shared=True)
        and not _windows_of_x_copy_less(y, kernel.shape, geometry)
        and _phases_are_blocks(kernel.shape[:-2], geometry)
        and _fits(_phase_columns(y, kernel.shape, geometry), x.dtype)
    )


def _kernel_grad_by_phases(
    x: jax.Array, y: jax.Array, kernel_shape, geometry, parts: list | None = None
) -> jax.Array:
    """``R`` in the phase domain of :func:`_by_phases`.

    ``T``'s windows of the padded ``y`` (im2col) against ``x`` taken back to phases
    (the transpose of :func:`_to_space`: space-to-depth), then the transpose of
    :func:`_phase_kernel`. Or, given ``x``'s phases as the parts of :func:`_in_blocks`
    (one group), the windows against each part, concatenated; in 2-D, where the phases
    are the blocks and :func:`_split_axes` splits them, ``x`` is cut into those parts
    here, slices rather than a space-to-depth transposition (kernel gradients, medians of
    paired rounds: FCN-8s 18.2 -> 10.3 ms, FCN-32s 30.5 -> 12.2; DCGAN G3 and G5,
    pix2pix, U-Net 16->32, Mask R-CNN equal).
    """
    kernel_size = kernel_shape[:-2]
    if parts is None and _phases_are_blocks(kernel_size, geometry):
        split = _split_axes(x, kernel_shape)
        parts = _in_blocks(x, kernel_size, geometry, split)[0] if split else None
    plan = _phase_plan(y.shape[1:-1], kernel_size, geometry)
    unit = (1,) * len(plan.rows)
    window = (plan.pads, plan.taps, unit, plan.rhs_dilation)
    if parts is None:
        phase_shape = (y.shape[0], *plan.rows, x.shape[-1] * math.prod(geometry.strides))
        phases = _transpose(lambda p: _to_space(p, plan, geometry), phase_shape, x)
        phase_kernel = _windows_t(y, *window, phases, geometry.groups)
    else:
        columns = _windows(_pad(y, plan.pads), *window[1:], plan.rows)
        phase_kernel = jnp.concatenate([_matmul_t(columns, part) for part in parts], axis=-1)
    phase_kernel = phase_kernel.reshape(*plan.taps, kernel_shape[-1] // geometry.groups, -1)
    return _transpose(lambda k: _phase_kernel(k, geometry), kernel_shape, phase_kernel)


def _windows_t(x, pads, kernel_size, strides, dilation, other, groups: int) -> jax.Array:
    """``W^T other`` group by group, for the windows ``W`` (:func:`_windows`, of
    ``other``'s rows) of ``x`` padded by ``pads``: a contraction over the batch and
    rows, ``(taps * c, o)`` for one group; with groups (of one channel of ``x``),
    :func:`_tap_sums`, ``(taps, 1, g * o)``. One channel of ``x`` in 1-D or 3-D takes
    the windows transposed (:func:`_windows_of_one_channel_t`).
    """
    rows = other.shape[1:-1]
    if groups > 1:
        return _tap_sums(x, pads, kernel_size, strides, dilation, other, groups)
    if len(rows) == 3 and all(d == 1 and k <= s for k, s, d in zip(kernel_size, strides, dilation)):
        return _slabs_t(_pad(x, pads), kernel_size, strides, other)
    if x.shape[-1] == 1 and len(rows) != 2:
        columns_t = _windows_of_one_channel_t(_pad(x, pads), kernel_size, strides, dilation, rows)
        return columns_t @ other.reshape(columns_t.shape[1], other.shape[-1])
    columns = _windows(_pad(x, pads), kernel_size, strides, dilation, rows)
    return _matmul_t(columns, other)


def _windows_of_one_channel_t(x, kernel_size, strides, dilation, rows) -> jax.Array:
    """The im2col of ``x`` of one channel, transposed: ``(taps, B * prod(rows))``, so that
    ``R``'s product is a plain matmul, which XLA:CPU hands to YNNPACK (a contraction over
    both operands' rows it runs in its own kernel).

    ``x`` cut into rows of ``s`` and transposed phases first, ``(s..., B, rows of s...)``
    (one pass over ``x``); with ``j*d = a_j*s + b_j``, tap ``j``'s row of the im2col is
    phase ``b_j`` from row ``a_j`` on, runs of whole rows along the last axis. Kernel
    gradients, medians of paired rounds (ms): WaveGAN up 5 (1-D, 25 taps, 64 channels)
    2.50 -> 2.16 (A/A 2.42), jax#31662 (3-D, 27 taps, 64) 7.35 -> 5.15 (A/A 7.48), a first
    conv layer on audio (k4 s2, 64 channels) 2.12 -> 1.71; other 1-D and 3-D first layers
    equal (MONAI's 3-D stem, 16 and 32 channels). Not in 2-D, where it was slower: lecture
    decoder 3 0.31 -> 0.45, FSRCNN 3.95 -> 6.98.
    """
    batch, ndim = x.shape[0], len(rows)
    reach = [d * (k - 1) // s for k, s, d in zip(kernel_size, strides, dilation)]
    x = _in_rows_of_strides(x, [q + r for q, r in zip(rows, reach)], strides)
    x = x.reshape(x.shape[:-1])  # the one channel dropped
    x = x.transpose(*range(2, 2 * ndim + 1, 2), 0, *range(1, 2 * ndim, 2))
    taps = []
    for j in itertools.product(*map(range, kernel_size)):
        shifts = [divmod(t * d, s) for t, d, s in zip(j, dilation, strides)]
        phase = tuple(b for _, b in shifts)
        taps.append(x[(*phase, slice(None), *(slice(a, a + q) for (a, _), q in zip(shifts, rows)))])
    return jnp.stack(taps).reshape(len(taps), batch * math.prod(rows))


def _slabs_t(x: jax.Array, kernel_size, strides, other: jax.Array) -> jax.Array:
    """``W^T other`` for windows that do not overlap (``k <= s``, no dilation), with no
    im2col: ``x`` in rows of ``s`` (:func:`_in_rows_of_strides`), and for each tap of the
    leading axes a slab of it, whole along the last axis (its first ``k`` of ``s``, all
    channels), against ``other`` (:func:`_matmul_t`).

    A slab is a slice of runs of ``k * c`` contiguous numbers, where the im2col transposes
    ``x`` in runs of ``c``: kernel gradients, medians of paired rounds, 3-D U-Net 10.3 ->
    8.7 ms, V-Net 14.5 -> 11.2 (in 2-D no faster: U-Net 16->32, Mask R-CNN).
    """
    x = _in_rows_of_strides(x, other.shape[1:-1], strides)
    products = []
    for lead in itertools.product(*map(range, kernel_size[:-1])):
        taps = (a for t in lead for a in (slice(None), t))
        slab = x[(slice(None), *taps, slice(None), slice(kernel_size[-1]))]
        products.append(_matmul_t(slab, other))
    return jnp.stack(products).reshape(-1, other.shape[-1])


def _tap_sums(x, pads, kernel_size, strides, dilation, other, groups: int) -> jax.Array:
    """``sum_{n, i} xp[n, i*s + j*d, g] other[n, i, (g, :)]`` for each tap ``j``, ``(taps, 1,
    g * m)``, in float32 at least; ``xp``: ``x`` (one channel per group) padded by ``pads``.

    By phases: with ``j*d = a_j*s + b_j`` (``b_j < s``), ``xp[i*s + j*d] = x6[i + a_j, b_j]``
    for ``xp`` reshaped ``(rows of s, s)``. The taps of one shift ``a`` are one product
    summed, of ``x6`` and ``other`` shifted by ``a`` (padded), for every phase ``b`` at
    once: ``xp`` is read once per shift, not sliced per tap (XLA:CPU copies a strided
    slice at about 1 GB/s, and fuses a pad, not a crop, into the sum). CenterNet f2's
    kernel gradient 15 -> 8 ms, f4's 12 -> 7 (per image, in :func:`_kernel_grad`).
    """
    batch, spatial, ndim = x.shape[0], x.shape[1:-1], len(kernel_size)
    rows = other.shape[1:-1]
    wide = jnp.promote_types(x.dtype, jnp.float32)
    reach = [d * (k - 1) // s for k, s, d in zip(kernel_size, strides, dilation)]
    phase_rows = [q + r for q, r in zip(rows, reach)]  # xp's rows of s
    x = _pad(
        x, [(lo, p * s - n - lo) for p, s, n, (lo, _) in zip(phase_rows, strides, spatial, pads)]
    )
    x6 = x.reshape(batch, *(n for p, s in zip(phase_rows, strides) for n in (p, s)), groups)
    # channels (group, multiple) as other's, innermost: a unit axis there made XLA:CPU's
    # sums elementwise (CenterNet f2 50 ms)
    x6 = jnp.repeat(x6.astype(wide), other.shape[-1] // groups, axis=-1)
    taps = [
        tuple(zip(*(divmod(t * d, s) for t, d, s in zip(j, dilation, strides))))
        for j in itertools.product(*map(range, kernel_size))
    ]
    sums = {}
    for shift in sorted({a for a, _ in taps}):
        shifted = _pad(other, [(a, r - a) for a, r in zip(shift, reach)])
        shifted = shifted.reshape(batch, *(n for p in phase_rows for n in (p, 1)), other.shape[-1])
        sums[shift] = jnp.sum(x6 * shifted.astype(wide), axis=(0, *range(1, 2 * ndim, 2)))
    return jnp.stack([sums[a][b] for a, b in taps])[:, None].astype(x.dtype)


def _matmul_t(columns: jax.Array, other: jax.Array) -> jax.Array:
    """``columns^T other``, both flattened to ``(rows, -1)``: a contraction over rows.

    XLA folds a transposition of either operand, or of the product, into its dot; its
    kernel for ``columns^T other`` is slower on some shapes than for ``other^T columns``.
    So the product goes by rows, as ``(other^T columns)^T`` (the small product transposed
    after an optimization barrier), where :func:`_by_rows` says with a depth ratio of
    ``NN_ALONE_DEPTH_RATIO``; there ``other^T`` is written out first, behind a barrier,
    where the rows are at most half the depth or ``other`` has at least
    ``NN_WRITTEN_MIN_CHANNELS`` columns. It goes by rows too, ``other^T`` written out, with
    up to ``NN_LONG_MAX_CHANNELS`` channels and ``NN_LONG_MIN_ROWS`` rows or more (and
    the depth ratio). Kernel gradients, ms, medians of paired rounds:

    - by long rows (AMD EPYC VM, 2026-12-03): MelGAN up 1 (256 rows, 4096 deep, 512
      channels) 3.47 -> 2.84 (A/A 3.53), WaveGAN up 3 (514, 1792, 512) 3.03 -> 2.35
      (A/A 3.06; forward+backward 5.04 -> 4.28, A/A 5.04); with XLA's YNN fusion off
      3.55 -> 3.39 and 3.40 -> 2.94; with 64 rows (StyleGAN2, 4608 deep) slower, 17.8 ->
      32.3;
    - by rows, then as a 1-wide conv of ``other^T`` written out: per chunk seg U-Net
      ``4096 x 144 x 32`` 0.54 -> 0.40; 3-D U-Net (``1024`` deep, 128 channels) 14.2 ->
      10.7, CycleGAN (1152, 256) 4.1 -> 3.8, Mask R-CNN (1024, 256) 15.1 -> 13.6; slower
      with 512 channels or more (MelGAN up 1 5.3 -> 7.2, pix2pix 16 -> 30);
    - as the dot of ``other^T columns``, no copy of ``other``: HiFi-GAN up 4 6.6 -> 5.7
      (forward+backward 16.3 -> 14.7), ENet 5.6 -> 5.3, seg U-Net 3.5 -> 3.3;
    - ``other^T`` written out: DCGAN G3 (1024 rows, 2048 deep, 256 channels) 10.1 -> 8.4
      and 10.0 -> 7.8, lecture decoder 1 (256, 1568, 64) 0.52 -> 0.43, Mask R-CNN 7.0 ->
      6.3 and 7.5 -> 6.9; and by rows at twice the depth, written out: 3-D U-Net (256, 128)
      11.8 -> 10.6 and 11.0 -> 9.2, MelGAN up 3 11.3 -> 10.9 and 10.8 -> 10.3. Written
      out, HiFi-GAN's product (8192 rows, 128 deep, 64 channels) was slower alone (1.2
      -> 1.4 ms), as were ENet's and seg U-Net's.
    """
    columns, other = _as_rows(columns, other)
    (count, depth), channels = columns.shape, other.shape[1]
    over_rows = (((0,), (0,)), ((), ()))  # dot_general's dimension numbers
    long_rows = (
        count >= NN_LONG_MIN_ROWS
        and channels <= NN_LONG_MAX_CHANNELS
        and depth >= NN_ALONE_DEPTH_RATIO * channels
    )
    if not (long_rows or _by_rows(depth, channels, NN_ALONE_DEPTH_RATIO)):
        return lax.dot_general(columns, other, over_rows)
    if 2 * count <= depth or channels >= NN_WRITTEN_MIN_CHANNELS:
        product = lax.optimization_barrier(other.T) @ columns
    else:
        product = lax.dot_general(other, columns, over_rows)
    return lax.optimization_barrier(product).T


def _matmul_and_t(
    columns: jax.Array, other: jax.Array, kernel: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(columns kernel, columns^T other)``, ``columns`` and ``other`` flattened to
    ``(rows, -1)``, ``kernel`` to ``(depth, -1)``: where :func:`_matmul_t` goes by rows,
    two 1-wide convs that read ``columns`` in the same form (the second of ``other^T``
    written out). XLA:CPU writes an im2col out once per form it is read in, not once in
    all; beside the first conv, :func:`_matmul_t`'s dot was slower (forward+backward,
    lecture decoder 2 4.9 -> 6.2 ms, seg U-Net 11.6 -> 12.6, 3-D U-Net 24.7 -> 27.1)."""
    columns, other = _as_rows(columns, other)
    kernel = kernel.reshape(columns.shape[1], -1)
    if not _by_rows(*columns.shape[1:], *other.shape[1:], NN_WIDE_DEPTH_RATIO):
        return columns @ kernel, columns.T @ other
    conv = functools.partial(_xla_conv, strides=(1,), dilation=(1,), groups=1)
    return conv(columns[None], kernel[None])[0], conv(other.T[None], columns[None])[0].T


def _as_rows(columns: jax.Array, other: jax.Array) -> tuple[jax.Array, jax.Array]:
    rows, depth = math.prod(other.shape[:-1]), math.prod(columns.shape[other.ndim - 1 :])
    return columns.reshape(rows, depth), other.reshape(rows, other.shape[-1])


def _by_rows(depth: int, channels: int, wide_ratio: int) -> bool:
    """Whether a product ``columns^T other`` of an im2col ``depth`` deep against
    ``channels`` goes by rows: at most ``NN_MAX_CHANNELS`` and at least ``NN_MIN_DEPTH``
    deep, or at most ``NN_WIDE_MAX_CHANNELS`` and ``wide_ratio`` times as deep."""
    return (channels <= NN_MAX_CHANNELS and depth >= NN_MIN_DEPTH) or (
        channels <= NN_WIDE_MAX_CHANNELS and depth >= wide_ratio * channels
    )


# ----------------------------------------------------------------------------------
# The differentiable pair


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    return _strided(x, kernel, geometry)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_transpose(y: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    return _transposed(y, kernel, geometry, tap_planes=True)


def _conv_jvp(geometry, primals, tangents):
    """``dC = T^T(dx) + R(x, .)^T(dK)``: reverse mode gives ``T(g)`` and ``R(x, g)``.

    Where ``K`` has a tangent and ``R`` is not native, ``C`` goes by the im2col that ``R``
    reads (:func:`_windows_shared`), or by blocks where ``R`` goes by phases that are those
    blocks (:func:`_shared_blocks_wanted`): XLA computes the windows, or the cut, once."""
    x, kernel = primals
    dx, dkernel = tangents
    shape = _out(x, kernel, geometry)
    by_native = not _is_zero(dkernel) and _native_wanted(x, shape, kernel.shape, geometry)
    shared = not (_is_zero(dkernel) or by_native)  # the forward may share R's windows
    if shared and _windows_shared(x, kernel, geometry):
        pads, strides, dilation = geometry.pads, geometry.strides, geometry.dilation
        out = _padded_conv(x, pads, kernel, strides, dilation, 1, im2col=True)
    elif shared and _shared_blocks_wanted(x, shape, kernel, geometry):
        out = _by_blocks(x, kernel, geometry)
    else:
        out = _strided(x, kernel, geometry)
    terms = []
    if not _is_zero(dx):
        terms.append(_transpose(lambda g: _transposed(g, kernel, geometry), out.shape, dx))
    if not _is_zero(dkernel):
        terms.append(_kernel_term(x, dkernel, geometry, kernel.shape, out.shape, "y", by_native))
    return out, _sum(terms, out)


def _windows_shared(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> bool:
    """Whether ``C(x, K)``, differentiated in ``K``, goes by the im2col that ``R(x, .)``
    reads, so that XLA computes those windows once for both: 2-D, one group, not by
    blocks, several input channels and taps, ``R`` by the im2col of ``x`` (not of ``y``)
    and the whole batch's within ``CHUNK_BYTES`` (one piece for both, not chunks).

    Forward+backward, medians of paired rounds (ms; XLA's conv, which YNNPACK runs,
    against the shared im2col): the lecture encoder's second conv (14x14x16 to 7x7x32,
    k3 s2) at batch 128 2.04 -> 1.62 (A/A 2.23), at 64 0.91 -> 0.75; a k3 s1 conv of
    16x16x32 at batch 8 0.94 -> 0.81; with XLA's YNN fusion off 1.98 -> 1.58 and 0.83 ->
    0.68. The lecture's train step at batch 256: 19.4k -> 20.8k images/s (A/A 19.4k), off
    23.8k -> 25.5k (A/A 23.7k). Slower in 1-D (k3 s1, 8x512x32: 0.78 -> 1.03). Alone,
    XLA's conv is faster (0.39 against 0.60 ms), and stays the forward where ``K`` has no
    tangent.
    """
    kernel_size, channels = kernel.shape[:-2], kernel.shape[-2]
    taps = math.prod(kernel_size)
    if len(kernel_size) != 2 or geometry.groups > 1 or channels == 1 or taps == 1:
        return False
    if _blocks_wanted(x, kernel, geometry):
        return False
    y = _out(x, kernel, geometry)
    whole = x.shape[0] * _direct_columns(y, kernel_size, channels) * x.dtype.itemsize
    return _windows_of_x_copy_less(y, kernel.shape, geometry) and whole <= CHUNK_BYTES


def _out(x: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.ShapeDtypeStruct:
    """The shape and dtype of ``C(x, K)``."""
    rows = _conv_rows(
        x.shape[1:-1], geometry.pads, kernel.shape[:-2], geometry.strides, geometry.dilation
    )
    return jax.ShapeDtypeStruct((x.shape[0], *rows, kernel.shape[-1]), x.dtype)


def _windows_over_native(kernel: jax.Array) -> bool:
    """Whether, with both gradients wanted, a transposed conv takes them from the one
    im2col of the cotangent that XLA's route shares rather than the native kernel
    gradient beside ``C``: in 2-D to 2-3 channels (an RGB image, say), where ``C`` would be
    XLA's conv of 2-3 channels, which YNNPACK runs slowly; in 3-D to one channel.

    DCGAN G5 (64 x 32x32x64 -> 64x64x3, k4 s2), forward+backward, ``fast: no native`` over
    ``auto``: 0.98, 0.97 and 0.92 in three full benchmark runs; 16.2 against 17.0 ms and
    16.0 against 17.5 in 21 and 15 paired rounds (``C`` by an im2col of its own beside the
    native kernel gradient: 19.8). The 2-D bound is the fold's: under
    ``FOLD_MIN_CHANNELS``, ``C`` stays XLA's strided conv (:func:`_width_fold_wanted`).
    jax#31662 (64x64x32x64 -> 1 channel, 3-D k3 s2): on the host before the native kernel
    was the faster; on family 25 model 17 (AVX-512, 2026-12-05) ``fast: no native`` over
    ``auto`` read 0.967, 0.957 and 0.933 in runs J-L and 0.935 and 0.948 in paired rounds.
    With one channel in 1-D and 2-D the native kernel stays the faster (``auto`` over ``fast:
    no native`` in runs J-L: WaveGAN up 5 0.88-0.92, lecture decoder 3 0.93-0.96)."""
    if kernel.ndim == 5:
        return kernel.shape[-2] == 1
    return kernel.ndim == 4 and 1 < kernel.shape[-2] < FOLD_MIN_CHANNELS


def _transposed_rows(spatial, kernel_size, geometry: Geometry) -> list[int]:
    """The rows of ``T`` of ``spatial``: ``(n-1)s + d(k-1) + 1 - lo - hi``."""
    return [
        (n - 1) * s + d * (k - 1) + 1 - lo - hi
        for n, k, s, (lo, hi), d in zip(
            spatial, kernel_size, geometry.strides, geometry.pads, geometry.dilation
        )
    ]


def _transposed_out(y: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.ShapeDtypeStruct:
    """The shape and dtype of ``T(y, K)``."""
    rows = _transposed_rows(y.shape[1:-1], kernel.shape[:-2], geometry)
    channels = kernel.shape[-2] * geometry.groups
    return jax.ShapeDtypeStruct((y.shape[0], *rows, channels), y.dtype)


def _conv_transpose_jvp(geometry, primals, tangents):
    """``dT = C^T(dy) + R(., y)^T(dK)``: reverse mode gives ``C(g)`` and ``R(g, y)``, from
    one im2col of ``g`` where :func:`_shared_windows_wanted` and ``R`` is not native; a
    native ``R`` after ``C`` (:func:`_input_then_native_kernel_grad`).

    Where ``C(g)`` goes with the width's phases folded (:func:`_width_fold_wanted`), ``T``
    goes by phases, not by the overlap-add. Forward+backward of k3 s2 transposed convs of
    32 channels to 16 (medians of 11-21 paired rounds, ms; the overlap-add against the
    phases): 256x7x7 (the lecture decoder's second) 6.05 -> 5.52 and 6.28 -> 5.88, 64x14x14
    5.89 -> 5.06, 32x16x16 3.52 -> 3.30; 64x8x8 1.92 against 1.91; 64 channels to 32 within
    3 %. Without the fold, the overlap-add was as fast or faster (6.42 against 6.71, 5.50
    against 5.38, 3.43 against 3.66): with it in the same program, the fold gained the
    overlap-add little or nothing.
    """
    y, kernel = primals
    dy, dkernel = tangents
    folded = not _is_zero(dy) and _width_fold_wanted(
        _transposed_out(y, kernel, geometry), kernel, geometry
    )
    out = _transposed(y, kernel, geometry, overlap_add=not folded)
    by_native = not _is_zero(dkernel) and _native_wanted(out, y, kernel.shape, geometry)
    shared_windows = _shared_windows_wanted(out, y, kernel.shape, geometry)
    if by_native and not _is_zero(dy) and shared_windows and _windows_over_native(kernel):
        by_native = False
    both_wanted = not (_is_zero(dy) or _is_zero(dkernel) or by_native)
    if both_wanted and shared_windows:
        both = functools.partial(_input_and_kernel_grads, y=y, kernel=kernel, geometry=geometry)
        return out, _transpose(both, out.shape, (dy, dkernel))
    if both_wanted and _shared_blocks_wanted(out, y, kernel, geometry):
        both = functools.partial(
            _input_and_kernel_grads_by_blocks, y=y, kernel=kernel, geometry=geometry
        )
        return out, _transpose(both, out.shape, (dy, dkernel))
    if by_native and not _is_zero(dy):
        both = functools.partial(
            _input_then_native_kernel_grad, y=y, kernel=kernel, geometry=geometry
        )
        return out, _transpose(both, out.shape, (dy, dkernel))
    terms = []
    if not _is_zero(dy):
        terms.append(_transpose(lambda g: _strided(g, kernel, geometry), out.shape, dy))
    if not _is_zero(dkernel):
        terms.append(_kernel_term(y, dkernel, geometry, kernel.shape, out.shape, "x", by_native))
    return out, _sum(terms, out)


_conv.defjvp(_conv_jvp, symbolic_zeros=True)
_conv_transpose.defjvp(_conv_transpose_jvp, symbolic_zeros=True)


def _native_wanted(x, y, kernel_shape, geometry: Geometry) -> bool:
    """Whether ``R(x, y)`` (``x`` and ``y`` arrays or shapes) goes by
    :func:`jaxconv.native.kernel_grad`: on the CPU where it builds, 1-D to 3-D, no
    dilation, float32, at most ``NATIVE_MAX_TAPS`` taps, ``y`` more than one pixel (else
    one matmul), and one group of at most ``NATIVE_MAX_CHANNEL_PAIRS`` channel pairs
    ``Cx * Cy``, or depthwise (``Cx = Cy`` groups, a multiple of 8), or several groups of
    a multiple of 8 channels of ``y`` each; not where XLA's conv is faster
    (:func:`_xla_r_wanted`). Where it is wanted, the callers
    take it over XLA's route sharing its windows or blocks with the other gradient or the
    forward.

    Since the kernel's register block loads its broadcasts (2026-12-04, the same VM;
    kernel gradient alone, native over XLA's route, medians of 9 paired rounds): MelGAN
    up 3 0.61, WaveGAN up 4 (k25 s4, 128 -> 64) 0.69, 2-D k4 s2 and k3 s2 128 -> 64 0.67,
    Mask R-CNN (256 x 256) 0.82, WaveGAN up 3 (256 -> 128) 0.89, DCGAN G3 and CycleGAN
    1.0; past 256 x 256 pairs slower: pix2pix 8 -> 16 (512 x 1024) 1.18, StyleGAN2's
    groups (512 x 512) 1.08. Forward+backward, native over the shared im2col or blocks
    (two runs of 9-15 rounds): ENet 0.54, WaveGAN up 5 0.88, lecture decoder 2 0.81 and
    0.97, DCGAN G3 0.95, Mask R-CNN 0.96, seg U-Net 1.07 and 0.81, DCGAN G5 1.03 and 0.94,
    CycleGAN 1.05 and 1.00; the autoencoder's train step 1.07-1.08x as many images/s at
    batch 256 and 1024.

    In 3-D, against XLA's route (kernel gradient alone and forward+backward, 11 rounds):
    V-Net (k2 s2, 128 -> 32 channels) 0.58 and 0.77, jax#31662 (k3 s2) 0.43
    and 0.95, 3-D U-Net (k2 s2) 0.84 and 1.0.

    In groups, against XLA's route group by group (:func:`_group_by_group`), kernel
    gradient alone and forward+backward, 11 rounds: StyleGAN2 (4 groups of 512 x 512
    channels) 0.68 and 0.91 (0.64 alone with no page faults: its 38 MB gradient costs
    ~10 ms of them a call), the ``grouped g=4`` op case 0.56 and 0.88.

    With its first version (2026-12-03), FCN's 256 and 4096 taps took 1.5-1.9x XLA's
    route by phases (no im2col): hence ``NATIVE_MAX_TAPS``.
    """
    kernel_size = kernel_shape[:-2]
    if any(d != 1 for d in geometry.dilation):
        return False
    if math.prod(kernel_size) > NATIVE_MAX_TAPS or _xla_r_wanted(kernel_shape, geometry):
        return False
    if x.dtype != jnp.float32 or y.dtype != jnp.float32 or math.prod(y.shape[1:-1]) == 1:
        return False
    x_channels, y_channels, groups = x.shape[-1], y.shape[-1], geometry.groups
    if _native_depthwise(x_channels, y_channels, groups):
        if x_channels % 8:
            return False
    elif groups > 1:
        if y_channels % (8 * groups):
            return False
    elif x_channels * y_channels > NATIVE_MAX_CHANNEL_PAIRS:
        return False
    return jax.default_backend() == "cpu" and native.available()


def _native_depthwise(x_channels: int, y_channels: int, groups: int) -> bool:
    """Whether the native kernel takes ``R`` as depthwise (``i = j`` only): groups of one
    channel on both sides."""
    return groups == x_channels == y_channels > 1


def _kernel_term(other, dkernel, geometry: Geometry, kernel_shape, shape, wrt: str, by_native):
    """A tangent's kernel term ``R(., y)^T(dK)`` (``wrt="x"``, ``other`` is ``y``) or
    ``R(x, .)^T(dK)`` (``wrt="y"``, ``other`` is ``x``), of shape ``shape``: reverse mode
    transposes it back to the native ``R`` where ``by_native``, else to XLA's route."""
    params = dict(geometry=geometry, kernel_shape=tuple(kernel_shape), shape=shape, wrt=wrt)
    if by_native:
        return _kernel_term_p.bind(other, dkernel, **params)
    return _kernel_term_by_xla(other, dkernel, **params)


def _kernel_term_by_xla(other, dkernel, *, geometry, kernel_shape, shape, wrt):
    """:func:`_kernel_term` as the transpose of XLA's route to ``R``."""

    def grad(operand):
        x, y = (operand, other) if wrt == "x" else (other, operand)
        return _kernel_grad(x, y, kernel_shape, geometry)

    return _transpose(grad, shape, dkernel)


def _kernel_term_transposed(cotangent, other, dkernel, *, geometry, kernel_shape, shape, wrt):
    """Reverse mode's kernel gradient: ``R(cotangent, y)`` or ``R(x, cotangent)``, native."""
    x, y = (cotangent, other) if wrt == "x" else (other, cotangent)
    return _native_r_p.bind(x, y, geometry=geometry, kernel_shape=kernel_shape)


def _kernel_term_transposed_in_other(cotangent, other, dkernel, **params):
    """The term's transpose in ``other`` (from a second derivative), by XLA's route."""
    example = jax.ShapeDtypeStruct(other.aval.shape, other.aval.dtype)
    term = functools.partial(_kernel_term_by_xla, dkernel=dkernel, **params)
    return jax.linear_transpose(term, example)(cotangent)[0]


def _native_r(x, y, *, geometry: Geometry, kernel_shape):
    """``R(x, y)`` by :func:`jaxconv.native.kernel_grad`."""
    lows = tuple(lo for lo, _ in geometry.pads)
    depthwise = _native_depthwise(x.shape[-1], y.shape[-1], geometry.groups)
    groups = 1 if depthwise else geometry.groups
    return native.kernel_grad(x, y, kernel_shape[:-2], geometry.strides, lows, depthwise, groups)


def _native_r_transposed_in_x(cotangent, x, y, *, geometry, kernel_shape):
    return _kernel_term_p.bind(
        y, cotangent, geometry=geometry, kernel_shape=kernel_shape, shape=x.aval.shape, wrt="x"
    )


def _native_r_transposed_in_y(cotangent, x, y, *, geometry, kernel_shape):
    return _kernel_term_p.bind(
        x, cotangent, geometry=geometry, kernel_shape=kernel_shape, shape=y.aval.shape, wrt="y"
    )


def _bilinear_primitive(name: str, evaluate: Callable, shape: Callable, transposes) -> Primitive:
    """A primitive bilinear in its two operands: ``evaluate(a, b, **params)`` computes it
    (eagerly, and lowered), of shape ``shape(**params)`` and ``b``'s dtype; ``transposes``
    in ``a`` and in ``b``, as :func:`jax.interpreters.ad.defbilinear` takes them. Under
    ``vmap``, ``evaluate`` vmapped."""
    primitive = Primitive(name)
    primitive.def_impl(evaluate)
    primitive.def_abstract_eval(
        lambda a, b, **params: jax.core.ShapedArray(shape(**params), b.dtype)
    )
    mlir.register_lowering(primitive, mlir.lower_fun(evaluate, multiple_results=False))
    ad.defbilinear(primitive, *transposes)

    def batched(operands, axes, **params):
        return jax.vmap(functools.partial(evaluate, **params), in_axes=axes)(*operands), 0

    batching.primitive_batchers[primitive] = batched
    return primitive


# The kernel term, bilinear in (other, dK): forward mode evaluates XLA's route, reverse
# mode calls the native R. R, bilinear in (x, y): its transposes are the kernel term
# again, so derivatives of any order reach the native kernel wherever reverse mode meets R.
# Under vmap, XLA's route and the native call in a loop (``vmap_method="sequential"``).
_kernel_term_p = _bilinear_primitive(
    "jaxconv_kernel_term",
    _kernel_term_by_xla,
    lambda shape, **_: shape,
    (_kernel_term_transposed_in_other, _kernel_term_transposed),
)
_native_r_p = _bilinear_primitive(
    "jaxconv_native_kernel_grad",
    _native_r,
    lambda kernel_shape, **_: kernel_shape,
    (_native_r_transposed_in_x, _native_r_transposed_in_y),
)


def _transpose(linear_fun: Callable, shape: tuple[int, ...], tangent) -> jax.Array:
    """The transpose of ``linear_fun`` (of inputs ``shape``) applied to ``tangent`` (an
    array, or a tuple of one per output of ``linear_fun``).

    Transposed again (reverse mode), these operations become ``linear_fun``'s own.
    """
    example = jax.ShapeDtypeStruct(shape, jax.tree.leaves(tangent)[0].dtype)
    return jax.linear_transpose(linear_fun, example)(tangent)[0]


def _is_zero(tangent) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _sum(terms: list[jax.Array], like: jax.Array) -> jax.Array:
    return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(like)


# ----------------------------------------------------------------------------------
# Batch chunks


def _by_chunks(
    fn: Callable, arrays: tuple, columns_per_image: int, summed: bool | tuple[bool, ...] = False
):
    """``fn(*arrays)``, an im2col and a matmul, over chunks of the batch (leading axis).

    A chunk's im2col, at most ``CHUNK_BYTES``, is written and read back in cache
    rather than in memory (XLA:CPU fuses neither side of the matmul into it). The
    chunk is the largest divisor of the batch within that size if it is more than
    half of it; otherwise chunks of that size and a smaller rest. Chunks are
    rematerialised: reverse mode recomputes a chunk's im2col rather than keeping
    every chunk's. ``summed``: the chunks' results are added (a kernel gradient),
    else concatenated along the batch (for a tuple of results, one flag each); a
    kernel gradient whose whole im2col is within two chunks goes over the whole batch
    where it is at least ``WHOLE_MIN_ADDED_BYTES``, as adding it up costs a pass over it
    per chunk (forward+backward, medians of paired rounds: DCGAN G3, 2 MiB, 21.9 -> 18.7
    ms, Mask R-CNN, 1 MiB, 17.0 -> 14.8; four other layers and the train step unchanged;
    the kernel gradient alone unchanged). A smaller one goes by chunks, its im2col in
    cache: lecture decoder 2's, 18 KiB (an im2col of 6.9 MiB, two chunks), 1.34 -> 0.92
    ms alone (A/A 1.35) and 1.67 -> 1.43 in forward+backward (A/A 1.59).
    """
    whole = jax.checkpoint(fn)
    batch = arrays[0].shape[0]
    image_bytes = max(1, columns_per_image * arrays[0].dtype.itemsize)
    target = max(1, CHUNK_BYTES // image_bytes)
    one = isinstance(summed, bool)
    flags = (summed,) if one else summed
    if target >= batch:
        return whole(*arrays)
    # the summed results' shapes, the same for a chunk as for the whole batch
    shaped = jax.eval_shape(whole, *arrays)
    added = [r for r, f in zip((shaped,) if one else shaped, flags) if f]
    added_bytes = sum(r.size * r.dtype.itemsize for r in added)
    if added and batch * image_bytes <= 2 * CHUNK_BYTES and added_bytes >= WHOLE_MIN_ADDED_BYTES:
        return whole(*arrays)
    chunk = max(d for d in range(1, target + 1) if batch % d == 0)
    chunk = chunk if 2 * chunk > target else target
    count = batch // chunk
    # the loop reads chunks without a unit axis (of one image, or of one channel): XLA:CPU
    # copies an array reshaped with one into the loop (CenterNet f2's kernel gradient 18.9
    # -> 16.2 ms)
    shapes = [(chunk, *a.shape[1:]) for a in arrays]
    heads = [
        a[: count * chunk].reshape(count, *(n for n in shape if n != 1))
        for a, shape in zip(arrays, shapes)
    ]

    @jax.checkpoint
    def step(*chunks):
        results = fn(*(c.reshape(s) for c, s in zip(chunks, shapes)))
        return (results,) if one else results

    # summed results are added up in the loop: a sum of stacked results ran as a slow reduce
    def add_or_stack(totals, chunks):
        results = step(*chunks)
        added = [r for r, f in zip(results, flags) if f]
        return [t + r for t, r in zip(totals, added)], [r for r, f in zip(results, flags) if not f]

    zeros = [jnp.zeros(r.shape, r.dtype) for r in added]
    totals, stacked = lax.scan(add_or_stack, zeros, heads)
    totals, stacked = iter(totals), iter(s.reshape(count * chunk, *s.shape[2:]) for s in stacked)
    out = [next(totals) if f else next(stacked) for f in flags]
    if count * chunk < batch:
        rest = whole(*(a[count * chunk :] for a in arrays))
        rest = (rest,) if one else rest
        out = [o + r if f else jnp.concatenate([o, r]) for o, r, f in zip(out, rest, flags)]
    return out[0] if one else tuple(out)


# ----------------------------------------------------------------------------------
# Helpers


def _fits(numbers: int, dtype) -> bool:
    """Whether one image's im2col of ``numbers`` elements is within ``IM2COL_MAX_BYTES``."""
    return numbers * jnp.dtype(dtype).itemsize <= IM2COL_MAX_BYTES


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
    spatial = _SPATIAL[ndim]
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def _pad(x: jax.Array, spatial_pads) -> jax.Array:
    """``x`` padded (negative: cropped) on the axes after the first by ``(lo, hi[, interior])``.

    Axes past ``spatial_pads`` (channels) are left as they are.
    """
    config = [(0, 0, 0), *((lo, hi, rest[0] if rest else 0) for lo, hi, *rest in spatial_pads)]
    config += [(0, 0, 0)] * (x.ndim - len(config))
    return lax.pad(x, jnp.zeros((), x.dtype), config)
