"""The embedded default data set: procedural abdominal phantoms with paired CT, MRI and labels.

Each case is an abdomen defined in world millimetres (RAS+: x to the patient's right, y anterior,
z superior) and sampled onto any voxel grid, so one case can be rendered on an oblique grid too.
Anatomy: body contour, subcutaneous fat, muscle wall with paraspinal and psoas muscles, spine and
ribs, liver (right, two lobes), spleen, kidneys, aorta, bowel gas and a visceral fat/bowel texture.
Every case differs by a smooth random deformation and random sizes, positions and tissue values.

CT is in Hounsfield units (literature values: fat about -100, liver 55-65, spleen about 45, kidney
about 30, muscle about 50, trabecular bone about 300, cortical bone 700-1000, air -1000) with
partial-volume blur and noise. MRI is T1- or T2-weighted (fat bright on T1, fluid bright on T2,
cortical bone and air dark) with a smooth multiplicative bias field and Rician noise. CT, MRI and
labels of a case share anatomy and grid.

>>> case = make_case(seed=0, case=3)
>>> case["ct"].dtype, bool(case["labels"].max() <= max(LABELS))
(dtype('int16'), True)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medgen.errors import MedgenError
from medgen.io import atomic_write, hu_int16, ref_from_affine, save_like

GENERATOR_VERSION = "1.0"
DEFAULT_SHAPE = (128, 128, 64)
DEFAULT_SPACING = (3.0, 3.0, 3.0)

LABELS = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "bone",
    6: "aorta",
    7: "bowel_gas",
    8: "muscle",
    9: "subcutaneous_fat",
    10: "visceral",
}
LIVER = 1

# Tissue table: (CT HU mean, HU jitter between cases, T1 signal, T2 signal); signals in [0, 1].
TISSUES = {
    "air": (-1000.0, 0.0, 0.0, 0.0),
    "liver": (60.0, 5.0, 0.55, 0.25),
    "spleen": (45.0, 3.0, 0.42, 0.55),
    "kidney": (30.0, 3.0, 0.38, 0.65),
    "trabecular": (300.0, 40.0, 0.30, 0.25),
    "cortical": (850.0, 150.0, 0.03, 0.02),
    "aorta": (40.0, 4.0, 0.10, 0.05),
    "gas": (-950.0, 30.0, 0.0, 0.0),
    "muscle": (50.0, 4.0, 0.30, 0.20),
    "fat": (-100.0, 8.0, 1.00, 0.75),
    "bowel": (30.0, 5.0, 0.40, 0.90),
}


def default_affine(shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING) -> np.ndarray:
    """An RAS+ affine with the grid centred on the world origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, float) - 1) / 2 * np.asarray(spacing, float)
    return affine


