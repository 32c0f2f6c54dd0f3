"""Training the contrast-agnostic CT synthesizer (``synthct``): random-contrast CT patches -> the CT.

Its config and network are in :mod:`medgen.models.synthct`. Each sample holds the real CT patch (the
target), its liver label and a copy painted with random contrasts from its generation labels (the input,
under :data:`Keys.MRI`: what an MRI of unknown weighting looks like to the generator). The step minimises
``lambda_l1 * |G(x) - ct|`` plus, with a frozen segmenter, ``lambda_seg * DiceCE(S(G(x)), liver)``; the
segmenter's weights never change, gradients pass through it into the generator. With ``target`` real MRIs and
their pseudo-labels are mixed in: those samples have no CT (``has_ct`` 0, no L1) and train through the segmenter
alone; with ``loss.seg_painted`` false only they do, and the painted CTs are under L1 alone. With
``loss.lambda_gan`` > 0 a PatchGAN (LSGAN) tells the batch's real CT patches from the generator's output on those
MRIs (on every output without them), so that the synthetic CT takes a real CT's texture and contrast where there is
no CT to match; with ``loss.lambda_structure`` > 0 those same outputs keep their input's edges
(``1 - LNCC(G(x), x)``, the local squared correlation, blind to the contrast's sign); with ``loss.lambda_liver`` > 0
the output's mean inside the target MRIs' liver is pulled to the CTs' liver level (:func:`liver_level`). With
``pairs.ct2mri`` (a CT -> MRI translator, frozen) ``pairs.prob`` of the CT samples take the CT rendered in the MRIs'
contrast by it as their input instead of the painted copy: synthetic pairs, under the same L1 to the real CT (with
``pairs.organ_gain`` > 1 each structure of the rendering scaled by its own random gain, :func:`structure_gains`;
``pairs.gain_on=organs``: the labelled organs alone);
``loss.gan_on=pairs`` puts the PatchGAN on their outputs instead, where the L1 holds the HU (pix2pix-like). With
``loss.lambda_hold`` > 0 the target MRIs' outputs are held to a frozen translator's (``loss.hold``) after both are
blurred (``loss.hold_sigma`` voxels): its HU and organs kept at the coarse scale, the texture above it free.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, LocalNormalizedCrossCorrelationLoss
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.transforms import Compose, CopyItemsd
from torch.optim.swa_utils import AveragedModel

from medgen.data.augment import intensity_augmentation
from medgen.data.datalist import image_label_pairs
from medgen.data.mixing import MixedSamples
from medgen.data.patches import labelled_patches
from medgen.data.synthseg import BODY_FIRST, RandLabelToImaged
from medgen.data.volumes import labelled_volumes
from medgen.engines.common import (TaskSetup, average_gradients, gan_loss, loader_factory, logged,
                                   patchgan_update, set_requires_grad, weight_average)
from medgen.errors import MedgenError
from medgen.inference.segment import RunSegmenter
from medgen.inference.translate import load_translator
from medgen.keys import Keys
from medgen.models.run import EMA_SUFFIX, NORM_FILE, norm_artifact
from medgen.models.synthct import SynthCTConfig, build_nets
from medgen.runtime import autocast, grad_scaler, prefers_channels_last
from medgen.transforms import ct_to_unit, unit_to_ct


class FrozenSegmenter(torch.nn.Module):
    """A 2D medgen segmenter run as a differentiable, frozen function: generator output in the translator's
    CT window -> HU -> the segmenter's own window -> liver probability (a 3D patch slice by slice)."""

    def __init__(self, run: str, window: list[float], device: torch.device):
        super().__init__()
        seg = RunSegmenter(run, str(device.type))
        if seg.cfg.spatial_dims != 2 or seg.cfg.network.slices != 1:
            raise MedgenError(run, "the segmentation-consistency loss needs a 2D one-slice segmenter run "
                                   "(set loss.lambda_seg=0)")
        self.net, self.window, self.seg_window = seg.net, list(window), list(seg.cfg.preprocess.ct_window)
        self.liver_index = seg.liver_index
        self.multiple = 2 ** (len(seg.cfg.network.channels) - 1)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        if fake.dim() == 5:  # a 3D translator's patches (B, 1, H, W, D): the segmenter reads their axial slices
            b, depth = len(fake), fake.shape[-1]
            prob = self(fake.permute(0, 4, 1, 2, 3).reshape(b * depth, *fake.shape[1:4]))
            return prob.reshape(b, depth, *prob.shape[1:]).permute(0, 2, 3, 4, 1)
        x = ct_to_unit(unit_to_ct(fake, self.window), self.seg_window)
        pad = [(-s) % self.multiple for s in x.shape[:1:-1]]
        x = F.pad(x, [v for p in pad for v in (0, p)], value=-1.0)
        prob = torch.softmax(self.net(x), 1)[:, self.liver_index: self.liver_index + 1]
        return prob[(..., *[slice(0, s) for s in fake.shape[2:]])]


