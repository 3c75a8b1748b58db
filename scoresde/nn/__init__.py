"""Reference score networks."""

from scoresde.nn.embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from scoresde.nn.mlp import MLP
from scoresde.nn.unet import UNet

__all__ = ["MLP", "UNet", "GaussianFourierEmbedding", "SinusoidalEmbedding"]
