"""Few-shot linear evaluation (the paper's fast evaluation; big_vision's `fewshot_lsr` evaluator, re-derived).

For k images per class, fit a ridge regression from the frozen representation to {-1, 1}^K targets and
classify test images by the largest output. The features are standardised on the few-shot training set and a
constant bias feature is appended. The closed form w = (Z^T Z + l2 I)^-1 Z^T Y is computed from the eigen-
decomposition of whichever Gram matrix is smaller: Z^T Z (D x D) when there are at least as many samples as
features, else Z Z^T (N x N) through the identity (Z^T Z + l2 I)^-1 Z^T = Z^T (Z Z^T + l2 I)^-1.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2 = 2.0 ** 10
# A large constant for the bias feature makes its weight nearly unregularised (the same choice as big_vision).
BIAS_CONSTANT = 100.0


def class_permutations(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """For each class, its sample indices in an order fixed by `seed`; the first k are the k-shot set."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def fewshot_indices(permutations: list[np.ndarray], shots: int) -> np.ndarray:
    return np.concatenate([p[:shots] for p in permutations])


def design_matrix(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = (x.double() - mean) / std
    return torch.cat([z, torch.full((len(z), 1), BIAS_CONSTANT, dtype=z.dtype, device=z.device)], dim=1)


def fit_ridge(x: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2):
    """(mean, std, weights (D + 1, K)) of the regularised least-squares classifier, in float64."""
    x = x.double()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False) + 1e-5
    z = design_matrix(x, mean, std)
    targets = 2.0 * torch.nn.functional.one_hot(labels.long(), num_classes).double() - 1.0
    n, d = z.shape
    if n >= d:  # decompose Z^T Z (d x d)
        eigs, q = torch.linalg.eigh(z.T @ z)
        weights = (q / (eigs + l2)) @ (q.T @ (z.T @ targets))
    else:  # decompose Z Z^T (n x n)
        eigs, q = torch.linalg.eigh(z @ z.T)
        weights = (z.T @ (q / (eigs + l2))) @ (q.T @ targets)
    return mean, std, weights


def ridge_accuracy(train_x, train_y, test_x, test_y, num_classes: int, l2: float = DEFAULT_L2) -> float:
    mean, std, weights = fit_ridge(train_x, train_y, num_classes, l2)
    predicted = (design_matrix(test_x, mean, std) @ weights).argmax(dim=1)
    return float((predicted.cpu() == test_y.cpu()).double().mean())


def fewshot_results(train_labels, train_x, test_x, test_y, num_classes: int, *, train_indices=None,
                    shots=DEFAULT_SHOTS, seeds=(0, 1, 2), l2: float = DEFAULT_L2) -> dict:
    """{"shots": {"k": {"mean", "std", "per_seed", "short_classes"}}, ...}, mean and std over seeds.

    `train_labels` are the labels of the whole training set (the seeds pick from it); `train_x` holds the
    features of the samples `train_indices` (sorted; default: all of them), which must include every sample
    the seeds pick (see `shots_needed`).
    """
    labels = np.asarray(train_labels)
    rows = None if train_indices is None else torch.as_tensor(np.asarray(train_indices), dtype=torch.long)
    counts = np.bincount(labels, minlength=num_classes)
    per_shot = {k: [] for k in shots}
    for seed in seeds:
        perms = class_permutations(labels, num_classes, seed)
        for k in shots:
            picked = torch.as_tensor(fewshot_indices(perms, k), dtype=torch.long)
            at = picked if rows is None else torch.searchsorted(rows, picked)
            if rows is not None and not torch.equal(rows[at.clamp(max=len(rows) - 1)], picked):
                raise ValueError("train_x lacks features of some picked samples; extract those of shots_needed()")
            per_shot[k].append(ridge_accuracy(train_x[at], torch.as_tensor(labels[picked.numpy()]), test_x, test_y,
                                              num_classes, l2))
    result = {"num_classes": num_classes, "l2_reg": l2, "seeds": list(seeds), "num_test": len(test_y), "shots": {}}
    for k, accs in per_shot.items():
        a = np.array(accs)
        result["shots"][str(k)] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                                   "per_seed": accs, "short_classes": int((counts < k).sum())}
    return result


