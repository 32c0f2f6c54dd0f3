"""Random intensity augmentation of segmentation patches (images in [-1, 1]), MONAI transforms.

A segmenter applied to synthetic CT must not depend on exact HU values: the translator can render a
whole organ, or a part of it, tens of HU off. Global transforms (scale/shift, gamma, histogram shifts, a
smooth multiplicative field, blur, noise) cover scanner-wide differences; :class:`RandOrganIntensityd`
shifts each labelled organ by its own smoothly varying offset (SynthSeg-style contrast randomisation
restricted to the labelled structures), so the network learns shape and context, not one HU value.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.transforms import (Compose, Lambdad, MapTransform, RandAdjustContrastd, RandAffined,
                              RandBiasFieldd, RandGaussianNoised, RandGaussianSmoothd, RandHistogramShiftd,
                              RandomizableTransform, RandScaleIntensityd, RandShiftIntensityd, RandSmoothDeformd)

from medgen.data.synthseg import RandLabelToImaged, robust_unit, smooth_field

from medgen.keys import Keys


class RandOrganIntensityd(RandomizableTransform, MapTransform):
    """Add to each labelled structure of ``label_key`` (every value > 0) a random offset drawn from
    ``offsets``, scaled by a smooth random field in [0, 1] (a ``grid``-point lattice, interpolated) and by
    the structure's mask softened over one voxel, so parts of an organ move more than others and its
    border stays a partial-volume edge. Images are ``(C, *spatial)``; labels ``(1, *spatial)``.
    """

    def __init__(self, image_key: str, label_key: str, offsets: Sequence[float], prob: float = 0.5, grid: int = 3):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [image_key])
        self.label_key, self.offsets, self.grid = label_key, (float(offsets[0]), float(offsets[1])), grid

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image, label = d[self.keys[0]], torch.as_tensor(d[self.label_key])
        spatial = tuple(image.shape[1:])
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        pool = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
        for value in torch.unique(label).tolist():
            if value <= 0:
                continue
            mask = pool((label == value).float()[None], 3, stride=1, padding=1, count_include_pad=False)[0]
            smooth = smooth_field(self.R, spatial, self.grid, 0.0, 1.0, mode)
            image = image + float(self.R.uniform(*self.offsets)) * smooth * mask
        d[self.keys[0]] = image
        return d


class RandGINd(RandomizableTransform, MapTransform):
    """Global intensity non-linear augmentation with interventional blending (GIN + IPA; Ouyang et al., 2021,
    causality-inspired single-source domain generalisation): the image goes through two random shallow
    convolution networks (``layers`` layers of 1 or 3-voxel kernels, LeakyReLU, random mix with the input,
    energy kept), and the two outputs are blended by a smooth random mask. Shapes survive, contrast and
    texture do not: another way than label -> image synthesis to a segmenter that ignores modality.
    Images ``(C, *spatial)`` in [-1, 1] (C: a 2.5D sample's slices, each through the same networks); the result is
    rescaled into [-1, 1].
    """

    def __init__(self, image_key: str, prob: float = 0.3, layers: int = 4, width: int = 2):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [image_key])
        self.layers, self.width = layers, width

    def _randn(self, *shape) -> torch.Tensor:
        return torch.as_tensor(self.R.standard_normal(shape), dtype=torch.float32)

    def _gin(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv2d if x.dim() == 3 else F.conv3d
        chans = [1] + [self.width] * (self.layers - 1) + [1]
        h = x[:, None]  # each channel (a 2.5D sample's slices) through the same random network
        for i in range(self.layers):
            k = int(self.R.choice([1, 3]))
            h = conv(h, self._randn(chans[i + 1], chans[i], *([k] * (x.dim() - 1))), padding=k // 2)
            h = h + self._randn(1, chans[i + 1], *([1] * (x.dim() - 1)))
            if i < self.layers - 1:
                h = F.leaky_relu(h)
        alpha = float(self.R.uniform())
        mixed = alpha * h[:, 0] + (1 - alpha) * x
        return mixed * x.norm() / (mixed.norm() + 1e-5)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image = torch.as_tensor(d[self.keys[0]], dtype=torch.float32)
        x = (image + 1) / 2
        spatial = tuple(x.shape[1:])
        mask = torch.sigmoid(4 * smooth_field(self.R, spatial))
        out = mask * self._gin(x) + (1 - mask) * self._gin(x)
        d[self.keys[0]] = robust_unit(out) * 2 - 1
        return d


def _shift_up(x):
    return x + 1.0


def _shift_down(x):
    return x - 1.0


def intensity_augmentation(global_intensity: bool = True, organ_offsets: Sequence[float] | None = None,
                           spatial_dims: int | None = None, synthseg: Mapping | None = None, gin: float = 0.0,
                           deform: float = 0.0, patch_size: Sequence[int] | None = None):
    """The random transforms of a segmenter's training patches, or None when all are off.

    In order: ``spatial_dims`` (when given) a random rotation (+-15 degrees, in the axial plane) and scaling
    (+-15 %) of image, label and generation labels, then, with ``deform`` > 0, a smooth random deformation
    of them (MONAI's ``RandSmoothDeformd`` on ``patch_size`` patches: a random displacement on a 6-point lattice
    per axis, interpolated, at most ``deform`` of the half-width); ``synthseg`` (when given: ``prob`` and the keyword
    arguments of :class:`medgen.data.synthseg.RandLabelToImage`) the label -> image synthesis that replaces
    the image by a random-contrast one, after ``gin``, the probability of :class:`RandGINd` (so a fraction
    ``gin * (1 - synthseg.prob)`` of the patches keeps the real anatomy in random contrast); ``organ_offsets`` the range of :class:`RandOrganIntensityd` (half the
    patches); ``global_intensity``: scale/shift, gamma, non-linear histogram shifts, a smooth
    multiplicative field (applied to intensities shifted to [0, 2]), blur and noise.
    """
    k = Keys.IMAGE
    transforms = []
    if spatial_dims:
        rotate = 0.26 if spatial_dims == 2 else (0.0, 0.0, 0.26)
        transforms += [Lambdad(k, _shift_up),  # so that padding (0) is the darkest value, -1 after the shift
                       RandAffined([k, Keys.LABEL, Keys.GEN], prob=0.8, rotate_range=rotate, scale_range=0.15,
                                   mode=("bilinear", "nearest", "nearest"), padding_mode="zeros",
                                   allow_missing_keys=True)]
        if deform > 0:
            keys = [k, Keys.LABEL] + ([Keys.GEN] if synthseg else [])
            transforms.append(RandSmoothDeformd(keys, spatial_size=list(patch_size), rand_size=[6] * spatial_dims,
                                                field_mode="bicubic" if spatial_dims == 2 else "trilinear",
                                                align_corners=True, prob=0.8, def_range=deform,
                                                grid_mode=["bilinear", "nearest", "nearest"][: len(keys)]))
        transforms.append(Lambdad(k, _shift_down))
    if gin > 0:
        transforms.append(RandGINd(k, prob=gin))
    if synthseg:
        options = dict(synthseg)
        transforms.append(RandLabelToImaged(k, Keys.GEN, prob=options.pop("prob"), **options))
    if organ_offsets:
        transforms.append(RandOrganIntensityd(k, Keys.LABEL, organ_offsets))
    if global_intensity:
        warnings.filterwarnings("ignore", message="torch.searchsorted")  # inside MONAI's histogram shift
        warnings.filterwarnings("ignore", message="The image's intensity is a single value")  # ... on a flat patch
        transforms += [
            RandScaleIntensityd(k, factors=0.15, prob=0.5),
            RandShiftIntensityd(k, offsets=0.15, prob=0.5),
            RandAdjustContrastd(k, gamma=(0.7, 1.4), prob=0.3),
            RandHistogramShiftd(k, num_control_points=(5, 10), prob=0.3),
            Lambdad(k, _shift_up),
            RandBiasFieldd(k, degree=3, coeff_range=(0.0, 0.15), prob=0.3),
            Lambdad(k, _shift_down),
            RandGaussianSmoothd(k, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0), prob=0.2),
            RandGaussianNoised(k, std=0.2, prob=0.5),  # std drawn in [0, 0.2]: up to about 40 HU in the demo window
        ]
    return Compose(transforms) if transforms else None
