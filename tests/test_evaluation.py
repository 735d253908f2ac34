"""Accuracy, top-k, ReaL and the few-shot solver, checked against answers worked out by hand or by numpy."""

import json
import math

import numpy as np
import pytest
import torch

from eval_fixtures import one_thread  # noqa: F401  (autouse)
from vitlab.evaluation import (ClassificationCounts, EvalBatches, align_to_dataset, evaluate, fewshot_results,
                               fit_ridge, linear_probe, load_real_labels, real_hits, save_confusion_png, topk_correct)
from vitlab.evaluation.fewshot import BIAS_CONSTANT, class_permutations, shots_needed


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits for image i are row i of a table (the image's first pixel holds i)."""

    def __init__(self, logits):
        super().__init__()
        self.table = torch.as_tensor(logits, dtype=torch.float32)
        self.num_classes = self.table.shape[1]

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].round().long()]


def batches_of(labels, batch_size):
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    for s in range(0, n, batch_size):
        yield images[s:s + batch_size], torch.tensor(labels[s:s + batch_size]), torch.arange(s, min(n, s + batch_size))


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3],    # order 3,1,5,2,0,4
                           [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])   # order 0,1,2,3,4,5
    labels = torch.tensor([2, 5])
    # sample 0: label 2 is 4th best -> top-1 no, top-3 no, top-4 yes; sample 1: label 5 is last (6th)
    assert topk_correct(logits, labels, (1, 3, 4, 5, 6)).tolist() == [0, 0, 1, 1, 2]
    assert topk_correct(logits, torch.tensor([3, 0]), (1,)).tolist() == [2]
    # k larger than the class count is clamped: every label is within the top 6 of 6 classes
    assert topk_correct(logits, labels, (10,)).tolist() == [2]


def test_accuracy_confusion_and_per_class_on_known_predictions():
    # predictions (argmax): 0, 1, 1, 2, 0, 2, 2 ; labels: 0, 1, 2, 2, 1, 2, 0
    predictions = [0, 1, 1, 2, 0, 2, 2]
    labels = [0, 1, 2, 2, 1, 2, 0]
    logits = torch.full((7, 3), -1.0)
    logits[torch.arange(7), torch.tensor(predictions)] = 1.0
    logits[0, 2] = 0.5  # second choice of sample 0 is class 2; irrelevant as it is right already
    logits[6, 0] = 0.5  # sample 6 (label 0) has label as its second choice -> top-2 hit
    result = evaluate(FixedLogits(logits), batches_of(labels, 3), ks=(1, 2), progress=False)
    assert result["num_samples"] == 7
    assert result["top1"] == pytest.approx(4 / 7)
    assert result["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 1, 2]]
    assert result["per_class_accuracy"] == pytest.approx([1 / 2, 1 / 2, 2 / 3])
    assert result["per_class_count"] == [2, 2, 3]
    assert result["top2"] >= result["top1"]
    # with a batch size that splits differently the counts are the same
    again = evaluate(FixedLogits(logits), batches_of(labels, 4), ks=(1, 2), progress=False)
    assert again == result


class TwoHeads(FixedLogits):
    """A distilled 'model': its class head's logits are the table, its distillation head's the table reversed."""

    config = type("Config", (), {"distill_token": True})()

    def forward_heads(self, x):
        logits = super().forward(x)
        return logits, logits.flip(-1)


def test_training_evaluation_and_distillation_count_top1_with_one_loop():
    """The trainer's accuracy, DeiT's per-head accuracies and `evaluate` come from the same loop: the same images
    and labels (soft targets as their largest class), the same counts; ties go to the argmax's class."""
    from types import SimpleNamespace

    from vitlab.evaluation.metrics import top1_accuracy
    from vitlab.training.objectives.distillation import evaluate_heads

    logits = [[0.0, 0.0, 0.0], [0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 0.0]]
    labels = [0, 1, 1, 2, 2]
    model = FixedLogits(logits)
    soft = [(x, torch.nn.functional.one_hot(y, 3).float() * 0.9 + 0.03) for x, y, _ in batches_of(labels, 2)]
    assert top1_accuracy(model, soft, torch.device("cpu")) == pytest.approx(3 / 5)  # rows 0 and 4 tie: class 0
    assert evaluate(model, batches_of(labels, 2), ks=(1,), progress=False)["num_samples"] == 5
    heads = evaluate_heads(TwoHeads(logits), soft, SimpleNamespace(device=torch.device("cpu")))
    # mean of the heads: ties for rows 0 and 4, row 1 [0.05, 0.9, 0.05], row 2 [0.45, 0.1, 0.45], row 3 [0.35, 0.3, 0.35]
    assert heads == pytest.approx({"eval_accuracy": 2 / 5, "eval_accuracy_class_head": 3 / 5,
                                   "eval_accuracy_dist_head": 2 / 5})


def test_class_without_samples_is_nan_and_bad_label_is_refused():
    counts = ClassificationCounts(3)
    counts.update(torch.tensor([[1.0, 0, 0]]), torch.tensor([0]))
    assert math.isnan(counts.summary()["per_class_accuracy"][1])
    with pytest.raises(ValueError, match="label 3 is outside"):
        counts.update(torch.tensor([[1.0, 0, 0]]), torch.tensor([3]))


def test_real_multi_label_and_unlabelled_images(tmp_path):
    real = [[0], [1, 2], [], [3], [0, 3], []]
    path = tmp_path / "real.json"
    path.write_text(json.dumps(real))
    assert load_real_labels(path) == real
    predictions = [0, 2, 1, 1, 3, 0]
    # image 0 right; 1 right (2 is one of two valid labels); 2 left out; 3 wrong; 4 right; 5 left out
    assert real_hits(predictions, list(range(6)), real) == (3, 4)
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), 4).float()
    labels = [0, 1, 1, 3, 0, 2]  # original labels: only images 0 and 2 are predicted right
    result = evaluate(FixedLogits(logits), batches_of(labels, 4), real_labels=real, progress=False)
    assert result["real_top1"] == pytest.approx(3 / 4) and result["real_num_samples"] == 4
    assert result["top1"] == pytest.approx(2 / 6)