class _Smooth:
    """A smooth random field in world mm: a sum of random plane waves (independent of the grid).

    On a grid with affine ``A``, each wave ``sin(k . (A ijk + t) + phase)`` factorises over the
    three voxel axes, so the whole sum is one small complex matrix product (no per-voxel sin).
    """

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float):
        k = rng.normal(size=(n, 3))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        self.k = k * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = amplitude / np.sqrt(n / 2)

    def on_grid(self, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        a = self.k @ affine[:3, :3]  # (n, 3): per-voxel-axis wave numbers
        c = self.k @ affine[:3, 3] + self.phase
        e = [np.exp(1j * a[:, d : d + 1] * np.arange(shape[d])[None]) for d in range(3)]
        p = (np.exp(1j * c)[:, None, None] * e[0][:, :, None] * e[1][:, None, :]).reshape(len(c), -1)
        return (self.amp * (p.T @ e[2]).imag).reshape(shape).astype(np.float32)


def _ellipsoid(x, y, z, center, radii, angle: float = 0.0) -> np.ndarray:
    """Inside test of an ellipsoid, rotated by ``angle`` (radians) about the z axis."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2 <= 1.0


def _superellipse(x, y, cx, cy, ax, ay, p: float = 2.4) -> np.ndarray:
    """Normalised superellipse radius (<= 1 inside) of the body cross-section."""
    return (np.abs((x - cx) / ax) ** p + np.abs((y - cy) / ay) ** p) ** (1.0 / p)


def _anatomy(rng: np.random.Generator, affine: np.ndarray, shape) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label map and tissue sub-masks on the grid ``(affine, shape)``."""
    u = rng.uniform
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = (affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)).reshape(3, *shape)
    warp = [_Smooth(rng, 6, (120, 260), 7.0).on_grid(affine, shape) for _ in range(3)]
    x, y, z = world[0] + warp[0], world[1] + warp[1], world[2] + warp[2]
    z = z + u(-15, 15)  # where the field of view sits craniocaudally

    labels = np.zeros(x.shape, np.uint8)
    ax, ay = u(140, 175), u(100, 125)
    ay_z = ay * (1 + 0.0008 * np.clip(-z, 0, None))  # the belly widens a little inferiorly
    body_r = _superellipse(x, y, 0.0, 0.0, ax, ay_z)
    body = body_r <= 1.0
    fat_mm = u(8, 30)
    wall_mm = u(8, 14)
    inner_fat = body_r <= 1.0 - fat_mm / ax
    inner_wall = body_r <= 1.0 - (fat_mm + wall_mm) / ax
    labels[body] = 9
    labels[inner_fat] = 8
    labels[inner_wall] = 10

    spine_y = -ay * u(0.45, 0.55)
    paraspinal = (_ellipsoid(x, y, z, (28, spine_y - 35, 0), (22, 20, 1e4))
                  | _ellipsoid(x, y, z, (-28, spine_y - 35, 0), (22, 20, 1e4)))
    psoas_r = 16 * np.clip((40 - z) / 80, 0.2, 1.0)
    psoas = ((x - 38) ** 2 + (y - spine_y) ** 2 <= psoas_r**2) | ((x + 38) ** 2 + (y - spine_y) ** 2 <= psoas_r**2)
    labels[(paraspinal | psoas) & body] = 8

    r = u(0.85, 1.15, size=3)
    kidney_z = u(-35, -15)
    labels[_ellipsoid(x, y, z, (-62, spine_y + 8, kidney_z), (28 * r[0], 24, 55 * r[0]), 0.35)] = 4
    labels[_ellipsoid(x, y, z, (62, spine_y + 8, kidney_z - u(5, 20)), (28 * r[0], 24, 55 * r[0]), -0.35)] = 3
    labels[_ellipsoid(x, y, z, (-ax * 0.55, spine_y + 30, 35 + u(-10, 10)), (25 * r[1], 50 * r[1], 45 * r[1]), -0.5)] = 2

    s = r[2]
    cx, cy, cz = ax * u(0.42, 0.52), u(-10, 10), u(25, 45)
    liver = _ellipsoid(x, y, z, (cx, cy, cz), (72 * s, 82 * s, 75 * s), 0.2)
    liver |= _ellipsoid(x, y, z, (cx - 75 * s, cy + 40, cz + 15), (55 * s, 38 * s, 35 * s), 0.3)
    liver &= inner_wall & (y > spine_y + 25)
    liver &= ~_ellipsoid(x, y, z, (62, spine_y + 8, kidney_z - 10), (36, 32, 64), -0.35)
    labels[liver] = 1

    aorta = (x + 15) ** 2 + (y - spine_y - 32) ** 2 <= u(9, 13) ** 2
    labels[aorta & inner_wall] = 6

    vertebra = _ellipsoid(x, y, z, (0, spine_y, 0), (22, 16, 1e4))
    posterior = _ellipsoid(x, y, z, (0, spine_y - 30, 0), (8, 18, 1e4)) | _ellipsoid(x, y, z, (0, spine_y - 22, 0), (25, 6, 1e4))
    disc = np.abs(((z + u(0, 32)) % 32) - 16) > 13  # intervertebral discs are soft tissue
    bone = (vertebra | posterior) & ~(disc & vertebra)
    ribs_zone = (z > u(-10, 10)) & (np.abs(((z + u(0, 28)) % 28) - 14) < 4)
    rib_r = _superellipse(x, y, 0.0, 0.0, ax, ay_z)
    ribs = ribs_zone & (rib_r <= 1.0 - (fat_mm + 2) / ax) & (rib_r >= 1.0 - (fat_mm + 10) / ax) & (y < ay * 0.3)
    bone |= ribs
    bone &= body
    labels[bone] = 5
    cortical = bone & ~ndimage.binary_erosion(bone, iterations=1)

    gas = np.zeros(x.shape, bool)
    for _ in range(int(rng.integers(3, 8))):
        gx, gy, gz = u(-90, 30), u(0, ay * 0.6), u(-90, 10)
        gas |= _ellipsoid(x, y, z, (gx, gy, gz), u(6, 18, size=3))
    labels[gas & (labels == 10)] = 7

    texture = 0.5 + _Smooth(rng, 24, (20, 60), 0.5).on_grid(affine, shape)  # visceral fat (0) <-> bowel (1)
    return labels, {"cortical": cortical, "texture": np.clip(texture, 0.0, 1.0)}


def _tissue_value(rng: np.random.Generator, column: int) -> dict[str, float]:
    """Per-case values of every tissue for one TISSUES column (1 = CT, 2/3 = MRI)."""
    if column == 0:
        return {name: v[0] + rng.uniform(-v[1], v[1]) for name, v in TISSUES.items()}
    return {name: v[column] * rng.uniform(0.93, 1.07) for name, v in TISSUES.items()}


