"""OFA-KD's stage projectors: a branch that maps one intermediate feature of a student to class logits
(Hao et al., NeurIPS 2023; layout of Hao840/OFAKD `distillers/ofa.py` and `distillers/utils.py`,
re-derived; docs/methods.md §2.4).

- CNN stage `[B, C_k, H_k, W_k]` of stage k of S: `S - k` separable-conv blocks that halve the
  resolution and double the channels (the last one outputs `width` channels), or one 1x1 conv for
  the last stage; then global average pooling and `Linear(width, num_classes)`.
- Token stage `[B, P + N, D]` (P prefix tokens such as a class token, N = G x G patches): patch
  merging down to a grid of at most 7x7 (the first merge projects to `width`; every merge but a
  last one after the first ends in a GELU, as in the code), `max(S - k, 1)`
  transformer blocks with 4 heads, then the first prefix token (or the mean of the tokens when there
  is none) and `Linear(width, num_classes)`.

`width` is `max(d_s, d_t)` for CNN students and the student's embedding width `d_s` for token
students (the code's choices). Weights start as timm's `init_weights`: Kaiming-normal convolutions,
unit/zero batch norms, truncated-normal (std 0.02) linear layers with zero biases.
"""

import math

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

FINAL_PATCH_GRID = 7  # the code merges patches until at most 7 x 7 remain
PROJECTOR_HEADS = 4


class SepConv(nn.Sequential):
    """Two depthwise-separable 3x3 convolutions, the first with stride 2: `[B, C_in, H, W] -> [B, C_out, H/2, W/2]`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class PatchMerging(nn.Module):
    """Swin's patch merging: each 2x2 group of a `G x G` patch grid becomes one token,
    `[B, G*G, D] -> [B, (G/2)*(G/2), out_dim]` by LayerNorm(4D) and a bias-free Linear(4D, out_dim)."""

    def __init__(self, grid: int, dim: int, out_dim: int, activation: bool) -> None:
        super().__init__()
        if grid % 2:
            raise ValueError(f"patch merging needs an even patch grid, got {grid} x {grid}")
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.activation = nn.GELU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, dim = x.shape
        x = x.view(batch, self.grid, self.grid, dim)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.activation(self.reduction(self.norm(x.view(batch, -1, 4 * dim))))


class TokenProjector(nn.Module):
    """The token branch of the module docstring: `[B, P + G*G, D] -> [B, num_classes]`."""

    def __init__(self, tokens: int, dim: int, prefix_tokens: int, width: int, blocks: int, num_classes: int) -> None:
        super().__init__()
        grid = math.isqrt(tokens - prefix_tokens)
        if grid * grid != tokens - prefix_tokens:
            raise ValueError(f"a token stage needs a square patch grid: {tokens} tokens with {prefix_tokens} prefix tokens")
        merges = max(int(math.log2(grid / FINAL_PATCH_GRID)), 0)
        if dim != width and (merges == 0 or prefix_tokens):
            raise ValueError(f"a token stage of width {dim} cannot be projected to the student's width {width} (no patch merging)")
        if width % PROJECTOR_HEADS:
            raise ValueError(f"the projector's transformer blocks have {PROJECTOR_HEADS} heads: width {width} must divide by it")
        self.prefix_tokens = prefix_tokens
        self.merge = nn.Sequential(*[
            PatchMerging(grid // 2**i, dim if i == 0 else width, width, activation=i == 0 or i != merges - 1) for i in range(merges)
        ])
        self.blocks = nn.Sequential(*[EncoderBlock(PROJECTOR_HEADS, width, 4 * width, 0.0, 0.0) for _ in range(blocks)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = x[:, : self.prefix_tokens], x[:, self.prefix_tokens :]
        x = self.blocks(torch.cat([prefix, self.merge(patches)], dim=1))
        pooled = x[:, 0] if self.prefix_tokens else x.mean(dim=1)
        return self.head(pooled)


def cnn_projector(channels: int, stage: int, stages: int, width: int, num_classes: int) -> nn.Sequential:
    """The CNN branch of the module docstring for stage `stage` (1-based) of `stages`: `[B, channels, H, W] -> [B, C]`."""
    if stage == stages:
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 1)]
    else:
        count = stages - stage
        blocks = [SepConv(channels * 2**i, width if i == count - 1 else channels * 2 ** (i + 1)) for i in range(count)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def stage_projector(
    feature: torch.Tensor, stage: int, stages: int, student_dim: int, teacher_dim: int, prefix_tokens: int, num_classes: int
) -> nn.Module:
    """The projector for one example stage `feature` (`[B, C, H, W]` or `[B, tokens, D]`), initialised as the code does."""
    if feature.dim() == 4:
        projector: nn.Module = cnn_projector(feature.shape[1], stage, stages, max(student_dim, teacher_dim), num_classes)
    elif feature.dim() == 3:
        projector = TokenProjector(feature.shape[1], feature.shape[2], prefix_tokens, student_dim, max(stages - stage, 1), num_classes)
    else:
        raise ValueError(f"an OFA stage feature is [B, C, H, W] or [B, tokens, D], got shape {tuple(feature.shape)}")
    return projector.apply(init_weights)


def init_weights(module: nn.Module) -> None:
    """timm's `init_weights` as OFAKD applies it to every projector layer."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
