"""Datalists: volumes from a folder or a JSON file, and image/label pairing by case name.

A datalist JSON is either a list of paths, or a MONAI/Decathlon-style mapping with a ``training``
(or ``cases``/``validation``/``test``) list of ``{"image": ..., "label": ...}`` entries (or phantom
``{"mri": ..., "ct": ..., "label": ...}`` entries; a ``key`` picks which one, and an entry without an
``image`` gives its ``ct``: segmenters are CT segmenters). ``file.json#test`` picks a section by name.
Relative paths are resolved against the JSON file's directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from medgen.errors import MedgenError, short
from medgen.io import OUTPUT_SUFFIXES, case_name, is_image_path, suffix_of

_SECTIONS = ("training", "cases", "validation", "test")
_ALIASES = {"image": ("image", "ct")}


def list_volumes(source: str | Path, key: str = "image") -> list[Path]:
    """Image paths from a folder (sorted; DICOM series sub-folders count as one volume) or a JSON datalist.

    >>> list_volumes("phantoms/ct")  # doctest: +SKIP
    [PosixPath('phantoms/ct/case_000.nii.gz'), ...]
    """
    src, section = _split_section(source)
    if not str(source):
        raise MedgenError(None, f"no data given for '{key}' (set it in the config's data section)")
    if not src.exists():
        raise MedgenError(src, "no such file or directory")
    if src.is_dir():
        if is_image_path(src) and not any(p.is_dir() for p in src.iterdir()):
            return [src]  # the folder itself is one DICOM series
        paths = sorted(p for p in src.iterdir() if not p.name.startswith(".") and is_image_path(p))
    elif src.suffix.lower() == ".json":
        paths = _from_json(src, key, section)
    elif is_image_path(src):
        paths = [src]
    else:
        raise MedgenError(src, "not a folder of volumes, an image or a .json datalist")
    if not paths:
        raise MedgenError(src, "holds no volumes (.nii, .nii.gz, .nrrd, .mha, .mhd or DICOM series)")
    return paths


def _split_section(source: str | Path) -> tuple[Path, str | None]:
    text = str(source)
    if ".json#" in text:
        path, section = text.rsplit("#", 1)
        return Path(path), section
    return Path(text), None


def _from_json(path: Path, key: str, section: str | None = None) -> list[Path]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedgenError(path, f"unreadable datalist JSON ({short(exc, 100)})") from None
    if isinstance(data, dict):
        names = [section] if section else list(_SECTIONS)
        found = next((data[s] for s in names if s in data), None)
        if found is None:
            raise MedgenError(path, f"datalist has none of the sections {', '.join(names)}")
        data = found
    if not isinstance(data, list):
        raise MedgenError(path, "datalist must be a list of paths or of {image, label} entries")
    return [_checked_entry(path, i, entry, key) for i, entry in enumerate(data)]


def _checked_entry(path: Path, i: int, entry, key: str) -> Path:
    """Entry ``i`` of datalist ``path`` as a path, checked up front: a string naming an existing volume, inside
    the datalist's folder unless given as an absolute path."""
    rel = next((entry[k] for k in _ALIASES.get(key, (key,)) if k in entry), None) if isinstance(entry, dict) else entry
    if rel is None:
        raise MedgenError(path, f"datalist entry {i} {short(repr(entry), 80)} has no '{key}'")
    if not isinstance(rel, str) or not rel.strip():
        raise MedgenError(path, f"datalist entry {i}: '{key}' must be a path, not {short(repr(rel), 80)}")
    p = Path(rel)
    if not p.is_absolute():
        p = path.parent / p
        folder = path.parent.resolve()
        if not p.resolve().is_relative_to(folder):
            raise MedgenError(path, f"datalist entry {i} ({rel!r}) points outside the datalist's folder {folder} "
                                    "(give an absolute path to use a file elsewhere)")
    return p


def check_entries(paths: list[Path], source: str | Path) -> list[Path]:
    """Raise unless every path of a datalist (or folder) ``source`` is an existing volume, before any is read."""
    for i, p in enumerate(paths):
        if not p.exists():
            raise MedgenError(source, f"datalist entry {i} ({str(p)!r}): no such file or directory")
        if not is_image_path(p):
            raise MedgenError(source, f"datalist entry {i} ({str(p)!r}): not a volume (.nii, .nii.gz, .nrrd, .mha, "
                                      ".mhd or a DICOM series folder)")
    return paths


def pair_by_name(images: list[Path], labels: list[Path], labels_src: str) -> list[tuple[Path, Path]]:
    """Match image and label paths by case name (file name without extension).

    Raises ``MedgenError`` naming the first image without a label.
    """
    by_name = {case_name(p): p for p in labels}
    pairs = []
    for img in images:
        lab = by_name.get(case_name(img))
        if lab is None:
            raise MedgenError(img, f"no label with the same case name in {labels_src}")
        pairs.append((img, lab))
    return pairs


def image_label_pairs(images: str | Path, labels: str | Path, image_key: str = "image",
                      label_key: str = "label") -> list[tuple[Path, Path]]:
    """Image/label path pairs: entry by entry from one JSON datalist, else matched by case name.

    >>> image_label_pairs("phantoms/ct", "phantoms/labels")[0]  # doctest: +SKIP
    (PosixPath('phantoms/ct/case_000.nii.gz'), PosixPath('phantoms/labels/case_000.nii.gz'))
    """
    if ".json" in str(images) and (not str(labels) or str(labels) == str(images)):
        return list(zip(check_entries(list_volumes(images, image_key), images),
                        check_entries(list_volumes(images, label_key), images)))
    return pair_by_name(check_entries(list_volumes(images, image_key), images),
                        check_entries(list_volumes(labels, label_key), labels), str(labels))


def input_output_pairs(inputs: str | Path, output: str | Path,
                       suffix: str = ".nii.gz") -> tuple[bool, list[tuple[Path, Path]]]:
    """The file-or-folder rule of medgen's commands: ``(single, [(input, output), ...])``.

    A file (or a DICOM series folder with an image file as ``output``) gives one pair; a folder gives
    ``output/<case><suffix>`` for each of its volumes.

    >>> input_output_pairs("mri/", "sct/")  # doctest: +SKIP
    (False, [(PosixPath('mri/case_000.nii.gz'), PosixPath('sct/case_000.nii.gz')), ...])
    """
    src, out = Path(inputs), Path(output)
    if src.is_file() or (src.is_dir() and suffix_of(out) in OUTPUT_SUFFIXES):
        return True, [(src, out)]
    return False, [(p, out / f"{case_name(p)}{suffix}") for p in list_volumes(src)]
