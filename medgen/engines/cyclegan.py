"""Training the unpaired MRI <-> CT CycleGAN: image pool, the training step, validation and the setup.
Its config and networks are in :mod:`medgen.models.cyclegan`.

Domain A is MRI, domain B is CT; ``G_ab`` translates MRI -> CT. Losses follow Zhu et al. 2017 and
pytorch-CycleGAN-and-pix2pix: LSGAN, cycle L1 (``lambda_cycle`` 10), identity L1 (``lambda_identity``
0.5 x ``lambda_cycle``), a pool of 50 generated images for the discriminators, Adam(2e-4, 0.5, 0.999).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from medgen.data.datalist import image_label_pairs, list_volumes
from medgen.data.patches import RandomPatches, Unpaired
from medgen.data.volumes import cached_volumes
from medgen.engines.common import TaskSetup, average_gradients, gan_loss, loader_factory, set_requires_grad
from medgen.inference.translate import translate_array
from medgen.keys import Keys, Modality
from medgen.metrics import evaluate_pairs, mean_rows
from medgen.models.cyclegan import CycleGANConfig, CycleLossConfig, build_nets
from medgen.models.run import NORM_FILE, norm_artifact
from medgen.runtime import autocast, grad_scaler, prefers_channels_last
from medgen.transforms import Preprocessor, unit_to_ct


class ImagePool:
    """Buffer of generated images (Shrivastava et al.): with a full pool, each query returns a stored
    image half of the time, replacing it with the new one. Random choices use its own seeded generator,
    and its state is checkpointed, so resumed runs continue exactly.
    """

    def __init__(self, size: int = 50, seed: int = 0):
        self.size, self.images = size, []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator) < 0.5:
                i = int(torch.randint(len(self.images), (), generator=self.generator))
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict:
        stacked = torch.cat(self.images) if self.images else torch.empty(0)
        return {"images": stacked.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping) -> None:
        images = state["images"]
        device = self.images[0].device if self.images else images.device
        self.images = [img[None].to(device) for img in images] if images.numel() else []
        self.generator.set_state(state["generator"])


def cyclegan_step(nets: Mapping[str, torch.nn.Module], opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  pools: Mapping[str, ImagePool], loss: CycleLossConfig, device: torch.device, amp: str = "none",
                  scaler: torch.amp.GradScaler | None = None):
    """Build the CycleGAN training step ``(engine, batch) -> dict of losses``.

    Per step: generators update on GAN + cycle + identity losses with the discriminators frozen; then
    both discriminators update on real images and pooled fakes, in one batch per discriminator.
    (Batching the generators' passes was measured slower in bf16 on CPU, so they stay separate.)

    Args:
        nets: ``G_ab``, ``G_ba``, ``D_a``, ``D_b``.
        opt_g / opt_d: one Adam for both generators, one for both discriminators.
        pools: ``fake_a`` and ``fake_b`` image pools.
        loss: loss weights and GAN mode.
        amp: ``none`` | ``bf16`` | ``fp16`` autocast; ``scaler`` scales losses on CUDA.
    """
    g_ab, g_ba, d_a, d_b = nets["G_ab"], nets["G_ba"], nets["D_a"], nets["D_b"]
    scaler = scaler or grad_scaler(device, "none")
    lam, lam_idt = loss.lambda_cycle, loss.lambda_cycle * loss.lambda_identity

    def step(engine, batch: Mapping) -> dict:
        for net in nets.values():
            net.train()
        real_a = batch[Keys.MRI].to(device, non_blocking=True)
        real_b = batch[Keys.CT].to(device, non_blocking=True)
        n = real_a.shape[0]

        set_requires_grad([d_a, d_b], False)
        opt_g.zero_grad(set_to_none=True)
        with autocast(device, amp):
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
            if lam_idt > 0:
                idt_a, idt_b = g_ba(real_a), g_ab(real_b)
            loss_gan_ab = gan_loss(d_b(fake_b), True, loss.gan_mode)
            loss_gan_ba = gan_loss(d_a(fake_a), True, loss.gan_mode)
            loss_cycle_a = F.l1_loss(rec_a.float(), real_a) * lam
            loss_cycle_b = F.l1_loss(rec_b.float(), real_b) * lam
            loss_idt_a = F.l1_loss(idt_a.float(), real_a) * lam_idt if lam_idt > 0 else torch.zeros((), device=device)
            loss_idt_b = F.l1_loss(idt_b.float(), real_b) * lam_idt if lam_idt > 0 else torch.zeros((), device=device)
            loss_g = loss_gan_ab + loss_gan_ba + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
        scaler.scale(loss_g).backward()
        average_gradients([g_ab, g_ba])
        scaler.step(opt_g)

        set_requires_grad([d_a, d_b], True)
        opt_d.zero_grad(set_to_none=True)
        pooled_b, pooled_a = pools["fake_b"].query(fake_b.float()), pools["fake_a"].query(fake_a.float())
        with autocast(device, amp):
            logits_b = d_b(torch.cat([real_b, pooled_b]))
            logits_a = d_a(torch.cat([real_a, pooled_a]))
            loss_d_b = 0.5 * (gan_loss(logits_b[:n], True, loss.gan_mode) + gan_loss(logits_b[n:], False, loss.gan_mode))
            loss_d_a = 0.5 * (gan_loss(logits_a[:n], True, loss.gan_mode) + gan_loss(logits_a[n:], False, loss.gan_mode))
        scaler.scale(loss_d_a + loss_d_b).backward()
        average_gradients([d_a, d_b])
        scaler.step(opt_d)
        scaler.update()

        out = {"loss_g": loss_g.item(), "loss_d_a": loss_d_a.item(), "loss_d_b": loss_d_b.item(),
               "loss_gan_ab": loss_gan_ab.item(), "loss_gan_ba": loss_gan_ba.item(),
               "loss_cycle_a": loss_cycle_a.item(), "loss_cycle_b": loss_cycle_b.item(),
               "loss_idt_a": loss_idt_a.item(), "loss_idt_b": loss_idt_b.item()}
        out["visuals"] = {Keys.MRI: real_a[:1].detach(), Keys.FAKE_CT: fake_b[:1].detach(),
                          Keys.REC_MRI: rec_a[:1].detach(), Keys.CT: real_b[:1].detach(),
                          Keys.FAKE_MRI: fake_a[:1].detach(), Keys.REC_CT: rec_b[:1].detach()}
        return out

    return step


def validation_fn(cfg: CycleGANConfig, generator: torch.nn.Module, device: torch.device) -> Callable[[], dict]:
    """Validation during training: mean MAE/PSNR/SSIM of ``generator`` (G_ab) on the paired validation volumes."""
    pairs = image_label_pairs(cfg.data.val_mri, cfg.data.val_ct, "mri", "ct")

    def validate() -> dict:
        generator.eval()
        try:
            rows = evaluate_pairs(lambda mri, ref: translate_array(generator, cfg, mri, ref, device)[0], pairs)
            return mean_rows(rows)
        finally:
            generator.train()

    return validate


def setup(cfg: CycleGANConfig, device: torch.device) -> TaskSetup:
    """Data, networks, optimizers, the step and validation of a CycleGAN run."""
    pre_mri = Preprocessor.from_config(Modality.MRI, cfg.preprocess)
    pre_ct = Preprocessor.from_config(Modality.CT, cfg.preprocess)
    mri = cached_volumes([{Keys.MRI: p} for p in list_volumes(cfg.data.mri, "mri")], {Keys.MRI: pre_mri},
                         num_workers=cfg.data.cache_workers)
    ct = cached_volumes([{Keys.CT: p} for p in list_volumes(cfg.data.ct, "ct")], {Keys.CT: pre_ct},
                        num_workers=cfg.data.cache_workers)
    seed = cfg.train.seed
    common = dict(patch_size=cfg.data.patch_size, spatial_dims=cfg.spatial_dims, min_foreground=cfg.data.min_foreground,
                  fg_prob=cfg.data.fg_prob)
    samples = Unpaired(RandomPatches(mri, [Keys.MRI], seed=seed * 2 + 1, fg_key=Keys.MRI, **common),
                       RandomPatches(ct, [Keys.CT], seed=seed * 2 + 2, fg_key=Keys.CT, **common))

    make_loader = loader_factory(samples, cfg.train, device)

    nets = {k: v.to(device) for k, v in build_nets(cfg, prefers_channels_last(device, cfg.train.amp)).items()}
    betas = tuple(cfg.optim.betas)
    opt_g = torch.optim.Adam(itertools.chain(nets["G_ab"].parameters(), nets["G_ba"].parameters()),
                             lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay)
    opt_d = torch.optim.Adam(itertools.chain(nets["D_a"].parameters(), nets["D_b"].parameters()),
                             lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay)
    pools = {"fake_a": ImagePool(cfg.loss.pool_size, seed + 11), "fake_b": ImagePool(cfg.loss.pool_size, seed + 12)}
    scaler = grad_scaler(device, cfg.train.amp)
    step = cyclegan_step(nets, opt_g, opt_d, pools, cfg.loss, device, cfg.train.amp, scaler)
    to_save = {**nets, "opt_g": opt_g, "opt_d": opt_d, "scaler": scaler, "pool_a": pools["fake_a"],
               "pool_b": pools["fake_b"]}
    validate = validation_fn(cfg, nets["G_ab"], device) if cfg.data.val_mri and cfg.data.val_ct else None
    ct_ranges = [unit_to_ct(torch.quantile(v[Keys.CT].flatten()[::7].float(), torch.tensor([0.005, 0.995])),
                            cfg.preprocess.ct_window).tolist() for v in ct]
    norm = norm_artifact([v[f"{Keys.MRI}_{Keys.SCALE}"] for v in mri], ct_ranges)
    return TaskSetup(step, to_save, make_loader, [opt_g, opt_d], cfg.optim.lr, validate, {NORM_FILE: norm})