def shots_needed(train_labels: np.ndarray, num_classes: int, shots, seeds) -> np.ndarray:
    """Every train index some seed's k-shot set uses: only these need features."""
    kmax = max(shots)
    chosen = [fewshot_indices(class_permutations(train_labels, num_classes, s), kmax) for s in seeds]
    return np.unique(np.concatenate(chosen))


def format_fewshot(result: dict) -> str:
    lines = [f"few-shot linear accuracy ({result['num_classes']} classes, l2 {result['l2_reg']:g}, "
             f"{len(result['seeds'])} seeds, {result['num_test']} test images)",
             f"{'shots':>5}  {'mean':>7}  {'std':>5}  per seed"]
    for k, r in result["shots"].items():
        seeds = " ".join(f"{100 * a:.2f}" for a in r["per_seed"])
        note = f"  ({r['short_classes']} classes have fewer than {k} images)" if r["short_classes"] else ""
        lines.append(f"{k:>5}  {100 * r['mean']:6.2f}%  {100 * r['std']:5.2f}  {seeds}{note}")
    probe = result.get("linear_probe")
    if probe:
        lines.append(f"linear probe (logistic regression, {probe['num_train']} train images): "
                     f"{100 * probe['accuracy']:.2f}%")
    return "\n".join(lines)



def dataset_labels(dataset) -> np.ndarray:
    """Every label of a map-style data set, in index order."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)


def fewshot_evaluation(model, train, test, *, shots=DEFAULT_SHOTS, seeds=(0, 1, 2), l2: float = DEFAULT_L2,
                       probe_l2: float | None = None, image_size: int | None = None, batch_size: int = 256,
                       num_workers: int = 0, device="cpu", precision: str = "fp32", progress: bool = True,
                       split_names=("train", "test")) -> dict | None:
    """k-shot linear accuracy of `model`'s frozen representation: k images per class of `train` (for each seed)
    against every image of `test`, both prepared as the checkpoint's preprocessing record says (at
    `image_size`, if given). `probe_l2`: also a logistic-regression probe on the whole train split. Under
    torchrun each rank extracts its share of the features; rank 0 fits and returns the result, the others None."""
    from ..data.preprocessing import of_model
    from ..runtime import rank_and_world
    from .batches import EvalBatches
    from .features import extract_features
    from .probe import linear_probe

    rank, world_size = rank_and_world()
    labels, seeds = dataset_labels(train), list(seeds)

    def features(dataset, indices, desc):
        batches = EvalBatches(dataset, preprocessing=of_model(model), image_size=image_size, batch_size=batch_size,
                              rank=rank, world_size=world_size, num_workers=num_workers, indices=indices)
        return extract_features(model, batches, device=device, precision=precision, progress=progress, desc=desc)

    if probe_l2 is not None:  # the probe needs every train image, which covers the few-shot sets too
        train_x, train_y, train_idx = features(train, None, f"features {split_names[0]}")
    else:
        train_x, train_y, train_idx = features(train, shots_needed(labels, train.num_classes, shots, seeds),
                                               f"features {split_names[0]} (few-shot images)")
    test_x, test_y, _ = features(test, None, f"features {split_names[1]}")
    if rank != 0:
        return None
    result = fewshot_results(labels, train_x, test_x, test_y, train.num_classes, train_indices=train_idx.numpy(),
                             shots=shots, seeds=seeds, l2=l2)
    if probe_l2 is not None:
        result["linear_probe"] = linear_probe(train_x, train_y, test_x, test_y, train.num_classes, l2=probe_l2,
                                              device=device)
    return {**result, "feature_dim": int(train_x.shape[1])}
