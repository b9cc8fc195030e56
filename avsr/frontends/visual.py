"""Visual front-end: a 3-D convolution stem over (time, height, width) and a ResNet-18 trunk per frame.

The lip-reading front-end of Stafylakis & Tzimiropoulos (2017), used by Ma et al.'s auto_avsr: a 5x7x7
Conv3d (stride 1x2x2) sees five neighbouring frames, then each frame goes alone through the residual
stages of torchvision's ResNet-18 and a global average pool, giving one 512-d feature per video frame.

Padding: frames beyond an utterance's length are zeroed before the stem, which is exactly the zero
padding the Conv3d applies to an utterance alone; the per-frame trunk then runs on real frames only, so
padding never enters a convolution or the batch-norm statistics.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from avsr.masks import make_valid_mask


class ResNetVideoFrontend(nn.Module):
    """(B, T, C, H, W) grayscale mouth crops -> (B, T, 512) per-frame features."""

    def __init__(self, in_channels: int = 1, layers: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        stem_channels = 64  # torchvision's ResNet stages expect 64 input channels
        self.stem_conv = nn.Conv3d(
            in_channels, stem_channels, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False
        )
        self.stem_norm = nn.BatchNorm2d(stem_channels)  # per frame, over real frames only
        self.stem_act = nn.ReLU(inplace=True)
        self.stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        resnet = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, list(layers))
        self.trunk = nn.Sequential(resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 512

    def forward(self, video: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        b, t = video.shape[:2]
        valid = make_valid_mask(lengths, t)  # (B, T)
        x = video * valid[:, :, None, None, None]  # padding becomes the stem's own zero padding
        x = self.stem_conv(x.transpose(1, 2))  # (B, 64, T, H/2, W/2)
        x = x.transpose(1, 2)[valid]  # (N_real, 64, H/2, W/2)
        x = self.stem_pool(self.stem_act(self.stem_norm(x)))
        x = self.pool(self.trunk(x)).flatten(1)  # (N_real, 512)
        out = x.new_zeros(b, t, self.out_dim)
        out[valid] = x
        return out, lengths  # (B, T, 512)
