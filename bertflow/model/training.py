"""Training math of `train-pooler`: the split, the head's classifier loop, logistic-regression probes.

Pure torch: no Prefect, no I/O. Token states arrive as one (n_i, H) float32 tensor per example,
computed once by the frozen encoder. Everything random draws from the given seed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bertflow.model.heads import LstmHead
from bertflow.model.pooling import pool_mean

# Rows per batch when a model only reads (features, validation): bounded memory, any size works.
EVAL_BATCH = 256


@dataclass(frozen=True)
class Split:
    """Row indices of each part: train fits, validation stops early and picks L2, test is held out."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def stratified_split(labels: np.ndarray, seed: int, test: float = 0.2, validation: float = 0.1) -> Split:
    """Per-class random split, so each part keeps the class balance; needs 3+ examples a class."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = max(1, round(len(idx) * test)), max(1, round(len(idx) * validation))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, tst = (np.sort(np.concatenate(p)) for p in parts)
    return Split(train, val, tst)


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (n_i, H) tensors into states (B, T, H) and mask (B, T)."""
    width = max(len(s) for s in states)
    h = states[0].new_zeros(len(states), width, states[0].shape[1])  # (B, T, H)
    mask = torch.zeros(len(states), width, dtype=torch.long)  # (B, T)
    for row, s in enumerate(states):
        h[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return h, mask


def mean_features(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Plain mean pooling of each example's states: (N, H)."""
    return torch.stack([s.mean(0) for s in states])


@torch.no_grad()
def head_features(head: LstmHead, states: Sequence[torch.Tensor]) -> torch.Tensor:
    """The head's output for each example: (N, S)."""
    head.eval()
    order = np.argsort([len(s) for s in states], kind="stable")  # similar lengths pad less
    out = torch.empty(len(states), head.lstm.hidden_size * (2 if head.lstm.bidirectional else 1))
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start : start + EVAL_BATCH]
        h, mask = pad_states([states[i] for i in rows])
        out[torch.from_numpy(rows)] = head(h, mask)
    return out


class HeadClassifier(nn.Module):
    """What trains the head: a linear classifier over concat(mean pooling, head output)."""

    def __init__(self, head: LstmHead, features: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.head = head
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(features, n_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pool_mean(h, mask), self.head(h, mask)], dim=-1)  # (B, H + S)
        return self.linear(self.dropout(x))  # (B, C)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    hidden: int = 256
    bidirectional: bool = False
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    patience: int = 2  # epochs without a better validation accuracy before stopping
    seed: int = 0


@dataclass
class TrainResult:
    head: LstmHead
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    validation_accuracy: float
    history: list[dict] = field(default_factory=list)


def _batches(rows: np.ndarray, lengths: np.ndarray, size: int, gen: torch.Generator) -> Iterator[np.ndarray]:
    """Shuffled batches of rows of similar length (sorted within pools of 50 batches)."""
    shuffled = rows[torch.randperm(len(rows), generator=gen).numpy()]
    batches: list[np.ndarray] = []
    for start in range(0, len(shuffled), size * 50):
        pool = shuffled[start : start + size * 50]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches.extend(pool[i : i + size] for i in range(0, len(pool), size))
    for i in torch.randperm(len(batches), generator=gen).tolist():
        yield batches[i]


@torch.no_grad()
def _accuracy(model: HeadClassifier, states: Sequence[torch.Tensor], labels: torch.Tensor, rows: np.ndarray) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(rows), EVAL_BATCH):
        batch = rows[start : start + EVAL_BATCH]
        h, mask = pad_states([states[i] for i in batch])
        correct += int((model(h, mask).argmax(-1) == labels[torch.from_numpy(batch)]).sum())
    return correct / max(len(rows), 1)


def train_head(
    states: Sequence[torch.Tensor],
    labels: np.ndarray,
    split: Split,
    n_classes: int,
    settings: TrainSettings,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train head + classifier on `split.train`; keep the epoch with the best validation accuracy."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    width = states[0].shape[1]
    head = LstmHead(width, settings.hidden, settings.bidirectional)
    model = HeadClassifier(
        head, width + settings.hidden * (2 if settings.bidirectional else 1), n_classes, settings.dropout
    )
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    y = torch.from_numpy(labels).long()
    lengths = np.array([len(s) for s in states])
    best_acc, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for batch in _batches(split.train, lengths, settings.batch_size, gen):
            h, mask = pad_states([states[i] for i in batch])
            loss = F.cross_entropy(model(h, mask), y[torch.from_numpy(batch)])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
        acc = _accuracy(model, states, y, split.validation)
        history.append({"epoch": epoch, "train_loss": round(total / seen, 5), "validation_accuracy": round(acc, 5)})
        if on_epoch is not None:
            on_epoch(history[-1])
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    if best_state is None:  # no epoch ran
        raise ValueError(f"train_head needs at least one epoch, got epochs={settings.epochs}")
    model.load_state_dict(best_state)
    return TrainResult(model.head.eval(), best_epoch, len(history), best_acc, history)


@dataclass(frozen=True)
class Probe:
    """A fitted multinomial logistic regression on standardized features."""

    center: torch.Tensor  # (F,)
    scale: torch.Tensor  # (F,)
    weight: torch.Tensor  # (C, F)
    bias: torch.Tensor  # (C,)
    l2: float

    def predict(self, x: torch.Tensor) -> np.ndarray:
        z = (x.double() - self.center) / self.scale
        return (z @ self.weight.T + self.bias).argmax(-1).numpy()


def fit_logistic(x: torch.Tensor, y: np.ndarray, n_classes: int, l2: float) -> Probe:
    """Full-batch L-BFGS on mean cross-entropy + l2/2 * |W|^2 (features standardized first)."""
    x = x.double()
    center, scale = x.mean(0), x.std(0).clamp(min=1e-8)
    z = (x - center) / scale  # (N, F)
    target = torch.from_numpy(y).long()
    weight = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        max_iter=500,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, target) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(center, scale, weight.detach(), bias.detach(), l2)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else 0.0


def fit_probe(
    x: torch.Tensor, y: np.ndarray, split: Split, n_classes: int, grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1)
) -> tuple[Probe, float]:
    """Logistic regression fit on train, L2 strength picked on validation; returns (probe, test accuracy)."""
    best, best_acc = None, -1.0
    for l2 in sorted(grid, reverse=True):  # on ties keep the stronger regularization
        probe = fit_logistic(x[split.train], y[split.train], n_classes, l2)
        acc = accuracy(probe.predict(x[split.validation]), y[split.validation])
        if acc > best_acc:
            best, best_acc = probe, acc
    if best is None:
        raise ValueError("fit_probe needs at least one L2 strength in grid")
    return best, accuracy(best.predict(x[split.test]), y[split.test])
