"""A fastText-style text classifier: the mean of word and bigram embeddings, then a linear head."""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.dropout import Dropout

BIGRAM_PRIME = 1_000_003


class BagOfEmbeddings(nn.Module):
    """Token ids (N, T), 0 = padding, -> logits (N, `n_outputs`).

    Each real token and each bigram of two consecutive real tokens is embedded; the bigrams
    are hashed into `n_buckets` extra embedding rows (default: 4 * vocab_size, at least
    1024, at most 2**18). Their mean (a zero vector for an empty text), after dropout, goes
    through Linear(embed_dim, n_outputs). Word order counts only through the bigrams, and
    padding never changes the output. Float ids (the float32 arrays `training.fit` makes)
    are accepted and cast.
    """

    def __init__(
        self,
        vocab_size: int,
        n_outputs: int,
        *,
        embed_dim: int = 64,
        dropout: float = 0.0,
        n_buckets: int | None = None,
    ) -> None:
        super().__init__()
        if n_buckets is None:
            n_buckets = max(1024, min(4 * vocab_size, 2**18))
        if vocab_size < 1 or n_buckets < 1:
            raise ValueError("vocab_size and n_buckets must be >= 1")
        self.vocab_size, self.n_buckets = vocab_size, n_buckets
        self.embedding = nn.EmbeddingBag(vocab_size + n_buckets, embed_dim, mode="sum")
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(embed_dim, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        real = ids != 0
        bigrams = self.vocab_size + (ids[:, :-1] * BIGRAM_PRIME + ids[:, 1:]) % self.n_buckets
        ids = torch.cat([ids, bigrams], dim=1)
        real = torch.cat([real, real[:, :-1] & real[:, 1:]], dim=1)
        weights = real.to(self.embedding.weight.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = self.embedding(ids, per_sample_weights=weights)
        return self.head(self.dropout(mean))
