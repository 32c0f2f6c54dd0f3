"""Modality presets, identical in training and inference, and exactly invertible on the way back.

A volume goes ``(array, ImageRef)`` -> canonical orientation (exact axis flips/permutations, no
interpolation) -> optional resampling to a target spacing -> intensities in [-1, 1]:

- CT: the HU window ``[lo, hi]`` maps linearly to [-1, 1] (clipped); inverse gives HU.
- MRI: robust percentile scaling, the volume's ``p_lo``/``p_hi`` percentiles map to -1/1 (clipped).

:class:`Preprocessor` records what it did in a :class:`Geometry` so that ``restore`` puts a network
output back onto the input's exact grid (shape, orientation), ready for ``save_like``.

Array functions do the work once; the MONAI-style dict wrapper :class:`Preprocessd` only routes keys.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform
from scipy import ndimage

from medgen.io import ImageRef
from medgen.keys import Keys, Modality


def ct_to_unit(hu, window: Sequence[float]):
    """Map HU in ``window`` linearly to [-1, 1], clipping outside.

    >>> float(ct_to_unit(np.array(-1024.0), (-1024, 2048)))
    -1.0
    """
    lo, hi = float(window[0]), float(window[1])
    x = (hu - lo) / (hi - lo) * 2 - 1
    return x.clamp(-1, 1) if isinstance(x, torch.Tensor) else np.clip(x, -1, 1)


def unit_to_ct(x, window: Sequence[float]):
    """Inverse of :func:`ct_to_unit` (for values inside the window).

    >>> float(unit_to_ct(np.array(0.0), (-1000, 1000)))
    0.0
    """
    lo, hi = float(window[0]), float(window[1])
    return (x + 1) / 2 * (hi - lo) + lo


def mri_range(array: np.ndarray, percentiles: Sequence[float]) -> tuple[float, float]:
    """The robust intensity range of an MRI: its ``percentiles`` (e.g. 0.5 and 99.5) over all voxels."""
    sample = np.asarray(array, np.float32).ravel()
    if sample.size > 4_000_000:  # percentiles of a strided subsample are as robust and much cheaper
        sample = sample[:: sample.size // 2_000_000]
    lo, hi = np.percentile(sample, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def n4_bias_correction(array: np.ndarray, shrink: int = 4, iterations: Sequence[int] = (50, 50, 30)) -> np.ndarray:
    """Divide out a smooth multiplicative bias field estimated by N4 (SimpleITK) on a shrunken copy.

    The body mask is an Otsu threshold; the field is fitted at ``1/shrink`` resolution (under a second for
    a 256^2 x 100 volume) and evaluated at full resolution. Returns float32 with the input's shape. One-voxel
    axes (a single slice) are left out of the fit, so a one-slice volume is corrected as the 2D image it is.
    """
    import SimpleITK as sitk

    data = np.asarray(array, np.float32)
    axes = [n for n in data.shape if n > 1]  # N4's B-spline lattice cannot span a one-voxel axis (one slice)
    if len(axes) < 2:
        return data
    if len(axes) < data.ndim:
        return n4_bias_correction(data.reshape(axes), shrink, iterations).reshape(data.shape)
    shift = float(min(data.min(), 0.0))  # N4 needs positive intensities
    image = sitk.GetImageFromArray(data - shift + 1.0)
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    factors = [max(1, min(int(shrink), n // 8)) for n in image.GetSize()]
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask, factors))
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image)).astype(np.float32)
    return (data - shift + 1.0) / np.exp(log_field) + shift - 1.0


def mri_preset(array: np.ndarray, percentiles: Sequence[float],
               bias_correction: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """The MRI intensity preset up to scaling: N4 bias correction (when asked), then the robust range
    (``percentiles``) that :func:`mri_to_unit` maps to [-1, 1]. Returns the (corrected) array and the range."""
    if bias_correction:
        array = n4_bias_correction(array)
    return array, mri_range(array, percentiles)


def identity_baseline(mri: np.ndarray, ct_range: Sequence[float], percentiles: Sequence[float] = (0.5, 99.5),
                      bias_correction: bool = False) -> np.ndarray:
    """The no-translation baseline: the MRI through the translator's own MRI preset (:func:`mri_preset`),
    its robust range mapped linearly onto ``ct_range`` (HU, float32, not clipped); same grid. It is what a
    metric or a segmenter sees with no translation at all.

    >>> identity_baseline(np.array([0.0, 50.0, 100.0]), (-1000, 200), (0, 100)).tolist()
    [-1000.0, -400.0, 200.0]
    """
    corrected, (lo, hi) = mri_preset(np.asarray(mri, np.float32), percentiles, bias_correction)
    scaled = (corrected - lo) / (hi - lo) * (ct_range[1] - ct_range[0]) + ct_range[0]
    return scaled.astype(np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (``scipy.ndimage.label``'s default structure); the
    mask itself when it has one component or none.

    >>> m = np.zeros((5, 5), bool); m[:2, :2] = True; m[4, 4] = True; m[2, 2] = True  # (2, 2) touches only a corner
    >>> int(largest_component(m).sum()), bool(largest_component(m)[4, 4])
    (4, False)
    """
    labels, n = ndimage.label(mask)
    if n <= 1:
        return np.asarray(mask, bool)
    return labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def keep_largest_components(maps: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Integer label maps ``(n, ...)`` with each of ``classes`` reduced to its largest component in each map; the
    voxels of its other components become background (0). MONAI's ``KeepLargestConnectedComponent`` does this with
    scikit-image, not a dependency here.

    >>> maps = np.array([[[1, 0, 1], [2, 2, 0]]])
    >>> keep_largest_components(maps, [1, 2]).tolist()
    [[[1, 0, 0], [2, 2, 0]]]
    """
    out = np.array(maps, copy=True)
    for sample in out:
        for cls in classes:
            mask = sample == cls
            sample[mask & ~largest_component(mask)] = 0
    return out


def mri_to_unit(x, lo: float, hi: float):
    """Map MRI intensities in ``[lo, hi]`` linearly to [-1, 1], clipping outside."""
    y = (x - lo) / (hi - lo) * 2 - 1
    return y.clamp(-1, 1) if isinstance(y, torch.Tensor) else np.clip(y, -1, 1)


def unit_to_mri(x, lo: float, hi: float):
    return (x + 1) / 2 * (hi - lo) + lo


@dataclass
class Geometry:
    """What :meth:`Preprocessor.forward` did to a volume's grid, enough to undo it exactly."""

    original_shape: tuple[int, int, int]
    ornt: np.ndarray  # nibabel orientation transform from the file axes to the canonical axes
    canonical_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # voxel size after reorientation, before resampling
    shape: tuple[int, int, int]  # shape handed to the network
    scale: tuple[float, float] | None = None  # MRI (lo, hi) used for intensity scaling

    @property
    def output_spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the grid handed to the network."""
        return tuple(s * c / n for s, c, n in zip(self.spacing, self.canonical_shape, self.shape))  # type: ignore[return-value]


def reorient(array: np.ndarray, affine: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip axes so they point along ``code`` (e.g. ``RAS``); returns array and the transform."""
    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(code)))
    return nib.orientations.apply_orientation(array, ornt), ornt


