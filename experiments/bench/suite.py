"""What the benchmark measures: transposed-conv layers, each with its source.

``OP_CASES`` are this project's own cases; ``SUITE`` transposed convs of published
architectures at batch sizes of their training where one forward+backward fits about
50 ms on 2 cores (at most ~0.6 GMAC forward, ~40 MB of output); ``QUICK_SUITE`` the
names ``--quick`` runs at batch 1. Imports torch (``Layer.torch_module``), not JAX.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from jaxconv import shapes

REFERENCE_MAX_GMAC = 10.0  # suite: the reference's dilated conv above this is not timed
QUICK_REFERENCE_MAX_GMAC = 1.0  # the same in --quick (a 3-D reference takes seconds)
TRAIN_BATCHES = (64, 256, 1024)  # the lecture autoencoder's train step
TORCH_CONV_TRANSPOSE = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One transposed conv: a channels-last ``input`` (batch, *spatial, channels) and
    ``torch.nn.ConvTransposeNd``'s arguments, with where it comes from."""

    name: str
    input: tuple[int, ...]
    out_channels: int
    kernel: int
    stride: int
    padding: int = 0
    output_padding: int = 0
    groups: int = 1
    bias: bool = True
    dtype: str = "float32"
    source: str = ""

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions."""
        return len(self.input) - 2

    def output_spatial(self) -> tuple[int, ...]:
        """The output's spatial shape (torch's formula, :mod:`jaxconv.shapes`)."""
        return shapes.conv_transpose_output_shape(
            self.input[1:-1], self.kernel, self.stride, self.padding, self.output_padding
        )

    def _macs(self, batch_pixels: int) -> int:
        return (
            batch_pixels
            * self.kernel**self.ndim
            * self.input[-1]
            * self.out_channels
            // self.groups
        )

    def macs(self) -> int:
        """Useful multiply-adds of the forward (no multiplied zeros): input pixels x k^n
        x in x out / groups (border taps that the padding crops are counted)."""
        return self._macs(math.prod(self.input[:-1]))

    def dilated_macs(self) -> int:
        """Those of one conv over the stride-dilated input (the reference's forward)."""
        return self._macs(self.input[0] * math.prod(self.output_spatial()))

    def torch_module(self, device: str = "cpu") -> torch.nn.Module:
        """``torch.nn.ConvTransposeNd`` with these arguments (float32, torch's init)."""
        return TORCH_CONV_TRANSPOSE[self.ndim](
            self.input[-1],
            self.out_channels,
            self.kernel,
            self.stride,
            self.padding,
            self.output_padding,
            groups=self.groups,
            bias=self.bias,
            device=device,
        )

    def with_batch(self, batch: int) -> Layer:
        """The same layer at another batch size."""
        return dataclasses.replace(self, input=(batch, *self.input[1:]))

    def describe(self) -> dict:
        """The fields, the output's spatial shape and the forward's GMAC, for the JSON."""
        return {
            **dataclasses.asdict(self),
            "output_spatial": list(self.output_spatial()),
            "gmac": self.macs() / 1e9,
        }


OWN = "this project's benchmark case"
OP_CASES = [
    Layer("decoder 14->28", (256, 14, 14, 32), 16, 3, 2, 1, 1, source=OWN),
    Layer("k4 s2 64x64", (32, 64, 64, 64), 64, 4, 2, 1, source=OWN),
    Layer("decoder 1->7 (matmul)", (256, 1, 1, 64), 32, 7, 1, source=OWN),
    Layer("3-D 8->16", (16, 8, 8, 8, 32), 16, 3, 2, 1, 1, source=OWN),
    Layer("grouped g=4", (64, 28, 28, 64), 64, 3, 2, 1, 1, groups=4, source=OWN),
]

# fmt: off
SUITE = [
    Layer("DCGAN G1 z->4x4", (128, 1, 1, 100), 512, 4, 1, 0, bias=False,
          source="DCGAN generator (Radford et al. 2016; PyTorch's DCGAN example, nz=100, ngf=64): "
                 "layer 1, z 1x1x100 -> 4x4x512; batch 128 (the paper's)"),
    Layer("DCGAN G3 8->16", (16, 8, 8, 256), 128, 4, 2, 1, bias=False,
          source="DCGAN generator (as above): layer 3, 8x8x256 -> 16x16x128; batch 16"),
    Layer("DCGAN G5 32->64 RGB", (64, 32, 32, 64), 3, 4, 2, 1, bias=False,
          source="DCGAN generator (as above): layer 5, 32x32x64 -> 64x64x3 image; batch 64"),
    Layer("StyleGAN2 modconv up g=4", (1, 8, 8, 2048), 2048, 3, 2, 0, groups=4, bias=False,
          source="StyleGAN2 (Karras et al. 2020), config F, the 16x16 block's up-sampling "
                 "modulated conv as implemented in rosinality/stylegan2-pytorch: conv_transpose2d "
                 "k3 s2 p0 with groups = batch (4 per GPU), 8x8x(4*512) -> 17x17x(4*512), blurred "
                 "after"),
    Layer("pix2pix U-Net up 8->16", (1, 8, 8, 1024), 512, 4, 2, 1, bias=False,
          source="pix2pix (Isola et al. 2017), unet_256 generator: up block 8x8x(512+512) -> "
                 "16x16x512, k4 s2 p1; batch 1 (the paper's)"),
    Layer("CycleGAN up 32->64", (1, 32, 32, 256), 128, 3, 2, 1, 1,
          source="CycleGAN (Zhu et al. 2017), resnet_6blocks generator on 128x128 images: first "
                 "up-sampling, 32x32x256 -> 64x64x128, k3 s2 p1 op1; batch 1 (the paper's)"),
    Layer("U-Net up-conv 16->32", (1, 16, 16, 1024), 512, 2, 2,
          source="U-Net (Ronneberger et al. 2015), first 2x2 up-convolution 1024 -> 512 channels, "
                 "on a 256x256 input with same-padded convs (as common PyTorch ports); batch 1 "
                 "(the paper's)"),
    Layer("seg U-Net up 32->64", (32, 32, 32, 32), 16, 3, 2, 1, 1,
          source="this project's segmentation U-Net (jaxconv.segmentation, widths 16-32-64-128) on "
                 "64x64 scenes: the last Up, 32x32x32 -> 64x64x16, k3 s2 p1 op1; batch 32"),
    Layer("FCN-8s upscore8", (1, 70, 70, 21), 21, 16, 8, bias=False,
          source="FCN-8s (Long et al. 2015) on a 500x500 PASCAL VOC image: upscore8, 70x70x21 -> "
                 "568x568x21 (cropped to 500 after), k16 s8, no bias; batch 1"),
    Layer("FCN-32s upscore", (1, 16, 16, 21), 21, 64, 32, bias=False,
          source="FCN-32s (Long et al. 2015) on a 500x500 PASCAL VOC image: upscore, 16x16x21 -> "
                 "544x544x21 (cropped to 500 after), k64 s32, no bias; batch 1"),
    Layer("Mask R-CNN mask head", (8, 14, 14, 256), 256, 2, 2,
          source="Mask R-CNN (He et al. 2017) mask head (torchvision's MaskRCNNPredictor): "
                 "14x14x256 -> 28x28x256, k2 s2; 8 RoIs"),
    Layer("CenterNet IDAUp f2 depthwise", (4, 64, 64, 64), 64, 4, 2, 1, groups=64, bias=False,
          source="CenterNet (Zhou et al. 2019), DLA-34 IDAUp on a 512x512 input: up f=2, depthwise "
                 "(groups=64) k4 s2 p1, 64x64x64 -> 128x128x64, no bias; batch 4"),
    Layer("CenterNet IDAUp f4 depthwise", (4, 32, 32, 64), 64, 8, 4, 2, groups=64, bias=False,
          source="CenterNet (as above): up f=4, depthwise (groups=64) k8 s4 p2, 32x32x64 -> "
                 "128x128x64, no bias; batch 4"),
    Layer("FSRCNN x3 deconv", (64, 32, 32, 56), 1, 9, 3, 4, 2,
          source="FSRCNN (Dong et al. 2016), x3: the last layer, deconvolution 56 -> 1 channel, k9 "
                 "s3 p4 op2, 32x32 -> 96x96; batch 64"),
    Layer("ENet full conv", (2, 180, 240, 16), 12, 3, 2, 1, 1, bias=False,
          source="ENet (Paszke et al. 2016) on CamVid 360x480: the final full conv, 180x240x16 -> "
                 "360x480x12 classes, k3 s2 p1 op1, no bias; batch 2"),
    Layer("MelGAN up 1 (x8)", (8, 32, 512), 256, 16, 8, 4,
          source="MelGAN (Kumar et al. 2019) generator, ratios 8-8-2-2: up-sampling 1, 32 frames x "
                 "512 -> 256 x 256, k16 s8 p4 (8192-sample segments); batch 8"),
    Layer("MelGAN up 3 (x2)", (8, 2048, 128), 64, 4, 2, 1,
          source="MelGAN (as above): up-sampling 3, 2048 x 128 -> 4096 x 64, k4 s2 p1; batch 8"),
    Layer("HiFi-GAN V1 up 4 (x2)", (8, 4096, 64), 32, 4, 2, 1,
          source="HiFi-GAN V1 (Kong et al. 2020) generator, rates 8-8-2-2, kernels 16-16-4-4: "
                 "up-sampling 4, 4096 x 64 -> 8192 x 32, k4 s2 p1 (8192-sample segments); batch 8"),
    Layer("WaveGAN up 3 (x4)", (2, 256, 256), 128, 25, 4, 11, 1,
          source="WaveGAN (Donahue et al. 2019) generator, d=64, PyTorch ports: transposed conv 3, "
                 "256 x 256 -> 1024 x 128, k25 s4 p11 op1; batch 2"),
    Layer("WaveGAN up 5 -> audio", (16, 4096, 64), 1, 25, 4, 11, 1,
          source="WaveGAN (as above): transposed conv 5, 4096 x 64 -> 16384 samples x 1, k25 s4 "
                 "p11 op1; batch 16"),
    Layer("3-D U-Net up-conv 16->32", (1, 16, 16, 16, 128), 128, 2, 2,
          source="3-D U-Net (Cicek et al. 2016): the last 2x2x2 up-convolution, 16^3x128 -> "
                 "32^3x128 (a 32^3 patch with same-padded convs); batch 1"),
    Layer("V-Net up_tr64", (1, 32, 32, 16, 128), 32, 2, 2,
          source="V-Net (Milletari et al. 2016) on 128x128x64 volumes, as in vnet.pytorch: "
                 "up_tr64's de-convolution 32x32x16x128 -> 64x64x32x32, k2 s2; batch 1"),
    Layer("jax#31662 3-D k3 s2", (1, 64, 64, 32, 64), 1, 3, 2, 1, 1,
          source="jax issue 31662 (ConvTranspose3d gradients 32x slower than torch): its layer, "
                 "64x64x32x64 -> 128x128x64x1, k3 s2 p1 op1, in float32 (the issue: bfloat16); "
                 "batch 1"),
    Layer("lecture decoder 1 (1->7)", (256, 1, 1, 64), 32, 7, 1,
          source="the lecture autoencoder (jaxconv.models): decoder layer 1, 1x1x64 -> 7x7x32, k7; "
                 "batch 256"),
    Layer("lecture decoder 2 (7->14)", (256, 7, 7, 32), 16, 3, 2, 1, 1,
          source="the lecture autoencoder: decoder layer 2, 7x7x32 -> 14x14x16, k3 s2 p1 op1; "
                 "batch 256"),
    Layer("lecture decoder 3 (14->28)", (256, 14, 14, 16), 1, 3, 2, 1, 1,
          source="the lecture autoencoder: decoder layer 3, 14x14x16 -> 28x28x1, k3 s2 p1 op1; "
                 "batch 256"),
]
# fmt: on
# --quick: one 1-D, one grouped, one 3-D and one of the lecture's, at batch 1
QUICK_SUITE = (
    "HiFi-GAN V1 up 4 (x2)",
    "StyleGAN2 modconv up g=4",
    "3-D U-Net up-conv 16->32",
    "lecture decoder 2 (7->14)",
)


def select(layers: list[Layer], patterns: str) -> list[Layer]:
    """The layers whose name contains one of the comma-separated ``patterns`` (any case),
    in their order; ValueError naming the layers where a pattern matches none."""
    wanted = [p.strip().lower() for p in patterns.split(",") if p.strip()]
    if not wanted:
        raise ValueError("cases: name at least one suite layer")
    for pattern in wanted:
        if not any(pattern in layer.name.lower() for layer in layers):
            names = ", ".join(layer.name for layer in layers)
            raise ValueError(f"cases: {pattern!r} is in no suite layer's name; they are: {names}")
    return [layer for layer in layers if any(p in layer.name.lower() for p in wanted)]
