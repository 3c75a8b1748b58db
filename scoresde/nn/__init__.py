"""Reference score networks."""

from scoresde.nn.embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from scoresde.nn.mlp import MLP

__all__ = ["MLP", "GaussianFourierEmbedding", "SinusoidalEmbedding"]
