"""Third-party PyTorch networks ported to Flax NNX on :mod:`jaxconv.nnx`'s layers.

Each port's attribute names mirror the torch module tree (``nnx.Sequential`` where torch
has an indexed ``nn.Sequential``, :class:`~jaxconv.ports.monai_blocks.NamedSequential`
where its children have names), so :func:`jaxconv.interop.load_state_dict` takes the
torch network's ``state_dict`` as it is. Inputs are channels-last.

- :mod:`jaxconv.ports.monai_unet`: MONAI's ``UNet``;
- :mod:`jaxconv.ports.monai_basic_unet`: MONAI's ``BasicUNet``;
- :mod:`jaxconv.ports.dcgan`: the generator and discriminator of PyTorch's DCGAN example;
- :mod:`jaxconv.ports.monai_blocks`: the MONAI blocks both MONAI networks are made of.
"""
