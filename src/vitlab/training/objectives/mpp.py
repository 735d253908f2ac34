"""Masked patch prediction, the paper's self-supervised objective (Section 4.6, Appendix B.1.2).

Of the patch embeddings (after the linear projection, before the [class] token and the position
embeddings), `corrupt_rate` (50%) are corrupted, each patch independently: 80% of those are replaced by a
learned [mask] embedding, 10% by the embedding of a random other patch of the batch, 10% kept as they are.
From each corrupted patch's output token a linear head predicts, with cross-entropy, the patch's 3-bit mean
colour (8 levels per channel: 512 classes for RGB, 8 for one channel). The paper's other targets are
options: `downsized` (the patch averaged to 4x4 cells, each cell's 3-bit colour: 16 predictions) and
`pixels` (L2 regression on the patch's pixels as the model sees them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...data.preprocessing import Preprocessing
from .base import MaskedLoss, Objective, evaluate_masked
from .patches import cell_colour_classes, colour_pixels, patchify, to_pixels, unpatchify
from .settings import MPPConfig


class Corruption:
    """Which patches one batch corrupts, and how: boolean (B, N) masks and, for `random`, the source patch."""

    def __init__(self, corrupted, mask, random, source):
        self.corrupted, self.mask, self.random, self.source = corrupted, mask, random, source


def draw_corruption(batch: int, num_patches: int, cfg: MPPConfig, device=None, generator=None) -> Corruption:
    """Each patch is corrupted with probability corrupt_rate; a corrupted one is masked with probability
    replace_with_mask, replaced by another patch with probability replace_with_random, else kept.
    `source` (B, N) is, for every patch, the flat index (over the batch's B * N patches) of a patch drawn
    uniformly among all the others: never the patch itself."""
    shape = (batch, num_patches)
    corrupted = torch.rand(shape, device=device, generator=generator) < cfg.corrupt_rate
    how = torch.rand(shape, device=device, generator=generator)
    mask = corrupted & (how < cfg.replace_with_mask)
    random = corrupted & (how >= cfg.replace_with_mask) & (how < cfg.replace_with_mask + cfg.replace_with_random)
    total = batch * num_patches
    if total < 2:  # no other patch to take
        random = torch.zeros_like(random)
    other = torch.randint(0, max(total - 1, 1), shape, device=device, generator=generator)
    itself = torch.arange(total, device=device).view(shape)
    source = other + (other >= itself).long()  # skip over the patch itself: uniform over the others
    return Corruption(corrupted, mask, random, source)


def corrupt(embeddings: torch.Tensor, c: Corruption, mask_embedding: torch.Tensor) -> torch.Tensor:
    """Apply `c` to patch embeddings (B, N, D)."""
    B, N, D = embeddings.shape
    others = embeddings.reshape(B * N, D)[c.source.clamp(max=B * N - 1).reshape(-1)].view(B, N, D)
    out = torch.where(c.mask.unsqueeze(-1), mask_embedding.to(embeddings.dtype), embeddings)
    return torch.where(c.random.unsqueeze(-1), others, out)


class MaskedPatchPrediction(Objective):
    name = "mpp"
    reads_labels = False

    def __init__(self, settings: MPPConfig, model_config, preprocessing: Preprocessing | dict | None):
        super().__init__(settings)
        self.patch, self.channels = model_config.stride, model_config.in_chans
        self.preprocessing = Preprocessing.coerce(preprocessing)  # the inputs' normalisation
        self.cells = settings.downsized_size if settings.target == "downsized" else 1
        if settings.target != "pixels" and self.patch % self.cells:
            raise ValueError(f"objective.mpp.downsized_size {self.cells} does not divide the patch size {self.patch}")
        self.num_colours = 2 ** (settings.color_bits * self.channels)
        if settings.target == "pixels":
            self.metric, self.higher_is_better = "eval_loss", False
            outputs = self.patch * self.patch * self.channels
        else:
            self.metric = "eval_masked_accuracy"
            outputs = self.cells * self.cells * self.num_colours
        self.mask_embedding = nn.Parameter(torch.empty(model_config.width).normal_(std=0.02))
        self.head = nn.Linear(model_config.width, outputs)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"mask_embedding"}

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, cells * cells) colour classes, or (B, N, P * P * C) input pixels for `pixels`."""
        if self.settings.target == "pixels":
            return patchify(images.float(), self.patch)
        return cell_colour_classes(to_pixels(images, self.preprocessing), self.patch, self.cells,
                                   self.settings.color_bits)

    def predict(self, model, images, generator=None) -> tuple[torch.Tensor, Corruption]:
        """The head's outputs for every patch (B, N, outputs) and the corruption drawn."""
        drawn = {}

        def transform(embeddings):
            B, N, _ = embeddings.shape
            drawn["c"] = draw_corruption(B, N, self.settings, embeddings.device, generator)
            return corrupt(embeddings, drawn["c"], self.mask_embedding)

        tokens = model.forward_features(images, patch_transform=transform)
        return self.head(tokens[:, model.num_prefix_tokens:]), drawn["c"]

    def losses(self, model, images, generator=None) -> MaskedLoss:
        outputs, c = self.predict(model, images, generator)
        return self.loss(outputs, c.corrupted, images)

    def loss(self, outputs: torch.Tensor, corrupted: torch.Tensor, images: torch.Tensor) -> MaskedLoss:
        """The loss of the head's `outputs` (B, N, ...) on the `corrupted` (B, N) patches of `images`."""
        chosen = outputs[corrupted].float()  # (M, outputs): only the corrupted patches are predicted
        target = self.targets(images)[corrupted]
        if self.settings.target == "pixels":
            count = target.shape[0]
            loss = F.mse_loss(chosen, target, reduction="none").mean(-1).sum() / max(count, 1)
            return MaskedLoss(loss, count)
        logits = chosen.reshape(-1, self.num_colours)
        target = target.reshape(-1)
        count = target.numel()
        loss = F.cross_entropy(logits, target, reduction="sum") / max(count, 1)
        return MaskedLoss(loss, count, (logits.argmax(-1) == target).sum())

    def forward(self, model, images, targets=None, *, generator=None, details=False):
        """The loss and the masked-patch accuracy; with details, the MaskedLoss (for evaluation)."""
        out = self.losses(model, images, generator)
        if details:
            return out
        logs = {} if out.correct is None else {"masked_accuracy": out.correct / max(out.count, 1)}
        return out.loss, logs

    def evaluate(self, model, loader, d, *, precision="fp32"):
        return evaluate_masked(self, model, loader, d, precision=precision)

    @torch.no_grad()
    def illustrate(self, model, images, generator=None) -> dict:
        """Pixel images (0..255) of what the objective sees and predicts, for `vitlab inspect`: the corrupted
        input ([mask] drawn grey, a replaced patch as the patch it was replaced by), the predictions for the
        corrupted patches (the rest as they were), and the targets; `marks` (B, N): 1 masked, 2 replaced,
        3 corrupted but kept, 0 untouched."""
        outputs, c = self.predict(model, images, generator)
        pixels = to_pixels(images, self.preprocessing)
        original = patchify(pixels, self.patch)
        B, N, _ = original.shape
        shown = original.clone()
        shown[c.mask] = 128.0
        shown[c.random] = original.reshape(B * N, -1)[c.source[c.random]]
        predicted = self.as_pixels(outputs.float(), images.shape[0])
        target = self.as_pixels(None, images.shape[0], images)
        predicted = torch.where(c.corrupted.unsqueeze(-1), predicted, original)
        marks = c.mask.long() + 2 * c.random.long() + 3 * (c.corrupted & ~c.mask & ~c.random).long()
        grid = (images.shape[-2] // self.patch, images.shape[-1] // self.patch)
        picture = lambda p: unpatchify(p, self.patch, grid, self.channels)  # noqa: E731
        return {"corrupted input": picture(shown), "prediction": picture(predicted),
                "target": picture(target), "marks": marks}

    def as_pixels(self, outputs, batch: int, images=None) -> torch.Tensor:
        """(B, N, P * P * C) patch pixels 0..255 of the head's `outputs` (its most likely colours), or of the
        targets of `images` when outputs is None."""
        if self.settings.target == "pixels":
            values = self.targets(images) if outputs is None else outputs
            grid = (values.shape[1], 1)  # a column of patches: to_pixels needs an image layout
            return patchify(to_pixels(unpatchify(values, self.patch, grid, self.channels), self.preprocessing),
                            self.patch)
        if outputs is None:
            classes = self.targets(images)
        else:
            classes = outputs.reshape(batch, -1, self.cells * self.cells, self.num_colours).argmax(-1)
        return colour_pixels(classes, self.settings.color_bits, self.channels, self.cells, self.patch)