class FrozenTranslator(torch.nn.Module):
    """A translator run as a differentiable, frozen function, its CT side in ``window`` units: ``mri2ct`` MRI in
    [-1, 1] -> CT, ``ct2mri`` CT -> MRI in [-1, 1] (one that reads the CT's label map too is refused)."""

    def __init__(self, run: str, window: list[float], device: torch.device, direction: str = "mri2ct"):
        super().__init__()
        translator = load_translator(run, direction, str(device.type))
        if translator.reads_labels:
            raise MedgenError(run, "this translator reads the CT's label map too (ct2mri.label_input): a frozen "
                                   "translator here reads the image alone")
        self.net, self.direction = translator.net, direction
        self.window, self.own_window = list(window), list(translator.cfg.preprocess.ct_window)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same = self.window == self.own_window
        if self.direction == "ct2mri":
            return self.net(x if same else ct_to_unit(unit_to_ct(x, self.window), self.own_window)).float()
        y = self.net(x).float()
        return y if same else ct_to_unit(unit_to_ct(y, self.own_window), self.window)


def synthct_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss_cfg, device: torch.device,
                 segmenter: FrozenSegmenter | None = None, amp: str = "none", scaler=None,
                 ema: AveragedModel | None = None, disc: torch.nn.Module | None = None,
                 opt_d: torch.optim.Optimizer | None = None, level: float | None = None,
                 renderer: torch.nn.Module | None = None, pairs_prob: float = 0.0, organ_gain: float = 1.0,
                 organs_only: bool = False, holder: torch.nn.Module | None = None):
    """Training step ``(engine, batch) -> {"loss", "l1", "seg", "structure", "liver", "hold", "pairs"[, "gan",
    "loss_d"]}``
    (``ema``: a weight average of ``net``, updated after each step; ``disc``/``opt_d``: the discriminator of
    ``loss_cfg.lambda_gan``; ``level``: the CTs' liver level, which the output's mean inside the target MRIs' liver
    is pulled to with ``loss_cfg.lambda_liver``; ``renderer``: a CT -> MRI function whose rendering of the CT replaces
    the painted input of each CT sample with chance ``pairs_prob``, each of its structures (the batch's generation
    labels) scaled by a gain from :func:`structure_gains` with ``organ_gain`` > 1, the labelled organs' alone with
    ``organs_only``; "pairs": how many did; ``holder``: the frozen translator of ``loss_cfg.lambda_hold``)."""
    scaler = scaler or grad_scaler(device, "none")
    dice = DiceLoss()
    lncc = functools.cache(lambda dims: LocalNormalizedCrossCorrelationLoss(dims, loss_cfg.structure_kernel))
    kernel = gaussian_1d(torch.tensor(loss_cfg.hold_sigma), normalize=True).to(device)

    def blur(x: torch.Tensor) -> torch.Tensor:  # a Gaussian on every spatial axis, the edges replicated
        return separable_filtering(x, [kernel] * (x.dim() - 2), mode="replicate")

    def judged(fake: torch.Tensor, has_ct: torch.Tensor) -> torch.Tensor:
        """What the discriminator and the structure loss judge: the target MRIs' samples, or every one without them."""
        return fake[has_ct == 0] if bool((has_ct == 0).any()) else fake

    def step(engine, batch: Mapping) -> dict:
        net.train()
        if disc is not None:
            disc.train()
            set_requires_grad([disc], False)
        x = batch[Keys.MRI].to(device, non_blocking=True)
        ct = batch[Keys.IMAGE].to(device, non_blocking=True)
        liver = (batch[Keys.LABEL].to(device, non_blocking=True) == 1).float()
        has_ct = batch[HAS_CT].to(device).float().flatten() if HAS_CT in batch else torch.ones(len(x), device=device)
        pick = torch.zeros(len(x), dtype=torch.bool, device=device)
        if renderer is not None:  # synthetic pairs: the CT in the MRIs' contrast -> the CT
            pick = (has_ct > 0) & (torch.rand(len(x), device=device) < pairs_prob)
            if bool(pick.any()):
                with torch.no_grad(), autocast(device, amp):
                    rendering = renderer(ct[pick]).float()
                if organ_gain > 1:
                    gain = structure_gains(batch[Keys.GEN].to(device)[pick], organ_gain, organs_only)
                    rendering = ((rendering + 1) * gain - 1).clamp(-1, 1)  # the gain on the intensity above -1
                x = x.clone()
                x[pick] = rendering.to(x.dtype)
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            fake = net(x)
        fake = fake.float()
        l1 = ((fake - ct).abs().flatten(1).mean(1) * has_ct).sum() / has_ct.sum().clamp_min(1.0)
        loss, seg = loss_cfg.lambda_l1 * l1, torch.zeros(())
        judge = torch.ones_like(has_ct, dtype=torch.bool) if loss_cfg.seg_painted else has_ct == 0
        if segmenter is not None and loss_cfg.lambda_seg > 0 and bool(judge.any()):
            prob, mask = segmenter(fake[judge]), liver[judge]
            seg = dice(prob, mask) + F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), mask)
            loss = loss + loss_cfg.lambda_seg * seg
        structure = torch.zeros(())
        if loss_cfg.lambda_structure > 0:
            structure = 1 + lncc(fake.dim() - 2)(judged(fake, has_ct), judged(x, has_ct).float())  # -mean LNCC
            loss = loss + loss_cfg.lambda_structure * structure
        hu = torch.zeros(())
        if level is not None:
            inside = (liver > 0) & (has_ct == 0).view(-1, *[1] * (liver.dim() - 1))  # the target MRIs' liver voxels
            if bool(inside.any()):
                hu = (fake[inside].mean() - level).abs()
                loss = loss + loss_cfg.lambda_liver * hu
        held = torch.zeros(())
        if holder is not None and bool((has_ct == 0).any()):  # the target MRIs' outputs, coarse scale, to the holder's
            with torch.no_grad(), autocast(device, amp):
                anchor = holder(x[has_ct == 0])
            held = (blur(fake[has_ct == 0]) - blur(anchor.float())).abs().mean()
            loss = loss + loss_cfg.lambda_hold * held
        gan = loss_d = faked = None
        if disc is not None:  # what the discriminator judges
            faked = fake[pick] if loss_cfg.gan_on == "pairs" else judged(fake, has_ct)
        if faked is not None and len(faked):
            with autocast(device, amp):
                gan = gan_loss(disc(faked), True, "lsgan")
            loss = loss + loss_cfg.lambda_gan * gan.float()
        scaler.scale(loss).backward()
        average_gradients([net])
        scaler.step(opt)
        real = ct[has_ct == 1]
        if gan is not None and len(real):  # the discriminator: real CT patches against this step's judged outputs
            loss_d = patchgan_update(disc, opt_d, real, faked, device, amp, scaler)
        scaler.update()
        if ema is not None:
            ema.update_parameters(net)
        extra = {} if disc is None else {"gan": logged(gan), "loss_d": logged(loss_d)}  # 0: nothing judged
        return {"loss": loss.item(), "l1": l1.item(), "seg": float(seg.detach()),
                "structure": float(structure.detach()), "liver": float(hu.detach()), "hold": float(held.detach()),
                "pairs": int(pick.sum()), **extra,
                "visuals": {Keys.MRI: x[:1].detach(), Keys.FAKE_CT: fake[:1].detach(), Keys.CT: ct[:1].detach()}}

    return step


