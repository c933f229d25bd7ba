"""Network architectures: plain nn.Modules, built by `build_model`."""

from __future__ import annotations

from torch import nn

from modelyard.config import Hyperparams
from modelyard.models.bag import BagOfEmbeddings
from modelyard.models.cnn import CNN
from modelyard.models.conv1d import FCN, ResNet1D
from modelyard.models.ensemble import Ensemble
from modelyard.models.lstm import LSTMNet, MaskedLSTM
from modelyard.models.mlp import MLP

__all__ = ["CNN", "FCN", "MLP", "BagOfEmbeddings", "Ensemble", "LSTMNet", "MaskedLSTM", "ResNet1D", "build_model"]


def build_model(
    family: str,
    input_shape: int | tuple[int, ...],
    n_outputs: int,
    hparams: Hyperparams,
    vocab_size: int | None = None,
    masked: bool = False,
    n_numeric: int = 0,
) -> nn.Module:
    """The network for a model family, sized for one sample's input shape (features for
    `ann`; channels, height, width for `cnn`; steps and features, or steps of token ids when
    `vocab_size` is given, for `lstm`) and built from hyperparameters. `masked`: the LSTM's
    last input channel is a step mask (padded sequence classification). `n_numeric`: how
    many trailing feature columns are numeric (an MLP's periodic embeddings take them)."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if family == "ann":
        return MLP(
            shape[0],
            n_outputs,
            n_layers=hparams.n_layers,
            units=hparams.units,
            activation=hparams.activation,
            dropout=hparams.dropout,
            batch_norm=hparams.batch_norm,
            n_numeric=n_numeric,
            embedding=hparams.numeric_embedding,
            n_frequencies=hparams.n_frequencies,
            embedding_dim=hparams.numeric_embed_dim,
            frequency_scale=hparams.frequency_scale,
            n_bins=hparams.n_bins,
        )
    if family == "cnn":
        return CNN(
            shape[0],
            (shape[1], shape[2]),
            n_outputs,
            n_blocks=hparams.n_blocks,
            filters=hparams.filters,
            kernel_size=hparams.kernel_size,
            dense_units=hparams.dense_units,
            dropout=hparams.dropout,
        )
    if family == "lstm" and hparams.arch in ("fcn", "resnet"):
        if not masked:
            raise ValueError(f"arch {hparams.arch!r} classifies padded sequences (a masked input)")
        return (FCN if hparams.arch == "fcn" else ResNet1D)(
            shape[-1] - 1, n_outputs, filters=hparams.filters, dropout=hparams.dropout
        )
    if family == "lstm" and hparams.arch == "bag":
        if not vocab_size:
            raise ValueError("arch 'bag' embeds token ids: it needs a vocabulary (a text task)")
        return BagOfEmbeddings(vocab_size, n_outputs, embed_dim=hparams.embed_dim, dropout=hparams.dropout)
    if family == "lstm":  # arch lstm, or auto in bundles saved before arch existed
        return (MaskedLSTM if masked else LSTMNet)(
            n_outputs,
            n_features=None if vocab_size else shape[-1] - int(masked),
            vocab_size=vocab_size,
            embed_dim=hparams.embed_dim,
            hidden_size=hparams.hidden_size,
            n_layers=hparams.n_layers,
            bidirectional=hparams.bidirectional,
            dropout=hparams.dropout,
        )
    raise ValueError(f"unknown model family {family!r}")
