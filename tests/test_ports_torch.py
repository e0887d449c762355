"""jaxconv.ports against torch: MONAI's UNet and BasicUNet, PyTorch's DCGAN example.

Each network is built in torch, its weights loaded into the port by name
(``interop.load_state_dict``, strict), and both are run side by side: evaluation
outputs, training-mode outputs, the gradients of an MSE loss, three SGD steps on the
same batches (running statistics after them, then evaluation outputs again), and the
weights back to torch bitwise. Sizes are small, one compile per function and network.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from layer_parity import QUICK_COMPILE
from monai.networks.nets import BasicUNet as TorchBasicUNet
from monai.networks.nets import UNet as TorchUNet
from torch import nn

from jaxconv import interop
from jaxconv.ports import dcgan
from jaxconv.ports.monai_basic_unet import BasicUNet
from jaxconv.ports.monai_unet import UNet
from jaxconv.torch_reference import channels_first, channels_last

pytestmark = pytest.mark.parity

FORWARD_TOL = 1e-5  # max |ours - torch's| / max |torch's|, per output or tensor
GRADIENT_TOL = 1e-4
GRADIENT_FLOOR = 1e-2  # of the model's largest gradient
STATS_TOL = 1e-5
LEARNING_RATE = 0.05
STEPS = 3


# PyTorch's DCGAN example (pytorch/examples, dcgan/main.py) at 16x16 (nz=8, ngf=ndf=4,
# nc=3), the discriminator's last 4x4 conv replaced by a Flatten -> Linear head


class TorchGenerator(nn.Module):
    def __init__(self, nz=8, ngf=4, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # state size. (ngf*2) x 4 x 4
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # state size. (ngf) x 8 x 8
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
            # state size. (nc) x 16 x 16
        )

    def forward(self, input):
        return self.main(input)


class TorchDiscriminator(nn.Module):
    def __init__(self, ndf=4, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            # input is (nc) x 16 x 16
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf) x 8 x 8
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*2) x 4 x 4
            nn.Flatten(),
            nn.Linear(ndf * 2 * 4 * 4, 1),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


def weights_init(m):
    """The example's initialisation."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def _dcgan(model):
    model.apply(weights_init)
    return model


@dataclass(frozen=True)
class Network:
    torch_model: Callable[[], nn.Module]
    port: Callable[[nnx.Rngs], nnx.Module]
    input_shape: tuple[int, ...]  # torch's (batch, channels, *spatial)


# channels (4, 8): one strided level around the bottom; (4, 8, 16) nests a second one
UNET = dict(in_channels=1, out_channels=2, num_res_units=2)
SHALLOW = dict(channels=(4, 8), strides=(2,))
DEEP = dict(channels=(4, 8, 16), strides=(2, 2))
BASIC = dict(in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))

NETWORKS = {
    "unet-2d-instance": Network(
        lambda: TorchUNet(2, **DEEP, **UNET),
        lambda r: UNet(2, **DEEP, **UNET, rngs=r),
        (2, 1, 16, 16),
    ),
    "unet-2d-batch": Network(
        lambda: TorchUNet(2, **SHALLOW, **UNET, norm="batch"),
        lambda r: UNet(2, **SHALLOW, **UNET, norm="batch", rngs=r),
        (2, 1, 16, 16),
    ),
    "unet-3d-instance": Network(
        lambda: TorchUNet(3, **SHALLOW, **UNET),
        lambda r: UNet(3, **SHALLOW, **UNET, rngs=r),
        (2, 1, 8, 8, 8),
    ),
    "unet-3d-batch": Network(
        lambda: TorchUNet(3, **SHALLOW, **UNET, norm="batch"),
        lambda r: UNet(3, **SHALLOW, **UNET, norm="batch", rngs=r),
        (2, 1, 8, 8, 8),
    ),
    # 36 rows: 36-18-9-4-2 down, so one up-sampled map (8 rows) is padded to the skip's 9
    "basic-unet-instance-deconv": Network(
        lambda: TorchBasicUNet(2, **BASIC),
        lambda r: BasicUNet(2, **BASIC, rngs=r),
        (2, 1, 36, 32),
    ),
    "basic-unet-batch-nontrainable": Network(
        lambda: TorchBasicUNet(2, **BASIC, norm="batch", upsample="nontrainable"),
        lambda r: BasicUNet(2, **BASIC, norm="batch", upsample="nontrainable", rngs=r),
        (2, 1, 36, 32),
    ),
    "dcgan-generator": Network(
        lambda: _dcgan(TorchGenerator()),
        lambda r: dcgan.Generator(nz=8, ngf=4, nc=3, image_size=16, rngs=r),
        (2, 8, 1, 1),
    ),
    "dcgan-discriminator": Network(
        lambda: _dcgan(TorchDiscriminator()),
        lambda r: dcgan.Discriminator(ndf=4, nc=3, image_size=16, rngs=r),
        (2, 3, 16, 16),
    ),
}


