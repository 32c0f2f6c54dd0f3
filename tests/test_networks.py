from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from medgen.models.cyclegan import GeneratorConfig
from medgen.networks.generators import InstanceNorm, ResnetGenerator, build_discriminator, build_generator, channels_last


def test_reference_parameter_counts():
    # pytorch-CycleGAN-and-pix2pix resnet_9blocks ngf 64 (3 channels): 11,378,179; n_layers=3 D: 2,764,737
    assert sum(p.numel() for p in ResnetGenerator(2, 3, 3).parameters()) == 11_378_179
    d = build_discriminator(NS(ndf=64, n_layers=3), 2, in_channels=3)
    assert sum(p.numel() for p in d.parameters()) == 2_764_737


@pytest.mark.parametrize(
    "name,dims,shape",
    [("resnet", 2, (2, 1, 36, 28)), ("resnet", 3, (1, 1, 16, 20, 12)), ("unet", 2, (2, 1, 32, 24)),
     ("unet", 3, (1, 1, 16, 16, 16))],
)
def test_generators_keep_shape_and_range(name, dims, shape):
    g = build_generator(NS(name=name, ngf=8, n_blocks=2, n_downsampling=2, dropout=0.0, output="tanh", full_res=False,
                           res_units=2), dims)
    y = g(torch.randn(shape))
    assert y.shape == shape and y.abs().max() <= 1


@pytest.mark.parametrize("dims", [2, 3])
def test_full_res_unet_keeps_a_level_at_the_inputs_resolution(dims):
    """generator.full_res: MONAI's UNet starts with a stride-2 convolution; full_res adds a first level of ngf / 4
    filters at stride 1, so a one-voxel detail reaches the output without passing through half resolution."""
    def unet(full_res):
        return build_generator(NS(name="unet", ngf=8, output="tanh", full_res=full_res, res_units=1), dims)

    def first_conv(g):
        return next(m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))

    plain, full = unet(False), unet(True)
    assert set(first_conv(plain).stride) == {2} and first_conv(plain).out_channels == 8
    assert set(first_conv(full).stride) == {1} and first_conv(full).out_channels == 2
    x = torch.randn(1, 1, *[16] * dims)
    assert full(x).shape == x.shape and full.multiple == plain.multiple == 8
    with pytest.raises(ValueError, match="full_res and res_units are unet keys, not resnet's"):
        GeneratorConfig(name="resnet", full_res=True)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_matches_torch_and_keeps_channels_last(dims, batch):
    x = torch.randn(batch, 5, *([9] * dims)) * 3 + 2
    ref = F.instance_norm(x)
    torch.testing.assert_close(InstanceNorm()(x), ref, atol=1e-5, rtol=1e-5)
    y = InstanceNorm()(x.contiguous(memory_format=channels_last(dims)))
    assert y.is_contiguous(memory_format=channels_last(dims))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_generator_is_channels_last_and_checkpoints_load_into_plain_layout():
    g = build_generator(NS(name="resnet", ngf=4, n_blocks=1, n_downsampling=2, dropout=0.0), 2)
    assert g.model[1].weight.is_contiguous(memory_format=torch.channels_last)
    plain = ResnetGenerator(2, 1, 1, ngf=4, n_blocks=1)
    plain.load_state_dict(g.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), g(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dims,size,out", [(2, 256, 30), (2, 128, 14), (3, 32, 2)])
def test_patch_discriminator_receptive_layout(dims, size, out):
    d = build_discriminator(NS(ndf=8, n_layers=3), dims)
    y = d(torch.randn(1, 1, *([size] * dims)))
    assert y.shape == (1, 1, *([out] * dims))


def test_joint_vae_bounds_the_posterior_log_variance():
    from medgen.networks.synth import LOGVAR_RANGE, JointVAE

    vae = JointVAE(2, (2, 16, 16), latent_size=4, channels=(4, 8), strides=(2, 2))
    torch.nn.init.constant_(vae.vae.logvar.bias, 500.0)  # exp(500) overflows float32
    image, logits, mu, logvar = vae(torch.zeros(2, 2, 16, 16))
    assert float(logvar.max()) == LOGVAR_RANGE[1]
    assert torch.isfinite(logvar.exp()).all() and torch.isfinite(image).all() and torch.isfinite(logits).all()
    kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp())  # the training step's KL term
    kl.backward()  # the clamp passes the gradient: the KL pulls the log-variance back below the bound
    grad = vae.vae.logvar.bias.grad
    assert grad is not None and bool((grad > 0).all())
    assert grad[0].item() == pytest.approx(2 * 0.5 * (np.exp(LOGVAR_RANGE[1]) - 1), rel=1e-5)  # 2 samples


class Fixed(torch.nn.Module):
    """A network that returns one fixed output whatever its input."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out


def test_categorical_joint_generator_gives_one_class_per_voxel():
    from medgen.models.synth import split_joint
    from medgen.networks.synth import JointGenerator

    g = JointGenerator((3, 16, 16), latent_size=4, channels=(8, 4))
    out = torch.zeros(3, 3, 1, 1)  # the network's raw output: image 0.5, class logits per voxel (background 0)
    out[:, 0] = 0.5
    out[0, 1:] = torch.tensor([2.0, 1.0]).view(2, 1, 1)  # class 1 wins
    out[1, 1:] = torch.tensor([-1.0, -3.0]).view(2, 1, 1)  # background wins
    out[2, 1:] = torch.tensor([0.5, 3.0]).view(2, 1, 1)  # both above background: class 2 wins
    g.net = Fixed(out)
    probs = (g(torch.zeros(3, 4))[:, 1:, 0, 0] + 1) / 2  # what the discriminator sees: softmax with background
    e = np.exp([[0.0, 2.0, 1.0], [0.0, -1.0, -3.0], [0.0, 0.5, 3.0]])
    np.testing.assert_allclose(probs.numpy(), (e / e.sum(1, keepdims=True))[:, 1:], rtol=1e-6)
    sample = g.sample(torch.zeros(3, 4))
    np.testing.assert_allclose(sample[:, 0, 0, 0].numpy(), np.tanh(0.5), rtol=1e-6)
    assert split_joint(sample)[1][:, 0, 0].tolist() == [1, 0, 2]  # the softmax's argmax
    g.categorical = False  # independent channels: a tanh each, both classes > 0 in the last voxel
    assert (g.sample(torch.zeros(3, 4))[2, 1:] > 0).all()
