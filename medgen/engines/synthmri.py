"""Training the CT -> MRI translator (``synthmri``): real CT patches -> the fit's MRI contrast.

Its config and networks are in :mod:`medgen.models.synthmri`. Every batch mixes real CT patches (``has_ct`` 1: the
generator's input) with patches of the real MRIs (``has_ct`` 0, ``target.ratio`` of the batch: the discriminator's
real samples). The generator minimises ``lambda_gan * LSGAN(D(G(ct)), real) + lambda_cycle * |T(G(ct)) - ct|``, where
``T`` is the fit's MRI -> CT translator, frozen (gradients pass through it, its weights never change), and with
``lambda_liver`` also ``lambda_liver * |mean of G(ct) in the CT's liver - the real MRIs' liver level|``
(:func:`medgen.engines.synthct.liver_level`); the discriminator learns the real MRI patches against this step's
outputs. With ``label_input`` the generator reads the CT patch's classes too
(:func:`medgen.models.synthmri.with_labels`), and the discriminator each patch's liver (class 1): the CT's label
beside the output, the pseudo-label beside the real MRI.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.transforms import Compose, CopyItemsd

from medgen.data.augment import intensity_augmentation
from medgen.data.datalist import image_label_pairs
from medgen.data.mixing import MixedSamples
from medgen.data.patches import labelled_patches
from medgen.data.volumes import labelled_volumes
from medgen.engines.common import (TaskSetup, average_gradients, gan_loss, loader_factory, logged,
                                   patchgan_update, set_requires_grad, weight_average)
from medgen.engines.synthct import HAS_CT, FrozenTranslator, flagged, liver_level, target_mris
from medgen.errors import MedgenError
from medgen.keys import Keys
from medgen.models.run import EMA_SUFFIX, NORM_FILE, norm_artifact
from medgen.models.synthmri import SynthMRIConfig, build_nets, label_classes, with_labels
from medgen.runtime import autocast, grad_scaler, prefers_channels_last


def synthmri_step(net: torch.nn.Module, disc: torch.nn.Module, back: torch.nn.Module, opt: torch.optim.Optimizer,
                  opt_d: torch.optim.Optimizer, loss_cfg, device: torch.device, amp: str = "none", scaler=None,
                  ema=None, classes: int = 0, level: float | None = None):
    """Training step ``(engine, batch) -> {"loss", "gan", "cycle", "liver", "loss_d"}``: the generator on the batch's
    CT patches (``has_ct`` 1; with ``classes`` > 0 and their label maps as that many channels more), then the
    discriminator on its MRI patches against those outputs (with ``classes`` > 0 each beside its liver, class 1;
    ``ema``: a weight average of ``net``, updated after each step; ``level``: the real MRIs' liver level, which the
    output's mean inside the CT patches' liver is pulled to with ``loss_cfg.lambda_liver``)."""
    scaler = scaler or grad_scaler(device, "none")

    def step(engine, batch: Mapping) -> dict:
        net.train()
        disc.train()
        x = batch[Keys.IMAGE].to(device, non_blocking=True)
        has_ct = batch[HAS_CT].to(device).flatten() > 0.5
        ct, real = x[has_ct], x[~has_ct]
        if not len(ct):  # a batch of MRIs only (chance 0.5 ** 12 at batch 12): nothing to translate, no update
            return {"loss": 0.0, "gan": 0.0, "cycle": 0.0, "liver": 0.0, "loss_d": 0.0}
        set_requires_grad([disc], False)
        opt.zero_grad(set_to_none=True)
        label = batch[Keys.LABEL].to(device) if classes or level is not None else None
        inputs = with_labels(ct, label[has_ct], classes) if classes else ct
        with autocast(device, amp):
            fake = net(inputs)
            judged = with_labels(fake, label[has_ct], 1) if classes else fake  # what D sees of the output
            gan = gan_loss(disc(judged), True, "lsgan")
            cycle = (back(fake).float() - ct).abs().mean()
        loss = loss_cfg.lambda_gan * gan.float() + loss_cfg.lambda_cycle * cycle
        liver = torch.zeros((), device=device)
        if level is not None and (label[has_ct] == 1).any():
            liver = (fake.float()[label[has_ct] == 1].mean() - level).abs()
            loss = loss + loss_cfg.lambda_liver * liver
        scaler.scale(loss).backward()
        average_gradients([net])
        scaler.step(opt)
        loss_d = None
        if len(real):
            loss_d = patchgan_update(disc, opt_d, with_labels(real, label[~has_ct], 1) if classes else real, judged,
                                     device, amp, scaler)
        scaler.update()
        if ema is not None:
            ema.update_parameters(net)
        return {"loss": loss.item(), "gan": float(gan.detach()), "cycle": float(cycle.detach()),
                "liver": float(liver.detach()),
                "loss_d": logged(loss_d),  # 0 when the batch had no MRI for the discriminator
                "visuals": {Keys.CT: ct[:1].detach(), Keys.FAKE_MRI: fake[:1].detach().float(),
                            **({Keys.MRI: real[:1].detach()} if len(real) else {})}}

    return step


def setup(cfg: SynthMRIConfig, device: torch.device) -> TaskSetup:
    """Data (CT and MRI patches in one stream), the generator, the discriminator, the frozen translator, the step."""
    if not cfg.translator:
        raise MedgenError(None, "synthmri needs translator: the MRI -> CT translator run (task synthct) that its "
                                "cycle loss goes through (a `medgen fit mri-ct` model trains one first)")
    if not cfg.target.images or not 0 < cfg.target.ratio < 1:
        raise MedgenError(cfg.target.images, "synthmri needs target.images (the real MRIs) and 0 < target.ratio < 1")
    if cfg.loss.lambda_liver > 0 and not cfg.target.labels:
        raise MedgenError(cfg.target.images, "loss.lambda_liver needs target.labels: the real MRIs' liver masks give "
                                             "the liver's MRI intensity")
    back = FrozenTranslator(cfg.translator, cfg.preprocess.ct_window, device).to(device)
    volumes = labelled_volumes(image_label_pairs(cfg.data.images, cfg.data.labels), cfg.data, cfg.preprocess)
    spatial = intensity_augmentation(False, None, cfg.spatial_dims if cfg.spatial else None)
    transform = Compose([*(spatial.transforms if spatial else []), CopyItemsd(Keys.IMAGE, names=[Keys.MRI])])
    cts = flagged(labelled_patches(volumes, cfg.data, cfg.spatial_dims, cfg.train.seed * 2 + 1, transform), 1.0)
    mris, mri_volumes = target_mris(cfg, spatial)
    level = liver_level(mri_volumes) if cfg.loss.lambda_liver > 0 else None
    if cfg.loss.lambda_liver > 0 and level is None:
        raise MedgenError(cfg.target.labels, "loss.lambda_liver: no target MRI has a liver (class 1) in its mask")
    samples = MixedSamples(cts, mris, cfg.target.ratio, cfg.train.seed * 2 + 3)
    nets = {k: v.to(device) for k, v in build_nets(cfg, prefers_channels_last(device, cfg.train.amp)).items()}
    net, disc = nets["G"], nets["D"]
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.discriminator.lr, betas=(0.5, 0.999))
    scaler = grad_scaler(device, cfg.train.amp)
    ema = weight_average(net, cfg.ema_decay)
    step = synthmri_step(net, disc, back, opt, opt_d, cfg.loss, device, cfg.train.amp, scaler, ema, label_classes(cfg),
                         level)
    norm = norm_artifact([v[f"{Keys.IMAGE}_{Keys.SCALE}"] for v in mri_volumes], [cfg.preprocess.ct_window])
    to_save = {"G": net, "D": disc, "opt": opt, "opt_d": opt_d, "scaler": scaler,
               **({"G" + EMA_SUFFIX: ema} if ema is not None else {})}
    return TaskSetup(step, to_save, loader_factory(samples, cfg.train, device), [opt], cfg.optim.lr, None,
                     {NORM_FILE: norm})
