"""SynthSeg-style label -> image generation: random contrast from label maps, on the fly, 2D or 3D.

A segmenter trained only on images whose every structure has a *random* intensity learns shape and
context rather than one modality's contrast, so it runs on CT and on MRI of any weighting (Billot et al.,
SynthSeg, 2023; BBillot/SynthSeg ``labels_to_image_model.py``). Abdominal label maps cover a dozen organs
and leave fat, muscle, bone and bowel unlabelled, so :func:`generation_labels` first splits the unlabelled
body into intensity classes of the real image (1D k-means: data-driven, no HU constant), and the generator
also keeps, with a random sign and gain per structure, the real image's fine texture (vessels inside the
liver, bowel content), which a label map does not hold.

Images are ``(1, *spatial)`` in [-1, 1] (medgen's network range); the generator draws everything from a
numpy ``RandomState`` (MONAI's ``RandomizableTransform``), so a seeded stream is deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage as ndi

from medgen.transforms import largest_component

CONTRASTS = ("random", "prior")
# the darkest body class's value in generation labels: the same in every volume and above the organ labels of the
# usual label maps (BTCV 1..13, TotalSegmentator 1..117), so that a step can tell a labelled organ from a body class
BODY_FIRST = 1000


def smooth_field(rng: np.random.RandomState, spatial: Sequence[int], grid: int = 4, low: float = -1.0,
                 high: float = 1.0, mode: str | None = None) -> torch.Tensor:
    """A smooth random field ``(1, *spatial)``: a ``grid``-point lattice drawn uniformly in ``[low, high]`` from
    ``rng``, interpolated (bicubic in 2D, trilinear in 3D, unless ``mode`` says otherwise)."""
    coarse = torch.as_tensor(rng.uniform(low, high, (1, 1) + (grid,) * len(spatial)), dtype=torch.float32)
    mode = mode or ("bicubic" if len(spatial) == 2 else "trilinear")
    return F.interpolate(coarse, size=tuple(spatial), mode=mode, align_corners=True)[0]


def robust_unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its 0.5th..99.5th percentiles (of at most ~100k voxels) mapped to [0, 1], clipped."""
    lo, hi = torch.quantile(x.flatten()[:: max(1, x.numel() // 100_000)], torch.tensor([0.005, 0.995]))
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)


def body_mask(image: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """The body of a volume ``(X, Y, Z)``: voxels above ``fraction`` of the way up the image's robust range
    (0.5th to 99.5th percentile), closed, holes filled per axial slice, largest connected component. No
    intensity constant: the air of an MRI (near 0), of a CT (-1000 HU) and of a CT clipped to a soft-tissue
    window (its lowest value) all fall below it, while the skin, muscle and organs of every modality stay
    above (Otsu's threshold does not: on a T2 MRI it splits bright from dark tissue, cutting the liver out).

    >>> v = np.zeros((20, 20, 3), np.float32); v[5:15, 5:15] = 100.0; v[9:11, 9:11] = 0.0
    >>> int(body_mask(v).sum())
    300
    """
    data = np.asarray(image, np.float32)
    lo, hi = np.percentile(data[::2, ::2], [0.5, 99.5])
    if hi <= lo:
        return np.zeros(data.shape, bool)
    mask = data > lo + fraction * (hi - lo)
    mask = ndi.binary_closing(mask, np.ones((5, 5, 1), bool), iterations=2, border_value=0) | mask
    mask = np.stack([ndi.binary_fill_holes(mask[..., z]) for z in range(mask.shape[-1])], axis=-1)
    return largest_component(mask)


def inner_detail(image: torch.Tensor, labels: torch.Tensor, sigma: float = 2.0, margin: int = 2) -> torch.Tensor:
    """The fine texture of ``image`` ``(1, *spatial)`` (the image minus its Gaussian blur) inside the structures
    of ``labels``: zero within ``margin`` voxels of a label boundary, so that a large gain on it turns
    vessels and bowel content into contrast of their own without drawing halos along the organ edges.

    >>> img = torch.zeros(1, 16, 16); img[0, 4:12, 4:12] = 1.0; img[0, 8, 8] = 2.0
    >>> lab = (img > 0).to(torch.int16)
    >>> d = inner_detail(img, lab, sigma=1.0)
    >>> float(d[0, 4, 6]), bool(d[0, 8, 8] > 0.5)
    (0.0, True)
    """
    image = torch.as_tensor(image, dtype=torch.float32)
    dims = image.ndim - 1
    detail = image - GaussianFilter(dims, sigma)(image[None])[0]
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    lab = torch.as_tensor(labels, dtype=torch.float32)[None]
    size, pad = 2 * margin + 1, margin
    edge = (pool(lab, size, 1, pad) != -pool(-lab, size, 1, pad))[0]
    return detail.masked_fill(edge, 0.0)


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Sorted centres of a 1D k-means (Lloyd, quantile start).

    >>> kmeans_1d(np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0]), 2).tolist()
    [1.0, 11.0]
    """
    values = np.asarray(values, np.float64).ravel()
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[nearest == j].mean() if np.any(nearest == j) else centres[j] for j in range(k)])
    return np.sort(centres)


def generation_labels(image: np.ndarray, labels: np.ndarray, classes: int = 4, first: int | None = None) -> np.ndarray:
    """The label map the generator paints: every labelled structure keeps its value, unlabelled body voxels
    get ``classes`` intensity classes (numbered from ``first``, by default :data:`BODY_FIRST`, or after the largest
    label where a label reaches it), outside the body is 0.

    Args:
        image: the labelled image (any modality), ``(X, Y, Z)``.
        labels: its label map, same shape, structures > 0 (all of them, not only the segmented class).
        classes: intensity classes for the unlabelled body (fat, soft tissue, enhancing, bone on CT).
        first: the value of the darkest body class (a fixed numbering across volumes that lack some labels).
    """
    image = np.asarray(image, np.float32)
    labels = np.asarray(labels).astype(np.int32)
    body = body_mask(image) | (labels > 0)
    out = np.where(body, labels, 0)
    free = body & (labels == 0)
    if classes > 0 and free.any():
        values = image[free]
        centres = kmeans_1d(values[:: max(1, values.size // 200_000)], classes)
        cls = np.argmin(np.abs(values[:, None] - centres[None].astype(np.float32)), axis=1)
        out[free] = (max(BODY_FIRST, int(labels.max()) + 1) if first is None else first) + cls
    return out.astype(np.int16)


class RandLabelToImage(RandomizableTransform):
    """Paint a random-contrast image from a generation label map ``(1, *spatial)``.

    ``contrast="prior"`` keeps the labelled scan's own intensities as each structure's prior (SynthSeg's
    priors estimated from labelled scans, BBillot/SynthSeg ``estimate_priors.py``, here the scan itself) and
    moves every structure by its own random offset in ``[-shift, shift]`` (softened over one voxel): the same
    modality in another contrast phase (a non-contrast CT's liver at 40 HU, an arterial one at 140), its
    texture intact. Blur, bias, thick slices and noise follow as in random mode; the result is clipped to the
    input's range, not stretched to its percentiles.

    Per structure: a mean in [0, 1] (the background made dark half the time, as in MRI and CT), a standard
    deviation up to ``max_std``, and the real image's detail inside the structure (:func:`inner_detail`, when
    an image is given) divided by its standard deviation in the structure and scaled by a random amplitude in
    ``[-texture, texture]``: faint vessels of one modality (a portal-venous CT's liver) become the strong
    bright or dark vessels of another (a T2 MRI's). Then a blur, a smooth multiplicative bias field, a
    lower resolution along one random axis (thick slices), noise, percentile normalisation and a random
    gamma; the result is in [-1, 1].

    Args:
        max_std: largest within-structure standard deviation (image units in [0, 1]).
        texture: largest amplitude (image units, [0, 1]) of one standard deviation of a structure's detail;
            0 paints flat structures (plain SynthSeg).
        max_blur: largest Gaussian blur sigma (voxels).
        bias: largest log-amplitude of the bias field.
        max_downsample: largest resolution loss along one axis (1 = none).
        max_noise: largest noise standard deviation.
        contrast: ``random`` (SynthSeg) or ``prior`` (the real image's intensities, shifted per structure).
        shift: with ``prior``, the largest offset of a structure ([0, 1] image units).
    """

    def __init__(self, max_std: float = 0.06, texture: float = 0.5, max_blur: float = 1.2, bias: float = 0.6,
                 max_downsample: float = 2.5, max_noise: float = 0.04, contrast: str = "random", shift: float = 0.25,
                 prob: float = 1.0):
        RandomizableTransform.__init__(self, prob)
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, not {contrast!r}")
        self.max_std, self.texture, self.max_blur, self.bias = max_std, texture, max_blur, bias
        self.max_downsample, self.max_noise, self.contrast, self.shift = max_downsample, max_noise, contrast, shift

    def _uniform(self, lo: float, hi: float, size=None) -> torch.Tensor:
        return torch.as_tensor(self.R.uniform(lo, hi, size), dtype=torch.float32)

    def __call__(self, labels: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        spatial = tuple(labels.shape[1:])
        dims = len(spatial)
        values, index = torch.unique(labels.long(), return_inverse=True)
        n = len(values)
        if self.contrast == "prior":
            if image is None:
                raise ValueError("contrast='prior' paints from the real image: none was given")
            shifts = self._uniform(-self.shift, self.shift, n).masked_fill(values == 0, 0.0)  # outside the body: kept
            offset = GaussianFilter(dims, 1.0)(shifts[index].float()[None])[0]
            return self._degrade((torch.as_tensor(image, dtype=torch.float32) + 1.0) / 2.0 + offset, spatial)
        means = self._uniform(0.0, 1.0, n)
        if values[0] == 0 and self.R.rand() < 0.5:
            means[0] = float(self.R.uniform(0.0, 0.1))
        stds = self._uniform(0.0, self.max_std, n)
        out = means[index] + stds[index] * torch.as_tensor(self.R.standard_normal(labels.shape), dtype=torch.float32)
        if image is not None and self.texture > 0:
            detail = inner_detail(image, labels)
            flat, inner = index.flatten(), detail.flatten() != 0
            power = torch.zeros(n).index_add_(0, flat[inner], detail.flatten()[inner] ** 2)
            count = torch.bincount(flat[inner], minlength=n).clamp_min(1)
            scale = (power / count).sqrt().clamp_min(1e-3)  # each structure's own texture, in its standard deviations
            out = out + (self._uniform(-self.texture, self.texture, n) / scale)[index] * detail
        return self._degrade(out, spatial)

    def _degrade(self, out: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        """Blur, bias field, thick slices and noise on a painted image in [0, 1] units; then into [-1, 1]."""
        dims = len(spatial)
        sigma = float(self.R.uniform(0.0, self.max_blur))
        if sigma > 0.3:
            out = GaussianFilter(dims, sigma)(out[None])[0]
        field = smooth_field(self.R, spatial)
        out = out * torch.exp(field * float(self.R.uniform(0.0, self.bias)))
        factor = float(self.R.uniform(1.0, self.max_downsample))
        if factor > 1.2:
            axis = int(self.R.randint(dims))
            low = list(spatial)
            low[axis] = max(4, int(round(spatial[axis] / factor)))
            mode = "bilinear" if dims == 2 else "trilinear"
            out = F.interpolate(F.interpolate(out[None], size=low, mode=mode, align_corners=False),
                                size=spatial, mode=mode, align_corners=False)[0]
        out = out + float(self.R.uniform(0.0, self.max_noise)) * torch.as_tensor(
            self.R.standard_normal(out.shape), dtype=torch.float32)
        if self.contrast == "prior":
            return out.clamp(0.0, 1.0) * 2.0 - 1.0
        out = robust_unit(out) ** float(np.exp(self.R.normal(0.0, 0.3)))
        return out * 2.0 - 1.0


class RandLabelToImaged(RandomizableTransform, MapTransform):
    """Dict wrapper of :class:`RandLabelToImage`: with probability ``prob`` the image at ``image_key`` is
    replaced by a random-contrast image painted from ``gen_key`` (its texture taken from the real image);
    ``gen_key`` is then removed, so batches hold only image and label (``keep_gen``: kept, for a step that reads it).

    >>> t = RandLabelToImaged("image", "gen", prob=1.0); _ = t.set_random_state(0)
    >>> gen = torch.zeros(1, 32, 32, dtype=torch.int16); gen[0, 8:24, 8:24] = 6
    >>> out = t({"image": torch.zeros(1, 32, 32), "gen": gen})
    >>> sorted(out), tuple(out["image"].shape), bool(out["image"].min() >= -1 and out["image"].max() <= 1)
    (['image'], (1, 32, 32), True)
    """

    def __init__(self, image_key: Hashable, gen_key: Hashable, prob: float = 0.8, keep_gen: bool = False, **kwargs):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [image_key])
        self.gen_key, self.keep_gen = gen_key, keep_gen
        self.painter = RandLabelToImage(**kwargs)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.painter.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def __call__(self, data):
        d = dict(data)
        gen = d[self.gen_key] if self.keep_gen else d.pop(self.gen_key)
        self.randomize(None)
        if self._do_transform:
            key = self.keys[0]
            d[key] = self.painter(gen, d[key]).to(torch.as_tensor(d[key]).dtype)
        return d