def test_real_labels_file_errors_and_alignment_by_file_name(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1], "x"]))
    with pytest.raises(ValueError, match="entry 1"):
        load_real_labels(bad)

    class Named:
        names = ["n01/ILSVRC2012_val_00000003.JPEG", "n02/ILSVRC2012_val_00000001.JPEG"]

        def __len__(self):
            return 2

        def sample_name(self, i):
            return self.names[i]

    assert align_to_dataset([[5], [], [7]], Named()) == [[7], [5]]
    with pytest.raises(ValueError, match="has 3 entries but the data set has 2"):
        align_to_dataset([[5], [], [7]], [0, 1])


def numpy_ridge(x, labels, num_classes, l2):
    mean, std = x.mean(0), x.std(0) + 1e-5
    z = np.concatenate([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)], 1)
    y = 2 * np.eye(num_classes)[labels] - 1
    return np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ y)


@pytest.mark.parametrize("n,d", [(40, 6), (8, 30)], ids=["more-samples-than-features", "more-features-than-samples"])
def test_ridge_solver_equals_numpy_in_both_gram_branches(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
    labels = np.arange(n) % 4
    for l2 in (2.0 ** 10, 0.5):
        _, _, w = fit_ridge(torch.tensor(x), torch.tensor(labels), 4, l2)
        np.testing.assert_allclose(w.numpy(), numpy_ridge(x, labels, 4, l2), rtol=1e-7, atol=1e-9)


def test_fewshot_on_separable_features_and_sparse_train_features():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 4
    train_y = np.repeat(np.arange(3), 30)
    train_x = torch.tensor(centres[train_y] + rng.normal(size=(90, 16)), dtype=torch.float32)
    test_y = torch.tensor(np.repeat(np.arange(3), 10))
    test_x = torch.tensor(centres[test_y.numpy()] + rng.normal(size=(30, 16)), dtype=torch.float32)
    full = fewshot_results(train_y, train_x, test_x, test_y, 3, shots=(1, 5), seeds=(0, 1, 2), l2=1.0)
    assert full["shots"]["5"]["mean"] > 0.9 and len(full["shots"]["1"]["per_seed"]) == 3
    # only the features the seeds need, given sparsely, give the same numbers
    needed = shots_needed(train_y, 3, (1, 5), (0, 1, 2))
    assert len(needed) <= 3 * 5 * 3
    sparse = fewshot_results(train_y, train_x[needed], test_x, test_y, 3, train_indices=needed, shots=(1, 5),
                             seeds=(0, 1, 2), l2=1.0)
    assert sparse == full
    missing = needed[1:]
    with pytest.raises(ValueError, match="lacks features"):
        fewshot_results(train_y, train_x[missing], test_x, test_y, 3, train_indices=missing, shots=(1, 5), l2=1.0)
    # the k-shot sets are nested across k and differ across seeds
    p0, p1 = class_permutations(train_y, 3, 0), class_permutations(train_y, 3, 1)
    assert not all(np.array_equal(a[:5], b[:5]) for a, b in zip(p0, p1))


def test_linear_probe_learns_separable_classes():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 8)) * 3
    y = torch.tensor(np.arange(200) % 4)
    x = torch.tensor(centres[y.numpy()] + rng.normal(size=(200, 8)), dtype=torch.float32)
    result = linear_probe(x[:150], y[:150], x[150:], y[150:], 4)
    assert result["accuracy"] > 0.95 and result["num_train"] == 150
    shuffled = linear_probe(x[:150], y[torch.randperm(150)], x[150:], y[150:], 4)
    assert shuffled["accuracy"] < 0.6


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.images[i] is None:
            raise OSError(f"cannot decode image {i}")
        return self.images[i], self.labels[i]


def test_eval_batches_shard_resize_normalise_and_skip_bad_images():
    images = [torch.full((3, 8 + i, 10), 255, dtype=torch.uint8) for i in range(7)]
    images[4] = None
    data = ListDataset(images, list(range(7)))
    seen = []
    for rank in range(2):
        with pytest.warns(UserWarning, match="skipping sample 4") if rank == 0 else _nothing():
            batches = EvalBatches(data, image_size=6, batch_size=2, rank=rank, world_size=2)
            for x, y, idx in batches:
                assert x.shape[1:] == (3, 6, 6) and torch.allclose(x, torch.ones_like(x))
                assert torch.equal(y, idx)
                seen += idx.tolist()
        assert batches.skipped == (1 if rank == 0 else 0)
    assert sorted(seen) == [0, 1, 2, 3, 5, 6]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_confusion_png_is_written(tmp_path):
    path = tmp_path / "cm.png"
    save_confusion_png([[3, 1], [0, 4]], path, ["cat", "dog"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