def undo_reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`reorient` for an array on the canonical grid."""
    return nib.orientations.apply_orientation(array, _invert_ornt(ornt))


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that maps the canonical axes back to the original ones."""
    inv = np.zeros_like(ornt)
    for src, (dst, flip) in enumerate(ornt):
        inv[int(dst)] = [src, flip]
    return inv


def resample(volume: torch.Tensor, size: Sequence[int], mode: str = "trilinear") -> torch.Tensor:
    """Resample a ``(C, *spatial)`` tensor to ``size`` keeping the field of view (voxel corners aligned).

    ``mode``: ``trilinear``/``bilinear`` for images and probabilities, ``nearest-exact`` for labels.
    """
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    kwargs = {} if mode.startswith("nearest") else {"align_corners": False}
    out = F.interpolate(volume[None].float(), size=tuple(int(s) for s in size), mode=mode, **kwargs)[0]
    return out.to(volume.dtype) if mode.startswith("nearest") else out


class Preprocessor:
    """Geometry and intensity preset of one modality, invertible.

    Args:
        modality: ``Modality.CT`` or ``Modality.MRI`` (``None``: geometry only, e.g. label maps).
        orientation: target axis code, e.g. ``"RAS"``.
        spacing: target voxel size in mm (``None`` or ``None`` entries keep the volume's own).
        ct_window: HU mapped to [-1, 1] for CT.
        mri_percentiles: MRI percentiles mapped to -1 and 1.
        mri_bias_correction: divide out an N4-estimated bias field before scaling MRI intensities.

    >>> from medgen.io import ref_from_affine
    >>> ct_hu, ref = np.full((40, 40, 10), 40.0), ref_from_affine(np.diag([-3.0, -3.0, 5.0, 1.0]), (40, 40, 10))
    >>> pre = Preprocessor(Modality.CT, "RAS", [1.5, 1.5, None], (-1024, 2048))
    >>> x, geom = pre.forward(ct_hu, ref)  # (1, X, Y, Z) tensor in [-1, 1], 1.5 mm in plane
    >>> tuple(x.shape), round(float(x.mean()), 4)
    ((1, 80, 80, 10), -0.3073)
    >>> hu = pre.restore(pre.to_intensity(x, geom)[0], geom)  # back on the input grid, in HU
    >>> hu.shape, round(float(hu.mean()), 1)
    ((40, 40, 10), 40.0)
    """

    def __init__(
        self,
        modality: Modality | str | None,
        orientation: str = "RAS",
        spacing: Sequence[float | None] | None = None,
        ct_window: Sequence[float] = (-1024.0, 2048.0),
        mri_percentiles: Sequence[float] = (0.5, 99.5),
        mri_bias_correction: bool = False,
    ) -> None:
        self.modality = Modality(modality) if modality is not None else None
        self.orientation = orientation
        self.spacing = list(spacing) if spacing is not None else None
        self.ct_window = tuple(float(v) for v in ct_window)
        self.mri_percentiles = tuple(float(v) for v in mri_percentiles)
        self.mri_bias_correction = mri_bias_correction

    @classmethod
    def from_config(cls, modality: Modality | str | None, cfg) -> Preprocessor:
        """Build from a ``PreprocessConfig`` section."""
        return cls(modality, cfg.orientation, cfg.spacing, cfg.ct_window, cfg.mri_percentiles, cfg.mri_bias_correction)

    def target_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        if self.spacing is None:
            return tuple(int(n) for n in shape)  # type: ignore[return-value]
        return tuple(
            int(n) if t is None else max(1, int(round(n * s / float(t))))
            for n, s, t in zip(shape, spacing, self.spacing)
        )  # type: ignore[return-value]

    def geometry(self, array: np.ndarray, ref: ImageRef) -> tuple[np.ndarray, Geometry]:
        """Reorient ``array`` (exact) and describe the resampling still to do."""
        canonical, ornt = reorient(array, ref.affine, self.orientation)
        spacing = tuple(float(ref.spacing[int(i)]) for i in np.argsort(ornt[:, 0]))
        geom = Geometry(tuple(array.shape), ornt, tuple(canonical.shape), spacing,
                        self.target_shape(canonical.shape, spacing))
        return canonical, geom

    def forward(self, array: np.ndarray, ref: ImageRef, label: bool = False) -> tuple[torch.Tensor, Geometry]:
        """``(1, X, Y, Z)`` float tensor in [-1, 1] (or a label tensor) on the canonical grid."""
        canonical, geom = self.geometry(array, ref)
        if self.modality is Modality.MRI and not label:
            canonical, geom.scale = mri_preset(canonical, self.mri_percentiles, self.mri_bias_correction)
        volume = torch.from_numpy(np.ascontiguousarray(canonical))[None]
        if label:
            return resample(volume, geom.shape, "nearest-exact"), geom
        volume = resample(volume.float(), geom.shape)
        if self.modality is Modality.CT:
            volume = ct_to_unit(volume, self.ct_window)
        elif self.modality is Modality.MRI:
            volume = mri_to_unit(volume, *geom.scale)
        return volume, geom

    def identity_baseline(self, mri: np.ndarray, ct_range: Sequence[float]) -> np.ndarray:
        """:func:`identity_baseline` with this preset's MRI percentiles and bias correction."""
        return identity_baseline(mri, ct_range, self.mri_percentiles, self.mri_bias_correction)

    def to_intensity(self, x: torch.Tensor, geom: Geometry, scale: tuple[float, float] | None = None) -> torch.Tensor:
        """Network output in [-1, 1] -> HU (CT) or MRI intensities (``scale`` or the input's own)."""
        if self.modality is Modality.CT:
            return unit_to_ct(x, self.ct_window)
        if self.modality is Modality.MRI:
            lo, hi = scale or geom.scale or (0.0, 1.0)
            return unit_to_mri(x, lo, hi)
        return x

    def restore(self, x: torch.Tensor, geom: Geometry, mode: str = "trilinear") -> np.ndarray:
        """A ``(C, *geom.shape)`` or ``(*geom.shape)`` tensor -> numpy on the input's original grid."""
        squeeze = x.dim() == 3
        volume = resample(x[None] if squeeze else x, geom.canonical_shape, mode)
        out = volume[0] if squeeze else volume
        array = out.detach().cpu().numpy()
        if squeeze:
            return undo_reorient(array, geom.ornt)
        return np.stack([undo_reorient(c, geom.ornt) for c in array])


class Preprocessd(MapTransform):
    """Dict wrapper: load-time preprocessing of ``keys`` (arrays with ``{key}_ref`` ImageRefs) to tensors.

    An MRI's intensity range used for scaling is kept as ``{key}_scale``, the voxel size handed to the
    network as ``{key}_spacing``.

    Args:
        keys: keys of image arrays to preprocess.
        preprocessors: one :class:`Preprocessor` per key.
        label_keys: keys preprocessed as label maps (nearest-neighbour resampling, no intensity change).
    """

    def __init__(self, keys, preprocessors: Mapping[Hashable, Preprocessor], label_keys: Sequence[Hashable] = ()):
        super().__init__(keys)
        self.preprocessors = preprocessors
        self.label_keys = set(label_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], geom = self.preprocessors[key].forward(d[key], d[f"{key}_{Keys.REF}"], label=key in self.label_keys)
            if geom.scale is not None:
                d[f"{key}_{Keys.SCALE}"] = geom.scale
            d[f"{key}_{Keys.SPACING}"] = geom.output_spacing
        return d