def structure_gains(gen: torch.Tensor, organ_gain: float, organs_only: bool = False) -> torch.Tensor:
    """Per voxel of ``gen`` (``(N, 1, *spatial)`` generation labels), its structure's gain: one random gain per sample
    and label value, log-uniform in [1 / organ_gain, organ_gain]; ``organs_only``: 1 outside the labelled organs
    (the body's intensity classes, numbered from :data:`~medgen.data.synthseg.BODY_FIRST`, and the background).

    >>> g = structure_gains(torch.tensor([[[0, 2, 2]]]), 3.0)
    >>> bool(g[0, 0, 1] == g[0, 0, 2]), bool((g >= 1 / 3 - 1e-6).all() and (g <= 3 + 1e-6).all())
    (True, True)
    >>> structure_gains(torch.tensor([[[0, BODY_FIRST, BODY_FIRST + 1]]]), 3.0, organs_only=True).tolist()
    [[[1.0, 1.0, 1.0]]]
    """
    gen = gen.long().clamp_min(0)
    table = torch.exp((torch.rand(len(gen), int(gen.max()) + 1, device=gen.device) * 2 - 1) * math.log(organ_gain))
    if organs_only:
        table[:, 0] = 1.0
        table[:, BODY_FIRST:] = 1.0
    return table.gather(1, gen.flatten(1)).view(gen.shape)


