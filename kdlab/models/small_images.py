"""A convolutional classifier for a user's own small images, sized by the data: any channel count, any image size."""

from torch import nn

from kdlab.models.small_cnn import SmallCNN, conv_block


class SmallImageNet(SmallCNN):
    """One 3x3 conv block per entry of `widths` (each after the first halves the resolution), global average
    pooling (so any `H, W` works) and a linear head.

    The first block takes `in_channels`, the head gives `num_classes` logits: the `image_*` dataset presets
    pass both as they inferred them from the data. Shapes: input `[B, in_channels, H, W]` -> logits
    `[B, num_classes]`; `forward(x, return_features=True)` returns `(logits, {"penultimate": [B, widths[-1]],
    "stages": [[B, widths[i], H_i, W_i], ...]})`. `SmallCNN` with any number of blocks (its `forward`).
    """

    def __init__(self, num_classes: int, in_channels: int, widths: list[int], dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # SmallCNN's layers are built here, its forward is used as it is
        if not widths:
            raise ValueError("widths must name at least one block's channels")
        self.num_classes = num_classes
        self.feature_dim = widths[-1]
        channels = [in_channels, *widths]
        self.stages = nn.ModuleList(conv_block(c_in, c_out, stride=1 if i == 0 else 2)
                                    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)