def _perturb(model: nn.Module) -> None:
    """Norm scales and shifts, PReLU slopes and running statistics off their initial
    values, so that a swapped or unused tensor shows in the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.1, 0.4, generator=generator)
            norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm))
            if norm and getattr(module, "weight", None) is not None:
                module.weight.normal_(1.0, 0.2, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            if norm and getattr(module, "running_mean", None) is not None:
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)


def _relative(ours, theirs, floor: float = 0.0) -> float:
    """``max |ours - theirs| / max |theirs|`` (the denominator at least ``floor``)."""
    theirs = np.asarray(theirs, np.float64)
    scale = max(float(np.max(np.abs(theirs))), floor)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / scale)


@functools.partial(jax.jit, static_argnums=0, compiler_options=QUICK_COMPILE)
def _forward_pure(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def _forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return _forward_pure(*nnx.split(model), x)


@functools.partial(jax.jit, static_argnums=0, compiler_options=QUICK_COMPILE)
def _train_step_pure(graphdef, state, x, target):
    model = nnx.merge(graphdef, state)

    def loss_fn(model):
        out = model(x)
        return jnp.mean((out - target) ** 2), out

    (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    params = nnx.state(model, nnx.Param)
    sgd = optax.sgd(LEARNING_RATE)
    updates, _ = sgd.update(grads, sgd.init(params), params)
    nnx.update(model, optax.apply_updates(params, updates))
    return out, grads, nnx.state(model)


def _train_step(model: nnx.Module, x: jax.Array, target: jax.Array):
    """One SGD step on the MSE to ``target``, in place: the outputs and the gradients."""
    graphdef, state = nnx.split(model)
    out, grads, state = _train_step_pure(graphdef, state, x, target)
    nnx.update(model, state)
    return out, grads


def _torch_layout(model: nnx.Module, grads: nnx.State) -> dict[str, np.ndarray]:
    """The gradients as a torch state_dict: ``model``'s graph holding them as parameters."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return interop.to_state_dict(nnx.merge(graphdef, grads, rest))


def _ours(array) -> np.ndarray:
    """A channels-last output in torch's layout (a 1-D one as it is)."""
    return channels_first(array) if np.ndim(array) > 1 else np.asarray(array)


@functools.cache
def _abstract_split(name: str) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: NETWORKS[name].port(nnx.Rngs(0))))


def _abstract_port(name: str) -> nnx.Module:
    """A new abstract port of ``NETWORKS[name]`` (``nnx.eval_shape``: no initialisation
    computed), its graph traced once per process."""
    return nnx.merge(*_abstract_split(name), copy=True)


def _jax(t: torch.Tensor) -> jax.Array:
    """A torch batch channels-last (a 1-D one as it is), as float32: ``jnp.asarray``
    without a dtype would compile a copy program per shape."""
    return jnp.asarray(channels_last(t) if t.ndim > 1 else t.numpy(), jnp.float32)


