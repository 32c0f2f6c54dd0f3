"""Plain reference forms of medgen's networks, for the benchmarks' baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medgen.networks.generators import InstanceNorm


class PlainInstanceNorm(torch.nn.Module):
    def forward(self, x):
        return F.instance_norm(x)  # what nn.InstanceNorm2d(affine=False) calls


def plain(net: torch.nn.Module) -> torch.nn.Module:
    """The reference form of a generator: ``F.instance_norm`` and contiguous (NCHW) weights."""
    for name, child in net.named_children():
        if isinstance(child, InstanceNorm):
            setattr(net, name, PlainInstanceNorm())
        else:
            plain(child)
    return net.to(memory_format=torch.contiguous_format)
