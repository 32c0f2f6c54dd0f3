"""Training the VAE and GAN anatomy synthesizers: steps and setup. Their configs and sampling networks
are in :mod:`medgen.models.synth`, sampling in :mod:`medgen.inference.synthesize`.

Both learn image + label jointly from ``data.images``/``data.labels``/``data.label_map`` (the segmenter's
keys): samples are ``1 + K`` channels in [-1, 1], the image then one channel per foreground class.

- VAE: L1 image + label reconstruction (categorical cross-entropy by default: one class per voxel; or a BCE
  per class) + KL (weight warmed up linearly), optionally an adversarial term from a PatchGAN discriminator.
- GAN: latent -> image+label; non-saturating logistic loss, spectrally normalised discriminator, lazy R1
  penalty, and an exponential moving average (EMA) of the generator, which is what sampling uses.

When a VAE's training ends it encodes ``MIXTURE_PATCHES`` training patches and fits the latent mixture on them
(``RUN/latents.pt``, :func:`medgen.models.synth.fit_latents`): its posterior and mixture sampling read that file,
never the training data.

Every step reseeds torch from ``(train.seed, iteration)``, so a resumed run draws the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medgen.data.patches import labelled_patches
from medgen.data.volumes import config_volumes
from medgen.engines.common import TaskSetup, average_gradients, gan_loss, loader_factory, set_requires_grad
from medgen.models.synth import (GANConfig, VAEConfig, build_model, categorical_logits, fit_latents, joint_tensor,
                                 n_foreground, split_joint, synth_artifacts, write_latents)
from medgen.networks.generators import build_discriminator as patch_discriminator
from medgen.networks.synth import build_discriminator
from medgen.runtime import autocast


def vae_step(vae, opt, cfg: VAEConfig, device: torch.device, disc=None, opt_d=None):
    """VAE training step: reconstruction + warmed-up KL (+ optional adversarial term)."""
    k, loss_cfg, amp = n_foreground(cfg), cfg.loss, cfg.train.amp
    warmup = max(1, int(loss_cfg.kl_warmup * cfg.train.iterations))
    categorical = loss_cfg.label_loss == "categorical"
    dice = (DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
            if categorical and loss_cfg.lambda_dice > 0 else None)

    def step(engine, batch: Mapping) -> dict:
        torch.manual_seed(cfg.train.seed * 1_000_003 + engine.state.iteration)
        vae.train()
        x = joint_tensor(batch, k, device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            image, logits, mu, logvar = vae(x)
        voxels = float(np.prod(x.shape[2:]))
        l_img = F.l1_loss(image.float(), x[:, :1])
        if categorical:
            target = split_joint(x)[1].long()  # the class index of each voxel (0: background)
            class_logits = categorical_logits(logits.float())
            l_lab = F.cross_entropy(class_logits, target)
            if dice is not None:
                l_lab = l_lab + loss_cfg.lambda_dice * dice(class_logits, target[:, None])
        else:
            l_lab = F.binary_cross_entropy_with_logits(logits.float(), (x[:, 1:] > 0).float())
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1)) / voxels
        beta = loss_cfg.beta * min(1.0, engine.state.iteration / warmup)
        loss = loss_cfg.lambda_image * l_img + loss_cfg.lambda_label * l_lab + beta * kl
        out = {"loss": 0.0, "loss_image": l_img.item(), "loss_label": l_lab.item(), "kl": kl.item(), "beta": beta}
        probs = categorical_logits(logits).softmax(1)[:, 1:] if categorical else torch.sigmoid(logits)
        fake = torch.cat([image.clamp(-1, 1), probs * 2 - 1], dim=1)
        if disc is not None:
            set_requires_grad([disc], False)
            l_adv = gan_loss(disc(fake), True, "lsgan")
            loss = loss + loss_cfg.lambda_adv * l_adv
            out["loss_adv"] = l_adv.item()
        loss.backward()
        average_gradients([vae])
        opt.step()
        if disc is not None:
            set_requires_grad([disc], True)
            opt_d.zero_grad(set_to_none=True)
            logits_d = disc(torch.cat([x, fake.detach()]))
            n = x.shape[0]
            loss_d = 0.5 * (gan_loss(logits_d[:n], True, "lsgan") + gan_loss(logits_d[n:], False, "lsgan"))
            loss_d.backward()
            average_gradients([disc])
            opt_d.step()
            out["loss_d"] = loss_d.item()
        out["loss"] = loss.item()
        out["visuals"] = {"real": x[:1, :1].detach(), "real_label": x[:1, 1:2].detach(),
                          "recon": image[:1].detach(), "recon_label": fake[:1, 1:2].detach()}
        return out

    return step


def gan_step(gen, disc, ema, opt_g, opt_d, cfg: GANConfig, device: torch.device):
    """GAN training step: logistic losses, lazy R1 on reals, EMA update of the generator."""
    k, amp, latent = n_foreground(cfg), cfg.train.amp, cfg.model.latent_size

    def step(engine, batch: Mapping) -> dict:
        it = engine.state.iteration
        torch.manual_seed(cfg.train.seed * 1_000_003 + it)
        gen.train()
        real = joint_tensor(batch, k, device)
        n = real.shape[0]
        set_requires_grad([disc], True)
        opt_d.zero_grad(set_to_none=True)
        with autocast(device, amp):
            fake = gen(torch.randn(n, latent, device=device)).detach()
            logits = disc(torch.cat([real, fake])).float()
        loss_d = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
        r1 = torch.zeros((), device=device)
        if cfg.loss.r1_gamma > 0 and it % cfg.loss.r1_every == 0:
            real_r1 = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(disc(real_r1).sum(), real_r1, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean() * (cfg.loss.r1_gamma / 2) * cfg.loss.r1_every
        (loss_d + r1).backward()
        average_gradients([disc])
        opt_d.step()

        set_requires_grad([disc], False)
        opt_g.zero_grad(set_to_none=True)
        with autocast(device, amp):
            fake = gen(torch.randn(n, latent, device=device))
            loss_g = F.softplus(-disc(fake).float()).mean()
        loss_g.backward()
        average_gradients([gen])
        opt_g.step()
        ema.update_parameters(gen)
        return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "r1": r1.item(),
                "visuals": {"real": real[:1, :1].detach(), "real_label": real[:1, 1:2].detach(),
                            "fake": fake[:1, :1].detach(), "fake_label": fake[:1, 1:2].detach()}}

    return step


def setup(cfg: VAEConfig | GANConfig, device: torch.device) -> TaskSetup:
    """Data, model(s), optimizers and step of a VAE or GAN synthesizer run."""
    volumes = config_volumes(cfg)
    samples = labelled_patches(volumes, cfg.data, cfg.spatial_dims, cfg.train.seed * 2 + 1)
    artifacts = synth_artifacts(volumes)
    make_loader = loader_factory(samples, cfg.train, device)
    model = build_model(cfg).to(device)
    betas = tuple(cfg.optim.betas)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay)
    if cfg.task == "vae":
        disc = opt_d = None
        to_save = {"model": model, "opt": opt}
        if cfg.loss.lambda_adv > 0:
            disc = patch_discriminator(SimpleNamespace(ndf=cfg.loss.ndf, n_layers=2), cfg.spatial_dims,
                                       1 + n_foreground(cfg)).to(device)
            opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.lr, betas=betas)
            to_save |= {"disc": disc, "opt_d": opt_d}
        step = vae_step(model, opt, cfg, device, disc, opt_d)
        optimizers = [opt] + ([opt_d] if opt_d is not None else [])

        def finish(run_dir) -> None:  # the encodings and mixture that sampling reads (RUN/latents.pt)
            write_latents(run_dir, fit_latents(model, cfg, volumes, device))
    else:
        disc = build_discriminator((1 + n_foreground(cfg), *cfg.data.patch_size), cfg.model.disc_channels,
                                   cfg.model.spectral_norm).to(device)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.lr, betas=betas)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.model.ema_decay))
        step = gan_step(model, disc, ema, opt, opt_d, cfg, device)
        to_save = {"model": model, "model_ema": ema, "disc": disc, "opt": opt, "opt_d": opt_d}
        optimizers = [opt, opt_d]
        finish = None  # a GAN samples its prior: nothing to fit
    return TaskSetup(step, to_save, make_loader, optimizers, cfg.optim.lr, None, artifacts, finish)
