"""CNN and LSTM networks: output shapes, variable lengths, and fitting one tiny batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelyard.models.cnn import CNN
from modelyard.models.lstm import LSTMNet

pytestmark = pytest.mark.usefixtures("one_thread")


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def overfit(model: nn.Module, inputs: tuple, target: torch.Tensor, loss_fn: nn.Module, steps: int) -> float:
    """Train on one batch with Adam; the last loss, measured in eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return loss_fn(model(*inputs), target).item()


# --- CNN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "n_blocks"), [(1, (8, 8), 4), (1, (28, 28), 2), (3, (32, 32), 3), (3, (12, 20), 2)]
)
def test_cnn_returns_one_logit_per_class(channels: int, size: tuple[int, int], n_blocks: int) -> None:
    model = CNN(channels, size, 10, n_blocks=n_blocks, filters=4, kernel_size=3, dense_units=8, dropout=0.2)
    model.eval()
    out = model(torch.rand(3, channels, *size, generator=generator()))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_cnn_stops_pooling_when_the_map_is_one_pixel() -> None:
    # 8 -> 4 -> 2 -> 1, then a fourth and fifth block without pooling.
    model = CNN(1, (8, 8), 2, n_blocks=5, filters=2, kernel_size=3, dense_units=4, dropout=0.0)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 2)


def test_cnn_filters_double_each_block_and_convs_keep_the_size() -> None:
    model = CNN(3, (16, 16), 5, n_blocks=3, filters=4, kernel_size=5, dense_units=8, dropout=0.0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16]
    assert all(c.padding == (2, 2) for c in convs)
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(16, 8), (8, 5)]


def test_cnn_rejects_an_even_kernel_and_channels_last_images() -> None:
    with pytest.raises(ValueError, match="odd"):
        CNN(1, (8, 8), 2, n_blocks=1, filters=4, kernel_size=4, dense_units=4, dropout=0.0)
    model = CNN(1, (8, 8), 2, n_blocks=1, filters=4, kernel_size=3, dense_units=4, dropout=0.0)
    with pytest.raises(ValueError, match="permute"):
        model(torch.rand(2, 8, 8, 1))


def test_cnn_fits_one_small_batch() -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 1, 8, 8, generator=generator(1))
    labels = torch.arange(16) % 4
    model = CNN(1, (8, 8), 4, n_blocks=2, filters=8, kernel_size=3, dense_units=16, dropout=0.0)
    loss = overfit(model, (images,), labels, nn.CrossEntropyLoss(), steps=80)
    assert loss < 0.05
    assert (model(images).argmax(dim=1) == labels).all()


# --- LSTM --------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_numeric_mode_shapes(bidirectional: bool) -> None:
    model = LSTMNet(6, n_features=3, hidden_size=8, n_layers=2, bidirectional=bidirectional, dropout=0.1)
    model.eval()
    x = torch.randn(4, 7, 3, generator=generator())
    assert model(x).shape == (4, 6)
    assert model(x, lengths=torch.tensor([7, 3, 1, 5])).shape == (4, 6)
    assert model.head.in_features == 8 * (2 if bidirectional else 1)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_ignores_whatever_follows_a_sequences_length(bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = LSTMNet(2, n_features=3, hidden_size=8, n_layers=2, bidirectional=bidirectional).eval()
    short = torch.randn(1, 4, 3, generator=generator(1))
    padded = torch.cat([short, torch.randn(1, 6, 3, generator=generator(2)) * 100], dim=1)
    other = torch.randn(1, 10, 3, generator=generator(3))
    with torch.no_grad():
        alone = model(short)
        batched = model(torch.cat([padded, other]), lengths=torch.tensor([4, 10]))
        without_lengths = model(torch.cat([padded, other]))
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
    assert torch.allclose(batched[1], model(other)[0], atol=1e-5)
    assert not torch.allclose(without_lengths[0], alone[0], atol=1e-3)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_token_mode_reads_padding_as_the_end(bidirectional: bool) -> None:
    model = LSTMNet(3, vocab_size=20, embed_dim=4, hidden_size=8, bidirectional=bidirectional).eval()
    assert model.embedding.padding_idx == 0
    ids = torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 9], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        inferred = model(ids)
        given = model(ids, lengths=torch.tensor([3, 5, 1]))
        as_floats = model(ids.float())
        alone = model(torch.tensor([[5, 6, 7]]))
    assert inferred.shape == (3, 3)
    assert torch.allclose(inferred, given, atol=1e-6)
    assert torch.allclose(inferred, as_floats)
    assert torch.allclose(inferred[0], alone[0], atol=1e-5)


def test_lstm_needs_exactly_one_input_mode() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LSTMNet(2)
    with pytest.raises(ValueError, match="exactly one"):
        LSTMNet(2, n_features=3, vocab_size=10)


def test_lstm_token_classifier_fits_one_small_batch() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([3, 5, 2, 6, 4, 6, 1, 5, 2, 3, 6, 4])
    ids = torch.randint(2, 30, (12, 6), generator=generator(1))
    ids[torch.arange(6)[None, :] >= lengths[:, None]] = 0
    labels = torch.arange(12) % 3
    model = LSTMNet(3, vocab_size=30, embed_dim=8, hidden_size=16, bidirectional=True, dropout=0.0)
    loss = overfit(model, (ids, lengths), labels, nn.CrossEntropyLoss(), steps=150)
    assert loss < 0.05
    assert (model(ids, lengths).argmax(dim=1) == labels).all()


def test_lstm_forecaster_fits_one_small_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 8, 2, generator=generator(1))
    y = torch.randn(12, 3 * 2, generator=generator(2))  # horizon 3, 2 targets
    model = LSTMNet(6, n_features=2, hidden_size=32, n_layers=1)
    loss = overfit(model, (x,), y, nn.MSELoss(), steps=200)
    assert loss < 0.01
