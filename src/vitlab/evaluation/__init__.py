"""Evaluation: accuracy (top-k, per class, ImageNet ReaL), few-shot linear and linear-probe accuracy, and
prediction on image files. Commands: `vitlab eval`, `vitlab fewshot`, `vitlab predict`. (VTAB-1k, which
fine-tunes before it evaluates, is vitlab.vtab, above training.)"""

from .batches import EvalBatches
from .features import extract_features, representation
from .fewshot import fewshot_results, fit_ridge, ridge_accuracy
from .metrics import ClassificationCounts, evaluate, save_confusion_png, topk_correct
from .probe import linear_probe
from .real import align_to_dataset, load_real_labels, real_hits

__all__ = ["ClassificationCounts", "EvalBatches", "align_to_dataset", "evaluate", "extract_features",
           "fewshot_results", "fit_ridge", "linear_probe", "load_real_labels", "real_hits", "representation",
           "ridge_accuracy", "save_confusion_png", "topk_correct"]
