"""Training the learned label -> image generator (task ``label2image``): pix2pix's conditional GAN step.

Its config and networks are in :mod:`medgen.models.label2image`. Each step: the discriminator learns real
(label map, image) pairs from (label map, G(label map)) ones (LSGAN, halved as in pix2pix), then the
generator is updated to fool it plus ``lambda_l1`` times the L1 to the real image. With ``class_means`` both
networks also see the real patch's mean intensity per class, and when training ends the run stores the training
volumes' class means (``RUN/class_means.json``), which sampling draws from instead of re-reading the volumes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medgen.data.augment import intensity_augmentation
from medgen.data.patches import labelled_patches
from medgen.data.volumes import config_volumes
from medgen.engines.common import TaskSetup, average_gradients, gan_loss, loader_factory, set_requires_grad
from medgen.keys import Keys
from medgen.models.label2image import (Label2ImageConfig, build_nets, class_mean_image, n_label_channels, one_hot,
                                      volume_class_means, with_body_classes, write_class_means)
from medgen.models.synth import synth_artifacts
from medgen.runtime import autocast


def label2image_step(gen, disc, opt_g, opt_d, cfg: Label2ImageConfig, device: torch.device):
    """Training step ``(engine, batch) -> {"loss_g", "loss_d", "l1"}``."""
    k, mode, amp = n_label_channels(cfg), cfg.loss.gan_mode, cfg.train.amp

    def step(engine, batch: Mapping) -> dict:
        gen.train()
        real = batch[Keys.IMAGE].to(device, non_blocking=True).float()
        cond = one_hot(batch[Keys.LABEL].to(device, non_blocking=True), k)
        if cfg.class_means:  # the patch's own class means: the phase to render
            cond = torch.cat([cond, class_mean_image(cond, real)], 1)
        with autocast(device, amp):
            fake = gen(cond)
        fake = fake.float()
        set_requires_grad([disc], True)
        opt_d.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits_real = disc(torch.cat([cond, real], 1))
            logits_fake = disc(torch.cat([cond, fake.detach()], 1))
        loss_d = 0.5 * (gan_loss(logits_real, True, mode) + gan_loss(logits_fake, False, mode))
        loss_d.backward()
        average_gradients([disc])
        opt_d.step()
        set_requires_grad([disc], False)
        opt_g.zero_grad(set_to_none=True)
        with autocast(device, amp):
            adv = gan_loss(disc(torch.cat([cond, fake], 1)), True, mode)
        l1 = (fake - real).abs().mean()
        loss_g = adv + cfg.loss.lambda_l1 * l1
        loss_g.backward()
        average_gradients([gen])
        opt_g.step()
        label = batch[Keys.LABEL][:1].float().to(device)
        return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "l1": l1.item(),
                "visuals": {Keys.LABEL: label / max(k - 1, 1) * 2 - 1, Keys.IMAGE: real[:1].detach(),
                            "fake": fake[:1].detach()}}

    return step


def setup(cfg: Label2ImageConfig, device: torch.device) -> TaskSetup:
    """Data (label map + image patches), generator, discriminator, optimizers and the step."""
    volumes = config_volumes(cfg)
    artifacts = synth_artifacts(volumes)
    volumes = with_body_classes(cfg, volumes)
    transform = intensity_augmentation(False, None, cfg.spatial_dims if cfg.spatial else None)
    samples = labelled_patches(volumes, cfg.data, cfg.spatial_dims, cfg.train.seed * 2 + 1, transform)
    nets = {name: net.to(device) for name, net in build_nets(cfg).items()}
    betas = tuple(cfg.optim.betas)
    opt_g = torch.optim.Adam(nets["G"].parameters(), lr=cfg.optim.lr, betas=betas)
    opt_d = torch.optim.Adam(nets["D"].parameters(), lr=cfg.optim.lr, betas=betas)
    step = label2image_step(nets["G"], nets["D"], opt_g, opt_d, cfg, device)

    def finish(run_dir) -> None:  # the class means that sampling draws from (RUN/class_means.json)
        write_class_means(run_dir, volume_class_means(cfg, volumes))

    return TaskSetup(step, {**nets, "opt_g": opt_g, "opt_d": opt_d}, loader_factory(samples, cfg.train, device),
                     [opt_g, opt_d], cfg.optim.lr, None, artifacts, finish if cfg.class_means else None)
