"""Anatomy synthesizers that produce image + label jointly, with ``spatial_dims`` 2 or 3.

A sample has ``1 + K`` channels in [-1, 1]: the image, then one channel per foreground class (> 0 means
that class). Both models are MONAI networks: :class:`JointVAE` wraps ``VarAutoEncoder``; the GAN
generator is MONAI's ``Generator`` (latent -> image) and its discriminator MONAI's ``Discriminator`` with
spectral normalisation on every convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import Discriminator, Generator, VarAutoEncoder
from torch import nn


LOGVAR_RANGE = (-30.0, 20.0)  # posterior log-variance bounds: std from 3e-7 to 2e4


class JointVAE(nn.Module):
    """Variational autoencoder of image + label channels (MONAI ``VarAutoEncoder``).

    ``forward`` returns ``(image, label_logits, mu, logvar)``: the image channel is linear (a tanh would
    saturate where the shared last layer drives the label logits high), labels are logits.

    >>> vae = JointVAE(2, (2, 32, 32), latent_size=8, channels=(8, 16), strides=(2, 2))
    >>> image, logits, mu, logvar = vae(torch.zeros(3, 2, 32, 32))
    >>> image.shape, logits.shape, mu.shape
    (torch.Size([3, 1, 32, 32]), torch.Size([3, 1, 32, 32]), torch.Size([3, 8]))
    """

    def __init__(self, spatial_dims: int, in_shape: Sequence[int], latent_size: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int = 1):
        super().__init__()
        self.latent_size = latent_size
        self.vae = VarAutoEncoder(spatial_dims, in_shape, in_shape[0], latent_size, channels, strides,
                                  num_res_units=num_res_units, use_sigmoid=False)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out[:, :1], out[:, 1:]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of the posterior, ``logvar`` clamped to ``LOGVAR_RANGE`` in the forward pass only: its
        gradient passes the clamp unchanged (straight through), so that the KL term pulls a log-variance that
        overshot the bound back inside (a plain clamp has zero gradient there: a 3D VAE on real CT stuck at
        KL 7400 a voxel from iteration 300 on)."""
        mu, logvar = self.vae.encode_forward(x)
        bounded = logvar.clamp(*LOGVAR_RANGE)  # exp(logvar) overflowed (KL = inf) on 128^2 slices at lr 1e-3
        return mu, logvar + (bounded - logvar).detach()

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = self.vae.reparameterize(mu, logvar)
        image, logits = self._split(self.vae.decode_forward(z, use_sigmoid=False))
        return image, logits, mu, logvar

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> samples in [-1, 1] (label channels as tanh(logit/2), > 0 means the class)."""
        image, logits = self._split(self.vae.decode_forward(z, use_sigmoid=False))
        return torch.cat([image.clamp(-1, 1), torch.tanh(logits / 2)], dim=1)


class JointGenerator(nn.Module):
    """Latent vector -> ``1 + K`` channels in [-1, 1] (MONAI ``Generator``): the image as a tanh, and the labels
    either ``categorical`` (one class per voxel: a softmax over a background logit fixed at 0 and the K class
    logits; training shows the discriminator ``2 p - 1`` of each class's probability, against real one-hot maps
    in {-1, 1}; sampling gives ``tanh(logit / 2)``, whose largest positive channel is the softmax's argmax, as the
    VAE's) or independent (a tanh per class: channels that can claim one voxel twice).

    >>> g = JointGenerator((3, 16, 16), latent_size=4, channels=(8, 4))
    >>> p = (g(torch.zeros(2, 4))[:, 1:] + 1) / 2  # the class probabilities: at most 1 in all
    >>> bool((p.sum(1) <= 1 + 1e-6).all())
    True
    """

    def __init__(self, out_shape: Sequence[int], latent_size: int, channels: Sequence[int], categorical: bool = True):
        super().__init__()
        self.latent_size, self.categorical = latent_size, categorical
        up = len(channels)
        start = [int(s) // 2**up for s in out_shape[1:]]
        if any(s < 1 or s * 2**up != int(n) for s, n in zip(start, out_shape[1:])):
            raise ValueError(f"sample shape {list(out_shape[1:])} must be divisible by 2**{up}")
        self.net = Generator((latent_size,), (channels[0], *start), [*channels[1:], out_shape[0]], [2] * up,
                             num_res_units=1, norm="BATCH")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        if not self.categorical:
            return torch.tanh(out)
        logits = torch.cat([torch.zeros_like(out[:, :1]), out[:, 1:]], dim=1)  # background logit 0
        return torch.cat([torch.tanh(out[:, :1]), 2 * logits.float().softmax(1)[:, 1:].to(out.dtype) - 1], dim=1)

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        if not self.categorical:
            return self(z)
        out = self.net(z)
        return torch.cat([torch.tanh(out[:, :1]), torch.tanh(out[:, 1:] / 2)], dim=1)


def build_discriminator(in_shape: Sequence[int], channels: Sequence[int], spectral: bool = True) -> nn.Module:
    """MONAI ``Discriminator`` (logits, no final sigmoid), spectrally normalised when ``spectral``."""
    net = Discriminator(in_shape, channels, [2] * len(channels), num_res_units=0, norm=None, dropout=None,
                        act=("LEAKYRELU", {"negative_slope": 0.2}), last_act=None)
    if spectral:
        for module in list(net.modules()):
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(module)
    return net
