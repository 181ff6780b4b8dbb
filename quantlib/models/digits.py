"""A small real model for the PTQ/QAT chapters: an MLP trained on scikit-learn's bundled digits.

1,797 8x8 images of handwritten digits ship inside scikit-learn (no download); a narrow MLP
reaches ~95% held-out accuracy in a few seconds on a CPU, and its few, small layers make the
damage of 4-bit weights and activations visible.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DigitsData:
    """Train/test split of the digits: pixels scaled to [0, 1] (float32), labels int64."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_data(test_fraction: float = 0.3, seed: int = 0) -> DigitsData:
    """The 1,797 digits split at random (fixed `seed`) into train and held-out test sets."""
    from sklearn.datasets import load_digits  # optional dependency: the book extra

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)  # pixels are 0..16
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.tensor(np.random.default_rng(seed).permutation(len(y)))
    n_test = round(test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


def digits_mlp(hidden: int = 32, depth: int = 2, seed: int = 0) -> nn.Sequential:
    """64 -> hidden (x depth, ReLU) -> 10: the digits classifier of chapters 7-8."""
    if hidden < 1 or depth < 1:
        raise ValueError(f"hidden and depth must be >= 1, got hidden={hidden}, depth={depth}")
    torch.manual_seed(seed)
    layers, width = [], 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of `x` that `model` classifies as `y` (the model is put in eval mode)."""
    was_training = model.training
    model.eval()
    acc = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train(was_training)
    return acc


def train_classifier(model: nn.Module, data: DigitsData, epochs: int = 30, lr: float = 3e-3,
                     batch_size: int = 64, seed: int = 0, log_every: int = 0,
                     on_epoch: Callable[[int, nn.Module], None] | None = None,
                     cosine: bool = False) -> list[float]:
    """Adam on cross-entropy over shuffled mini-batches; returns the mean loss of each epoch.

    `log_every` > 0 prints one line every that many epochs (loss and test accuracy, no timing);
    `on_epoch(epoch, model)` is called after each epoch (for curves); `cosine` decays the
    learning rate to 0 over the epochs (steadier final weights for fine-tuning). Works for
    fake-quantized (QAT) models as well: they are ordinary modules.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1)) if cosine else None
    n, losses = len(data.y_train), []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=g).split(batch_size):
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
        if log_every and (epoch % log_every == 0 or epoch == epochs):
            acc = accuracy(model, data.x_test, data.y_test)
            print(f"epoch {epoch:3d}/{epochs}  loss {losses[-1]:.4f}  test accuracy {acc:.4f}")
    model.eval()
    return losses


def train_digits_mlp(hidden: int = 32, depth: int = 2, epochs: int = 30, seed: int = 0,
                     data: DigitsData | None = None) -> tuple[nn.Sequential, DigitsData]:
    """Build and train the digits MLP (seconds on a CPU); returns (model in eval mode, data)."""
    data = data if data is not None else load_digits_data(seed=seed)
    model = digits_mlp(hidden, depth, seed)
    train_classifier(model, data, epochs=epochs, seed=seed)
    return model, data
