"""Network architectures: plain nn.Modules, built by `build_model`."""

from modelyard.models.mlp import MLP, build_model

__all__ = ["MLP", "build_model"]
