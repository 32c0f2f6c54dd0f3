"""CycleGAN networks: Johnson-style ResNet generator or MONAI UNet, and MONAI's PatchGAN discriminator.

Defaults reproduce pytorch-CycleGAN-and-pix2pix (``resnet_9blocks``, ngf 64, ``n_layers=3`` 70x70
PatchGAN with ndf 64, instance norm, N(0, 0.02) initialisation); ``spatial_dims`` selects 2D or 3D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets import UNet
from monai.networks.nets.patchgan_discriminator import PatchDiscriminator
from torch import nn


class ReflectionPad(nn.Module):
    """Reflection padding that keeps its input's dtype: CPU autocast would run it in fp32 and make every
    bf16 activation take a round trip through fp32 around each convolution."""

    def __init__(self, pad: int, spatial_dims: int):
        super().__init__()
        self.pad = (int(pad),) * (2 * spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.pad(x, self.pad, mode="reflect")


class InstanceNorm(nn.Module):
    """Instance normalisation without affine parameters or running statistics (the CycleGAN setting).

    Computed as batch normalisation for a batch of one and as group normalisation with one group per
    channel otherwise: the same arithmetic, but both keep a channels-last input channels-last, where
    ``F.instance_norm`` copies it to contiguous and back (measured 20-30% slower in bf16 on CPU). Holds
    no state, so checkpoints are those of ``nn.InstanceNorm2d/3d(affine=False)``.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return F.batch_norm(x, None, None, training=True, eps=self.eps)
        return F.group_norm(x, x.shape[1], eps=self.eps)


def channels_last(spatial_dims: int) -> torch.memory_format:
    """Channels-last format of ``spatial_dims``: faster oneDNN/cuDNN convolutions in bf16/fp16."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


class _ResBlock(nn.Module):
    def __init__(self, spatial_dims: int, channels: int, dropout: float):
        super().__init__()
        conv, d = Conv[Conv.CONV, spatial_dims], spatial_dims
        layers = [ReflectionPad(1, d), conv(channels, channels, 3, bias=True), InstanceNorm(), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [ReflectionPad(1, d), conv(channels, channels, 3, bias=True), InstanceNorm()]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """Johnson et al. ResNet generator: c7s1-ngf, two stride-2 downsamplings, ``n_blocks`` residual
    blocks, two transposed-conv upsamplings, c7s1-out, tanh. Reflection padding, instance norm.

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: image channels.
        ngf: filters of the first layer.
        n_blocks: residual blocks (9 for 256^2 in the CycleGAN paper).
        n_downsampling: stride-2 stages (inputs must be divisible by ``2**n_downsampling``).
        dropout: dropout inside residual blocks.

    >>> g = ResnetGenerator(2, 1, 1)
    >>> round(sum(p.numel() for p in g.parameters()) / 1e6, 2)
    11.37
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, ngf: int = 64,
                 n_blocks: int = 9, n_downsampling: int = 2, dropout: float = 0.0):
        super().__init__()
        conv, convt = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        layers: list[nn.Module] = [ReflectionPad(3, spatial_dims), conv(in_channels, ngf, 7, bias=True),
                                   InstanceNorm(), nn.ReLU(True)]
        ch = ngf
        for _ in range(n_downsampling):
            layers += [conv(ch, ch * 2, 3, stride=2, padding=1, bias=True), InstanceNorm(), nn.ReLU(True)]
            ch *= 2
        layers += [_ResBlock(spatial_dims, ch, dropout) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [convt(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=True),
                       InstanceNorm(), nn.ReLU(True)]
            ch //= 2
        layers += [ReflectionPad(3, spatial_dims), conv(ch, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.multiple = 2**n_downsampling
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _UNetGenerator(nn.Module):
    """MONAI's UNet (``depth`` levels of ``ngf * 2**i`` filters, stride 2 between them), then tanh if ``tanh``. Its
    first convolution has stride 2, so the output's finest detail passes through half resolution; ``full_res`` puts a
    level of ``ngf // 4`` filters at the input's resolution (stride 1) before them, so that it does not."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, ngf: int, depth: int = 4,
                 tanh: bool = True, full_res: bool = False, res_units: int = 2):
        super().__init__()
        self.tanh = tanh
        channels = ((max(1, ngf // 4),) if full_res else ()) + tuple(ngf * 2**i for i in range(depth))
        strides = ((1,) if full_res else ()) + (2,) * (depth - 1)
        self.unet = UNet(spatial_dims, in_channels, out_channels, channels=channels, strides=strides,
                         num_res_units=res_units, norm="INSTANCE")
        self.multiple = 2 ** (depth - 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.unet(x)
        return torch.tanh(out) if self.tanh else out


class _LastOutput(nn.Module):
    """MONAI's PatchDiscriminator returns all intermediate features; keep the patch logits only."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """pytorch-CycleGAN-and-pix2pix ``normal`` init: conv weights N(0, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PointwiseGenerator(nn.Sequential):
    """A learned intensity mapping, voxel by voxel: 1x1 convolutions (``ngf`` wide, two hidden layers) + tanh. It
    cannot move, blur or invent structure, so a translation by it keeps the input's anatomy exactly: what it
    learns is the curve from one modality's intensities to the other's (any shape, not only monotone)."""

    multiple = 1

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, ngf: int):
        conv = Conv[Conv.CONV, spatial_dims]
        super().__init__(conv(in_channels, ngf, 1), nn.SiLU(), conv(ngf, ngf, 1), nn.SiLU(),
                         conv(ngf, out_channels, 1), nn.Tanh())


def build_generator(cfg, spatial_dims: int, in_channels: int = 1, out_channels: int = 1,
                    channels_last_layout: bool = True) -> nn.Module:
    """Generator from a ``GeneratorConfig`` (``name``: ``resnet``, ``unet`` or ``pointwise``); the ResNet's weights are
    channels-last when ``channels_last_layout`` (see ``medgen.runtime.prefers_channels_last``)."""
    if cfg.name == "resnet":
        net = ResnetGenerator(spatial_dims, in_channels, out_channels, cfg.ngf, cfg.n_blocks, cfg.n_downsampling,
                              cfg.dropout)
        return net.to(memory_format=channels_last(spatial_dims)) if channels_last_layout else net
    if cfg.name == "unet":
        return _UNetGenerator(spatial_dims, in_channels, out_channels, cfg.ngf, tanh=cfg.output == "tanh",
                              full_res=cfg.full_res, res_units=cfg.res_units)
    if cfg.name == "pointwise":
        return PointwiseGenerator(spatial_dims, in_channels, out_channels, cfg.ngf)
    raise ValueError(f"unknown generator {cfg.name!r} (resnet | unet | pointwise)")


def build_discriminator(cfg, spatial_dims: int, in_channels: int = 1) -> nn.Module:
    """MONAI PatchDiscriminator with instance norm: ``n_layers=3`` is the 70x70 PatchGAN at 256^2."""
    net = PatchDiscriminator(spatial_dims, cfg.ndf, in_channels, out_channels=1, num_layers_d=cfg.n_layers,
                             kernel_size=4, norm="INSTANCE", bias=True, padding=1)
    return _LastOutput(net)
