"""Linear probe: multinomial logistic regression on frozen, standardised features, full-batch L-BFGS."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_PROBE_L2 = 1e-4


def fit_logistic(x: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float = DEFAULT_PROBE_L2,
                 max_iter: int = 500, device="cpu"):
    """(mean, std, weight (K, D), bias (K,)) minimising mean cross-entropy + l2/2 * |W|^2."""
    x = x.to(device, torch.float32)
    labels = labels.to(device)
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False) + 1e-5
    z = (x - mean) / std
    weight = torch.zeros(num_classes, z.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-6,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return mean, std, weight.detach(), bias.detach()


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, *, l2: float = DEFAULT_PROBE_L2,
                 device="cpu") -> dict:
    mean, std, weight, bias = fit_logistic(train_x, train_y, num_classes, l2=l2, device=device)
    z = (test_x.to(device, torch.float32) - mean) / std
    predicted = (z @ weight.T + bias).argmax(dim=1).cpu()
    return {"accuracy": float((predicted == test_y.cpu()).float().mean()), "num_train": len(train_y),
            "num_test": len(test_y), "l2": l2}