def liver_level(volumes: list[dict]) -> float | None:
    """The liver level of ``volumes`` (preprocessed, in the networks' units): the median over them of the mean
    intensity inside each one's liver (label class 1); None when no volume has a liver.

    >>> liver_level([{Keys.IMAGE: torch.tensor([0.5, 0.1]), Keys.LABEL: torch.tensor([1, 0])},
    ...              {Keys.IMAGE: torch.tensor([0.0, -1.0]), Keys.LABEL: torch.tensor([1, 1])}])
    0.0
    """
    means = [float(v[Keys.IMAGE][v[Keys.LABEL] == 1].float().mean()) for v in volumes if (v[Keys.LABEL] == 1).any()]
    return float(statistics.median(means)) if means else None


HAS_CT = "has_ct"  # batch key: 1 for a painted CT (its real CT is the L1 target), 0 for a real MRI


class flagged(torch.utils.data.Dataset):
    """A sample stream with ``has_ct`` set to ``value`` in every sample (``gen``: and generation labels of zeros where
    a sample has none, so that it batches with samples that keep theirs)."""

    def __init__(self, samples, value: float, gen: bool = False):
        self.samples, self.value, self.gen = samples, value, gen

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, n: int) -> dict:
        sample = {**self.samples[n], HAS_CT: torch.tensor([self.value])}
        if self.gen:  # one plain int16 tensor in every sample
            gen = sample.get(Keys.GEN, torch.zeros(sample[Keys.LABEL].shape))
            sample[Keys.GEN] = (gen.as_tensor() if hasattr(gen, "as_tensor") else torch.as_tensor(gen)).to(torch.int16)
        return sample


def target_mris(cfg, spatial, gen: bool = False) -> tuple[torch.utils.data.Dataset, list[dict]]:
    """Patches of the real MRIs of ``cfg.target`` with their pseudo-labels (the MRI under the image key and, a copy,
    the generator's input key; ``has_ct`` 0; ``gen``: generation labels of zeros), and the cached MRI volumes."""
    pairs = image_label_pairs(cfg.target.images, cfg.target.labels or "")
    data = dataclasses.replace(cfg.data, modality=cfg.target.modality)
    volumes = labelled_volumes(pairs, data, cfg.preprocess, label_map={1: 1})
    transform = Compose([*(spatial.transforms if spatial else []), CopyItemsd(Keys.IMAGE, names=[Keys.MRI])])
    patches = labelled_patches(volumes, data, cfg.spatial_dims, cfg.train.seed * 2 + 2, transform)
    return flagged(patches, 0.0, gen), volumes