def _render(labels: np.ndarray, parts: dict[str, np.ndarray], values: dict[str, float]) -> np.ndarray:
    out = np.full(labels.shape, values["air"], np.float32)
    for label, tissue in ((1, "liver"), (2, "spleen"), (3, "kidney"), (4, "kidney"), (5, "trabecular"),
                          (6, "aorta"), (7, "gas"), (8, "muscle"), (9, "fat")):
        out[labels == label] = values[tissue]
    out[parts["cortical"]] = values["cortical"]
    visceral = labels == 10
    t = parts["texture"][visceral]
    out[visceral] = values["fat"] * (1 - t) + values["bowel"] * t
    return out


def make_case(
    seed: int = 0,
    case: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    affine: np.ndarray | None = None,
    weighting: str = "T1",
) -> dict[str, np.ndarray]:
    """Render one phantom case: ``{"ct": int16 HU, "mri": float32, "labels": uint8, "affine": 4x4}``.

    Args:
        seed: data-set seed; with ``case`` it fixes the anatomy, tissue values and noise.
        case: case index within the data set.
        shape: voxel grid shape.
        affine: voxel -> RAS+ mm affine (default: 3 mm isotropic, centred).
        weighting: MRI weighting, ``"T1"`` or ``"T2"``.

    >>> c = make_case(seed=1, case=0, shape=(64, 64, 32))
    >>> int((c["labels"] == LIVER).sum()) > 0
    True
    """
    if weighting not in ("T1", "T2"):
        raise ValueError(f"weighting must be 'T1' or 'T2', not {weighting!r}")
    affine = default_affine(shape, DEFAULT_SPACING) if affine is None else np.asarray(affine, float)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(case)]))
    labels, parts = _anatomy(rng, affine, shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    blur = 0.7 / spacing * spacing.min()  # about 2 mm of partial-volume blur

    ct = ndimage.gaussian_filter(_render(labels, parts, _tissue_value(rng, 0)), blur)
    ct += ndimage.gaussian_filter(rng.normal(0, 18, shape).astype(np.float32), 0.6)
    ct = hu_int16(ct)

    mri = ndimage.gaussian_filter(_render(labels, parts, _tissue_value(rng, 2 if weighting == "T1" else 3)), blur)
    mri *= np.exp(_Smooth(rng, 4, (300, 600), 0.25).on_grid(affine, shape))  # smooth bias field, about +-25 %
    sigma = rng.uniform(0.015, 0.03)
    mri = np.sqrt((mri + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)  # Rician
    mri = (mri * 800.0).astype(np.float32)
    return {"ct": ct, "mri": mri, "labels": labels, "affine": affine}


def write_dataset(
    out: str | Path,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    weighting: str = "T1",
    overwrite: bool = False,
    test: int = 0,
) -> dict:
    """Write ``OUT/{ct,mri,labels}/case_XXX.nii.gz`` and ``OUT/dataset.json``; return the JSON dict.

    ``dataset.json`` lists every case under ``cases``; with ``test > 0`` the last ``test`` cases also form
    a ``test`` section and the others a ``training`` section (``dataset.json#test`` in configs).

    >>> info = write_dataset("phantoms", cases=20, seed=0)  # doctest: +SKIP
    >>> info["cases"][0]["ct"]  # doctest: +SKIP
    'ct/case_000.nii.gz'
    """
    if not 0 <= test < cases:
        raise MedgenError(out, f"--test {test} must leave at least one training case out of {cases}")
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise MedgenError(out, "already holds a dataset.json (pass --overwrite to replace it)")
    affine = default_affine(shape, spacing)
    ref = ref_from_affine(affine, shape)
    entries, t0 = [], time.perf_counter()
    for i in range(cases):
        data = make_case(seed, i, shape, affine, weighting)
        name = f"case_{i:03d}"
        entry = {"name": name}
        for key, folder in (("ct", "ct"), ("mri", "mri"), ("labels", "labels")):
            rel = f"{folder}/{name}.nii.gz"
            save_like(data[key], ref, out / rel, overwrite=True)
            entry["label" if key == "labels" else key] = rel
        entries.append(entry)
    info = {
        "name": "medgen abdominal phantoms",
        "generator": "medgen.phantoms",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "shape": list(map(int, shape)),
        "spacing": list(map(float, spacing)),
        "mri_weighting": weighting,
        "labels": {str(k): v for k, v in LABELS.items()},
        "ct_units": "HU",
        "cases": entries,
        **({"training": entries[: cases - test], "test": entries[cases - test:]} if test > 0 else {}),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write(out / "dataset.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    return info
