"""The sequence network: an LSTM over numeric steps or token ids, read out at each
sequence's last valid step."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from modelyard.models.dropout import Dropout


class LSTMNet(nn.Module):
    """LSTM -> Dropout -> Linear(`n_outputs`): logits for classification, values for
    forecasting (`n_outputs` = horizon * number of targets).

    Two input modes, chosen by which size is given:
    - `n_features`: numeric sequences, float (N, T, F);
    - `vocab_size`: token ids, int64 (N, T), through Embedding(vocab_size, embed_dim,
      padding_idx=0). Id 0 is padding, so when `lengths` is not given it is inferred as the
      count of non-zero ids (right padding, as `TextVectorizer` writes it). Float ids are
      accepted and cast, so the float32 arrays `training.fit` makes work as they are.

    `dropout` applies between stacked LSTM layers and before the head.
    """

    def __init__(
        self,
        n_outputs: int,
        *,
        n_features: int | None = None,
        vocab_size: int | None = None,
        embed_dim: int = 64,
        hidden_size: int = 64,
        n_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (n_features is None) == (vocab_size is None):
            raise ValueError("give exactly one of n_features (numeric sequences) or vocab_size (token ids)")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size is not None else None
        self.lstm = nn.LSTM(
            embed_dim if vocab_size is not None else n_features,
            hidden_size,
            num_layers=n_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if n_layers > 1 else 0.0,
        )
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), n_outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """x: (N, T, F) floats or (N, T) token ids; lengths: valid steps per sequence.

        A length of 0 (an empty text) is read as 1: the network sees one padding step.
        """
        if self.embedding is not None:
            ids = x.long()
            if lengths is None:
                lengths = (ids != 0).sum(dim=1)
            x = self.embedding(ids)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu().clamp(min=1)
            x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        # h_n holds each sequence's last valid step (packed input) in the input's order; for a
        # bidirectional LSTM its last two rows are the forward state at the last step and the
        # backward state at the first step.
        _, (h_n, _) = self.lstm(x)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.lstm.bidirectional else h_n[-1]
        return self.head(self.dropout(last))


class MaskedLSTM(LSTMNet):
    """An LSTMNet for padded numeric sequences whose last input channel marks the real steps
    (1) and the padding (0): the lengths travel inside the input, so the one training loop
    feeds it like any other network, and the batch is still packed."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        return super().forward(x[..., :-1], x[..., -1].sum(dim=1).round().long())
