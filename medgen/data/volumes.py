"""Loading and preprocessing whole volumes once, cached in memory with MONAI's CacheDataset."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, MapTransform

from medgen.data.datalist import image_label_pairs
from medgen.data.synthseg import generation_labels
from medgen.errors import MedgenError
from medgen.io import load_image
from medgen.keys import Keys, Modality
from medgen.transforms import Preprocessd, Preprocessor
from medgen.validate import check_same_grid


def remap_labels(labels: np.ndarray, label_map: Mapping[int, int] | None) -> np.ndarray:
    """Map source label values to classes; values not in ``label_map`` become 0 (background).

    >>> remap_labels(np.array([0, 5, 6, 5]), {5: 1})
    array([0, 1, 0, 1], dtype=uint8)
    """
    if not label_map:
        return labels.astype(np.uint8)
    out = np.zeros(labels.shape, np.uint8)
    for src, dst in label_map.items():
        out[labels == src] = dst
    return out


def class_translation(source_map: Mapping[int, int] | None, target_map: Mapping[int, int] | None,
                      where: str | Path) -> dict[int, int] | None:
    """How to read label maps made in one run's classes (``source_map``: source label -> class, as a config's
    ``data.label_map``) in another run's classes (``target_map``): each class becomes the target class of its
    source labels. None: no change (both read the source labels as they are). A class whose source labels are
    different target classes, or no class in common, is an error naming ``where``.

    >>> class_translation({1: 1, 6: 6, 3: 3}, {6: 1}, "x")  # 13 BTCV organs -> a liver segmenter's classes
    {6: 1}
    >>> class_translation({6: 1, 1: 2}, {1: 1, 6: 6}, "x")
    {1: 6, 2: 1}
    >>> class_translation(None, {6: 1}, "x"), class_translation(None, None, "x")
    ({6: 1}, None)
    """
    if source_map is None:
        return None if target_map is None else dict(target_map)
    out = {}
    for cls in sorted(set(source_map.values())):
        sources = sorted(s for s, c in source_map.items() if c == cls)
        targets = {s if target_map is None else target_map.get(s, 0) for s in sources}
        if len(targets) > 1:
            raise MedgenError(where, f"class {cls} holds source labels {sources}, which are different classes "
                                     f"in the label_map {dict(target_map)}")
        if targets - {0}:
            out[cls] = targets.pop()
    if not out:
        raise MedgenError(where, f"none of its classes (label_map {dict(source_map)}) is a class of the label_map "
                                 f"{None if target_map is None else dict(target_map)}")
    return out


class LoadVolumed(MapTransform):
    """Load each key's path with :func:`medgen.io.load_image`; the ImageRef goes to ``{key}_ref``.

    Args:
        keys: image keys to load.
        label_key: the label map's key (checked against the first image's grid, then remapped).
        label_map: source label value -> class; ``None`` keeps the values.
        gen_key: when set, the generation labels of :func:`medgen.data.synthseg.generation_labels` (every
            source structure before remapping, the unlabelled body split into ``gen_classes`` intensity
            classes of the first image) go to this key, for label -> image synthesis.
    """

    def __init__(self, keys, label_key: Hashable | None = None, label_map: Mapping[int, int] | None = None,
                 gen_key: Hashable | None = None, gen_classes: int = 4):
        super().__init__(keys)
        self.label_key, self.label_map = label_key, label_map
        self.gen_key, self.gen_classes = gen_key, gen_classes

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        first_ref = first = None
        for key in self.key_iterator(d):
            path = d[key]
            array, ref = load_image(path)
            if key == self.label_key:
                if first_ref is not None:
                    check_same_grid(first_ref, ref)
                if self.gen_key is not None and first is not None:
                    d[self.gen_key] = generation_labels(first, array, self.gen_classes)
                    d[f"{self.gen_key}_{Keys.REF}"] = ref
                array = remap_labels(array, self.label_map)
            elif first_ref is None:
                first_ref, first = ref, array
            d[key], d[f"{key}_{Keys.REF}"] = array, ref
        return d


class _DropRefs(MapTransform):
    def __call__(self, data: Mapping) -> dict:
        return {k: v for k, v in data.items() if not str(k).endswith(f"_{Keys.REF}")}


def cached_volumes(
    items: Sequence[Mapping[Hashable, str | Path]],
    preprocessors: Mapping[Hashable, Preprocessor],
    label_key: Hashable | None = None,
    label_map: Mapping[int, int] | None = None,
    num_workers: int = 1,
    gen_classes: int | None = None,
) -> list[dict[Hashable, torch.Tensor]]:
    """Load, preprocess and cache volumes: one dict of ``(1, X, Y, Z)`` tensors per item.

    Args:
        items: dicts of key -> path (e.g. ``{Keys.CT: "ct/case_000.nii.gz", Keys.LABEL: ...}``).
        preprocessors: key -> :class:`Preprocessor` (the label key uses its image's geometry preset).
        label_key: the key holding a label map (nearest-neighbour resampled, remapped by ``label_map``).
        num_workers: threads for MONAI's CacheDataset.
        gen_classes: when not None, also cache :data:`Keys.GEN`, the generation labels of the label map
            (``gen_classes`` intensity classes for the unlabelled body), resampled like the labels.
    """
    keys = list(preprocessors)
    gen = Keys.GEN if gen_classes is not None and label_key is not None else None
    label_keys = [label_key] if label_key is not None else []
    pre = dict(preprocessors) | ({gen: preprocessors[label_key]} if gen else {})
    transform = Compose([
        LoadVolumed(keys, label_key, label_map, gen, gen_classes or 0),
        Preprocessd(list(pre), pre, label_keys=label_keys + ([gen] if gen else [])),
        _DropRefs(keys),
    ])
    try:
        dataset = CacheDataset([dict(i) for i in items], transform, cache_rate=1.0, num_workers=num_workers,
                               progress=False, copy_cache=False)
    except RuntimeError as exc:  # MONAI wraps a transform's exception: give back our one-line error
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, MedgenError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    return [dataset[i] for i in range(len(dataset))]


def config_volumes(cfg) -> list[dict[Hashable, torch.Tensor]]:
    """The cached training volumes of a run config (``cfg.data.images``/``labels``, its ``data`` and ``preprocess``)."""
    return labelled_volumes(image_label_pairs(cfg.data.images, cfg.data.labels), cfg.data, cfg.preprocess)


def labelled_volumes(pairs: Sequence[tuple[str | Path, str | Path]], data, preprocess,
                     label_map: Mapping[int, int] | None = None,
                     gen_classes: int | None = None) -> list[dict[Hashable, torch.Tensor]]:
    """Image/label path pairs -> cached ``{image, label}`` volumes, as segmenters and synthesizers train on.

    Args:
        pairs: ``(image, label)`` paths.
        data: a ``LabelledDataConfig``: ``modality`` picks the image preset, ``label_map`` remaps the labels,
            ``cache_workers`` loads in parallel.
        preprocess: a ``PreprocessConfig`` (labels get its geometry, nearest-neighbour).
        label_map: overrides ``data.label_map`` (e.g. identity for pairs already in class values).
        gen_classes: also cache generation labels (see :func:`cached_volumes`).
    """
    return cached_volumes([{Keys.IMAGE: i, Keys.LABEL: lab} for i, lab in pairs],
                          {Keys.IMAGE: Preprocessor.from_config(Modality(data.modality), preprocess),
                           Keys.LABEL: Preprocessor.from_config(None, preprocess)},
                          label_key=Keys.LABEL, label_map=data.label_map if label_map is None else label_map,
                          num_workers=data.cache_workers, gen_classes=gen_classes)
