"""jaxconv: PyTorch-exact convolutions and transposed convolutions for JAX/Flax.

``jaxconv.shapes`` is importable without JAX; ``import jaxconv`` imports no torch.
"""

__version__ = "0.1.0"
