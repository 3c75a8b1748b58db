"""Reference score networks."""

from scoresde.nn.embeddings import GaussianFourierEmbedding, LabelEmbedding, SinusoidalEmbedding
from scoresde.nn.mlp import MLP, ClassifierMLP
from scoresde.nn.unet import UNet

__all__ = ["MLP", "ClassifierMLP", "UNet", "GaussianFourierEmbedding", "LabelEmbedding", "SinusoidalEmbedding"]