def _torch_sgd_step(model: nn.Module) -> None:
    """``torch.optim.SGD(lr=LEARNING_RATE).step()``, written out: ``torch.optim`` imports
    ``torch._dynamo``, seconds once per process."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-LEARNING_RATE)


def _differences(name: str) -> dict[str, float]:
    """The largest relative differences from torch of one network's outputs, gradients
    and running statistics, by what was compared."""
    network = NETWORKS[name]
    torch.manual_seed(0)
    torch_model = network.torch_model()
    _perturb(torch_model)
    model = _abstract_port(name)
    interop.load_state_dict(model, torch_model.state_dict())
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(network.input_shape, generator=generator) for _ in range(STEPS + 1)]
    found = {}

    torch_model.eval(), model.eval()
    theirs = torch_model(batches[0]).detach()
    found["eval output"] = _relative(_ours(_forward(model, _jax(batches[0]))), theirs)

    torch_model.train(), model.train()
    target = torch.rand(theirs.shape, generator=generator)
    for step, x in enumerate(batches[1:]):
        torch_model.zero_grad()
        out = torch_model(x)
        torch.mean((out - target) ** 2).backward()
        torch_grads = {key: p.grad.clone() for key, p in torch_model.named_parameters()}
        _torch_sgd_step(torch_model)
        ours, grads = _train_step(model, _jax(x), _jax(target))
        if step == 0:
            found["training output"] = _relative(_ours(ours), out.detach())
            grads = _torch_layout(model, grads)
            # a conv bias before a norm has a gradient of 0 in exact arithmetic: its
            # rounding noise is measured against 1% of the largest gradient instead
            floor = GRADIENT_FLOOR * max(float(g.abs().max()) for g in torch_grads.values())
            for key, theirs in torch_grads.items():
                found[f"gradient {key}"] = _relative(grads[key], theirs, floor)

    exported = interop.to_state_dict(model)
    for key, theirs in torch_model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            found[f"after {STEPS} steps {key}"] = _relative(exported[key], theirs)
        elif key.endswith("num_batches_tracked"):
            found[f"after {STEPS} steps {key}"] = float(exported[key] != theirs.item())

    torch_model.eval(), model.eval()
    found[f"eval output after {STEPS} steps"] = _relative(
        _ours(_forward(model, _jax(batches[0]))), torch_model(batches[0]).detach()
    )
    return found


def _tolerance(what: str) -> float:
    if what.startswith("gradient"):
        return GRADIENT_TOL
    return STATS_TOL if what.startswith("after") else FORWARD_TOL


@pytest.mark.parametrize("name", NETWORKS)
def test_a_ported_network_computes_what_torch_computes(name):
    """Outputs (evaluation and training), gradients and running statistics after three
    SGD steps, each within its tolerance of torch's."""
    found = _differences(name)
    assert len(found) > 3
    beyond = {what: d for what, d in found.items() if not d <= _tolerance(what)}
    assert not beyond, f"beyond tolerance: {beyond}"


@pytest.mark.parametrize("name", NETWORKS)
def test_a_ported_networks_weights_go_to_torch_and_back_bitwise(name):
    network = NETWORKS[name]
    torch.manual_seed(0)
    torch_model = network.torch_model()
    _perturb(torch_model)
    model = _abstract_port(name)
    interop.load_state_dict(model, torch_model.state_dict())
    back = network.torch_model()
    back.load_state_dict(interop.to_state_dict(model, as_torch=True), strict=True)
    again = _abstract_port(name)
    interop.load_state_dict(again, back.state_dict())
    for key, value in torch_model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    for (path, ours), (_, theirs) in zip(
        nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(again))
    ):
        np.testing.assert_array_equal(ours.get_value(), theirs.get_value(), err_msg=str(path))


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: UNet(2, 1, 1, (4, 8), (2,), act="gelu", rngs=nnx.Rngs(0)), "act"),
        (lambda: UNet(2, 1, 1, (4, 8), (2,), norm="group", rngs=nnx.Rngs(0)), "norm"),
        (lambda: UNet(2, 1, 1, (4,), (), rngs=nnx.Rngs(0)), "channels"),
        (lambda: BasicUNet(2, upsample="pixelshuffle", rngs=nnx.Rngs(0)), "upsample"),
        (lambda: dcgan.Generator(image_size=48, rngs=nnx.Rngs(0)), "image_size"),
    ],
    ids=["act", "norm", "channels", "upsample", "image_size"],
)
def test_options_the_ports_do_not_have_are_refused_naming_them(build, argument):
    with pytest.raises(ValueError, match=argument):
        nnx.eval_shape(build)  # built abstractly: no initialisation is computed
