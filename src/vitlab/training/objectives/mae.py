"""The masked autoencoder (He et al., 2021): hide most patches, reconstruct them from the rest.

For each image `mask_rate` (75%) of the patches are hidden at random; the encoder (the ViT being trained)
runs on the visible patches only, position embeddings already added, with the same token selection as
PatchDropout (models.vit.random_patch_subset / keep_patches). A light decoder (its own width and depth)
puts a shared learned mask token in every hidden position, adds fixed 2-D sin-cos position embeddings, and
predicts each patch's pixels; the loss is the mean squared error on the hidden patches only, against pixels
normalised by each patch's own mean and standard deviation (`norm_pix_loss`).
"""

from __future__ import annotations

import torch
from torch import nn

from ...data.preprocessing import Preprocessing
from ...models.posemb import sincos_2d
from ...models.vit import EncoderBlock, random_patch_subset
from ...models.vit_config import ViTConfig
from .base import MaskedLoss, Objective, evaluate_masked
from .patches import patchify, to_pixels, unpatchify
from .settings import MAEConfig


def restore_order(visible: torch.Tensor, kept: torch.Tensor, num_patches: int, fill: torch.Tensor) -> torch.Tensor:
    """Tokens (B, K, D) of the patches `kept` (B, K) back in grid order (B, N, D), `fill` (D,) everywhere else."""
    B, K, D = visible.shape
    full = fill.to(visible.dtype).expand(B, num_patches, D)
    return full.scatter(1, kept.unsqueeze(-1).expand(-1, -1, D), visible)


def hidden_mask(kept: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, N) True where a patch was hidden from the encoder."""
    hidden = torch.ones(kept.shape[0], num_patches, dtype=torch.bool, device=kept.device)
    return hidden.scatter(1, kept, False)


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch's values (B, N, P*P*C) minus their mean, over their standard deviation."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


class MaskedAutoencoder(Objective):
    name = "mae"
    metric = "eval_loss"
    higher_is_better = False
    reads_labels = False

    def __init__(self, settings: MAEConfig, model_config, preprocessing: Preprocessing | dict | None = None):
        super().__init__(settings)
        self.preprocessing = Preprocessing.coerce(preprocessing)  # the inputs' normalisation
        self.patch, self.channels = model_config.stride, model_config.in_chans
        self.grid_hw = model_config.grid_size
        self.num_patches = self.grid_hw[0] * self.grid_hw[1]
        self.num_visible = max(1, int(self.num_patches * (1.0 - settings.mask_rate)))
        width = settings.decoder_width
        block = ViTConfig(width=width, depth=settings.decoder_depth, num_heads=settings.decoder_heads,
                          mlp_dim=settings.decoder_mlp_dim, layer_norm_eps=model_config.layer_norm_eps)
        self.decoder_embed = nn.Linear(model_config.width, width)
        self.mask_token = nn.Parameter(torch.empty(width).normal_(std=0.02))
        self.decoder_blocks = nn.ModuleList(EncoderBlock(block, 0.0) for _ in range(settings.decoder_depth))
        self.decoder_norm = nn.LayerNorm(width, eps=model_config.layer_norm_eps)
        self.decoder_pred = nn.Linear(width, self.patch * self.patch * self.channels)
        prefix = model_config.num_prefix_tokens
        self.register_buffer("decoder_pos", sincos_2d(self.grid_hw, width, prefix), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # as MAE: xavier-uniform weights, zero biases
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def reconstruct(self, model, images, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted pixels of every patch (B, N, P*P*C) and which patches were hidden (B, N)."""
        B, N = images.shape[0], self.num_patches
        kept = random_patch_subset(B, N, self.num_visible, images.device, generator)
        latent = self.decoder_embed(model.forward_features(images, keep=kept))  # (B, prefix + K, width)
        prefix = model.num_prefix_tokens
        x = restore_order(latent[:, prefix:], kept, N, self.mask_token)
        x = torch.cat([latent[:, :prefix], x], dim=1) + self.decoder_pos.to(x.dtype)
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:], hidden_mask(kept, N)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images.float(), self.patch)
        return normalise_patches(patches) if self.settings.norm_pix_loss else patches

    def losses(self, model, images, generator=None) -> MaskedLoss:
        return self.loss(*self.reconstruct(model, images, generator), images)

    def loss(self, predicted: torch.Tensor, hidden: torch.Tensor, images: torch.Tensor) -> MaskedLoss:
        """Mean squared error of the `predicted` patches (B, N, P*P*C) on the `hidden` (B, N) ones only."""
        error = (predicted.float() - self.targets(images)).pow(2).mean(-1)  # (B, N)
        count = int(hidden.sum())
        return MaskedLoss((error * hidden).sum() / max(count, 1), count)

    def forward(self, model, images, targets=None, *, generator=None, details=False):
        """The loss; with details, the MaskedLoss (for evaluation)."""
        out = self.losses(model, images, generator)
        return out if details else out.loss

    def evaluate(self, model, loader, d, *, precision="fp32"):
        return evaluate_masked(self, model, loader, d, precision=precision)

    @torch.no_grad()
    def illustrate(self, model, images, generator=None) -> dict:
        """Pixel images (0..255) for `vitlab inspect`: the encoder's input (hidden patches grey), the
        reconstruction (with norm_pix_loss, each predicted patch given back its true mean and standard
        deviation, as MAE's own figures do) and the reconstruction pasted into the visible patches;
        `marks` (B, N): 1 where hidden."""
        predicted, hidden = self.reconstruct(model, images, generator)
        patches = patchify(images.float(), self.patch)
        predicted = predicted.float()
        if self.settings.norm_pix_loss:
            std = (patches.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
            predicted = predicted * std + patches.mean(-1, keepdim=True)
        grid = self.grid_hw
        original = patchify(to_pixels(images, self.preprocessing), self.patch)
        image_of = lambda p: unpatchify(p, self.patch, grid, self.channels)  # noqa: E731
        reconstruction = patchify(to_pixels(image_of(predicted), self.preprocessing), self.patch)
        where = hidden.unsqueeze(-1)
        return {"encoder input": image_of(torch.where(where, 128.0, original)),
                "reconstruction": image_of(reconstruction),
                "reconstruction + visible": image_of(torch.where(where, reconstruction, original)),
                "marks": hidden.long()}