def setup(cfg: SynthCTConfig, device: torch.device) -> TaskSetup:
    """Data (painted and real CT patches), the generator, the frozen segmenter and the step."""
    mris = bool(cfg.target.images) and cfg.target.ratio > 0
    if mris and not (cfg.segmenter and cfg.loss.lambda_seg > 0):
        raise MedgenError(cfg.target.images, "target MRIs train through the frozen segmenter alone (they have no CT): "
                                             "set segmenter and loss.lambda_seg > 0, or target.ratio=0")
    if cfg.loss.lambda_liver > 0 and not mris:
        raise MedgenError(cfg.data.images, "loss.lambda_liver pulls the target MRIs' liver to the CTs' level: set "
                                           "target.images and target.ratio > 0")
    if not 0 <= cfg.pairs.prob <= 1 or cfg.pairs.organ_gain < 1:
        raise MedgenError(cfg.pairs.ct2mri, f"pairs.prob must lie in [0, 1] and pairs.organ_gain be >= 1, not "
                                            f"{cfg.pairs.prob} and {cfg.pairs.organ_gain}")
    if cfg.loss.gan_on == "pairs" and not cfg.pairs.ct2mri:
        raise MedgenError(cfg.pairs.ct2mri, f"loss.gan_on must be mri, or pairs with pairs.ct2mri set, not "
                                            f"{cfg.loss.gan_on!r}")
    if cfg.loss.lambda_hold > 0 and not mris:
        raise MedgenError(cfg.loss.hold, "loss.lambda_hold holds the target MRIs' outputs to this translator's: set "
                                         "target.images and target.ratio > 0")
    if cfg.segmenter and cfg.loss.lambda_seg > 0 and not cfg.loss.seg_painted and not mris:
        raise MedgenError(cfg.data.images, "loss.seg_painted=false puts the segmentation loss on the target MRIs alone: "
                                           "set target.images and target.ratio > 0")
    pairs = image_label_pairs(cfg.data.images, cfg.data.labels)
    gains = bool(cfg.pairs.ct2mri) and cfg.pairs.organ_gain > 1  # the rendered structures' gains need their labels
    options = dataclasses.asdict(cfg.synthseg)
    classes, prob = options.pop("classes"), options.pop("prob")
    volumes = labelled_volumes(pairs, cfg.data, cfg.preprocess, gen_classes=classes)
    spatial = intensity_augmentation(False, None, cfg.spatial_dims if cfg.spatial else None)
    transform = Compose([*(spatial.transforms if spatial else []), CopyItemsd(Keys.IMAGE, names=[Keys.MRI]),
                         RandLabelToImaged(Keys.MRI, Keys.GEN, prob=prob, keep_gen=gains, **options)])
    samples = labelled_patches(volumes, cfg.data, cfg.spatial_dims, cfg.train.seed * 2 + 1, transform)
    if mris:
        samples = MixedSamples(flagged(samples, 1.0, gains), target_mris(cfg, spatial, gains)[0], cfg.target.ratio,
                               cfg.train.seed * 2 + 3)
    make_loader = loader_factory(samples, cfg.train, device)
    nets = {k: v.to(device) for k, v in build_nets(cfg, prefers_channels_last(device, cfg.train.amp)).items()}
    net, disc = nets["G"], nets.get("D")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    frozen = None
    if cfg.segmenter and cfg.loss.lambda_seg > 0:
        frozen = FrozenSegmenter(cfg.segmenter, cfg.preprocess.ct_window, device).to(device)
    scaler = grad_scaler(device, cfg.train.amp)
    ema = weight_average(net, cfg.ema_decay)
    opt_d = None if disc is None else torch.optim.Adam(disc.parameters(), lr=cfg.discriminator.lr, betas=(0.5, 0.999))
    level = liver_level(volumes) if cfg.loss.lambda_liver > 0 else None
    if cfg.loss.lambda_liver > 0 and level is None:
        raise MedgenError(cfg.data.labels, "loss.lambda_liver: no CT has a liver (class 1) in its labels")
    renderer = None if not cfg.pairs.ct2mri else FrozenTranslator(cfg.pairs.ct2mri, cfg.preprocess.ct_window, device,
                                                                   "ct2mri").to(device)
    holder = None if cfg.loss.lambda_hold <= 0 else FrozenTranslator(cfg.loss.hold, cfg.preprocess.ct_window, device
                                                                      ).to(device)
    step = synthct_step(net, opt, cfg.loss, device, frozen, cfg.train.amp, scaler, ema, disc, opt_d, level, renderer,
                        cfg.pairs.prob, cfg.pairs.organ_gain, cfg.pairs.gain_on == "organs", holder)
    norm = norm_artifact([], [cfg.preprocess.ct_window])
    to_save = {"G": net, "opt": opt, "scaler": scaler, **({"G" + EMA_SUFFIX: ema} if ema is not None else {}),
               **({"D": disc, "opt_d": opt_d} if disc is not None else {})}
    return TaskSetup(step, to_save, make_loader, [opt], cfg.optim.lr, None,
                     {NORM_FILE: norm})
