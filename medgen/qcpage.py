"""The QC page of a folder run: ``OUT/index.html``, one row per case, to check many masks at a glance.

Each case gets one picture, ``OUT/qc/<case>.png``: axial, coronal and sagittal slices through the mask's centre,
then a strip of axial levels across the mask, the mask drawn as a green contour. With a ground truth, false
positives are filled red and false negatives blue. The page embeds the pictures (it opens offline, alone or
from the folder) and links each case's files relatively. Flagged and failed cases come first.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from medgen.io import ImageRef, atomic_write
from medgen.transforms import reorient

TILE = 160  # pixels of one view's longer side
STRIP = 6  # axial levels in the strip
GREEN, RED, BLUE = (40, 220, 60), (230, 40, 40), (50, 110, 255)


def _grey(image: np.ndarray) -> np.ndarray:
    sample = image.reshape(-1)[:: max(1, image.size // 65536)]  # the display range from a subsample: cheap
    lo, hi = np.percentile(sample, (1, 99)) if image.size else (0.0, 1.0)
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _view(grey: np.ndarray, mask: np.ndarray, truth: np.ndarray | None, aspect: float) -> np.ndarray:
    """One 2D slice (first axis left -> right, second bottom -> top) as an RGB tile with the overlays."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if truth is not None:
        rgb[mask & ~truth] = (0.5 * rgb[mask & ~truth] + 0.5 * np.array(RED)).astype(np.uint8)
        rgb[truth & ~mask] = (0.5 * rgb[truth & ~mask] + 0.5 * np.array(BLUE)).astype(np.uint8)
    rgb[mask & ~ndimage.binary_erosion(mask)] = GREEN
    return _tile(rgb, aspect)


def _tile(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """An RGB slice (first axis left -> right, second bottom -> top) as a display tile, TILE pixels long."""
    from PIL import Image

    rgb = np.ascontiguousarray(np.flip(np.transpose(rgb, (1, 0, 2)), 0))  # rows top -> bottom
    h, w = rgb.shape[0] * aspect, rgb.shape[1]
    scale = TILE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.NEAREST))


def _row(tiles: list[np.ndarray], height: int) -> np.ndarray:
    out = np.zeros((height, sum(t.shape[1] for t in tiles) + 4 * (len(tiles) - 1), 3), np.uint8)
    x = 0
    for t in tiles:
        out[: t.shape[0], x:x + t.shape[1]] = t
        x += t.shape[1] + 4
    return out


def case_picture(image: np.ndarray, mask: np.ndarray, ref: ImageRef, truth: np.ndarray | None = None) -> np.ndarray:
    """The QC picture of one case (RGB uint8): three orthogonal views through the mask's centre (the volume's
    centre when the mask is empty), and below them a strip of axial levels spread over the mask."""
    image, ornt = reorient(np.asarray(image, np.float32), ref.affine, "RAS")
    mask = reorient(np.asarray(mask) > 0, ref.affine, "RAS")[0]
    truth = None if truth is None else reorient(np.asarray(truth) > 0, ref.affine, "RAS")[0]
    spacing = [ref.spacing[int(a)] for a, _ in ornt]
    grey = _grey(image)
    where = np.argwhere(mask)
    centre = where.mean(0).round().astype(int) if where.size else np.array(mask.shape) // 2
    x, y, z = centre

    def cut(axis: int, k: int):
        take = [slice(None)] * 3
        take[axis] = k
        return grey[tuple(take)], mask[tuple(take)], None if truth is None else truth[tuple(take)]

    views = [_view(*cut(2, z), spacing[1] / spacing[0]), _view(*cut(1, y), spacing[2] / spacing[0]),
             _view(*cut(0, x), spacing[2] / spacing[1])]
    lo, hi = (where[:, 2].min(), where[:, 2].max()) if where.size else (0, mask.shape[2] - 1)
    levels = np.unique(np.linspace(lo, hi, STRIP).round().astype(int))
    strip = [_view(*cut(2, int(k)), spacing[1] / spacing[0]) for k in levels]
    strip = [t[:: 2, :: 2] for t in strip]  # half size
    top, bottom = _row(views, max(v.shape[0] for v in views)), _row(strip, max(t.shape[0] for t in strip))
    width = max(top.shape[1], bottom.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)))  # noqa: E731
    return np.concatenate([pad(top), np.zeros((4, width, 3), np.uint8), pad(bottom)])


ORGAN_COLOURS = (GREEN, RED, BLUE, (250, 200, 40), (200, 60, 220), (40, 200, 220))


def organ_tile(image: np.ndarray, labels: np.ndarray, ref: ImageRef, values: list[int], level: float = 0.5,
               window: tuple[float, float] | None = None) -> np.ndarray:
    """An axial tile (RGB uint8, RAS) at relative height ``level`` of the first organ in ``values`` (0: its lowest
    slice, 1: its highest; the volume's middle when absent), in greys over ``window`` (default: the 1-99
    percentiles), each organ of ``values`` outlined in its colour of :data:`ORGAN_COLOURS`."""
    image, ornt = reorient(np.asarray(image, np.float32), ref.affine, "RAS")
    labels = reorient(np.asarray(labels), ref.affine, "RAS")[0]
    spacing = [ref.spacing[int(a)] for a, _ in ornt]
    z = np.flatnonzero((labels == values[0]).any((0, 1))) if values else np.array([], int)
    k = int(round(z.min() + level * (z.max() - z.min()))) if z.size else image.shape[2] // 2
    if window is None:
        grey = _grey(image[:, :, k])
    else:
        grey = (np.clip((image[:, :, k] - window[0]) / (window[1] - window[0]), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value, colour in zip(values, ORGAN_COLOURS):
        organ = labels[:, :, k] == value
        rgb[organ & ~ndimage.binary_erosion(organ)] = colour
    return _tile(rgb, spacing[1] / spacing[0])


def picture_row(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles side by side (RGB uint8), 4 black pixels apart."""
    return _row(tiles, max(t.shape[0] for t in tiles))


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""


def write_index(out_dir: str | Path, rows: list[dict], title: str = "medgen QC") -> Path:
    """``OUT/index.html`` for the summary rows of a folder run (each ``ok`` row with its ``qc/<case>.png``)."""
    out = Path(out_dir)
    flagged = [r for r in rows if r.get("status") != "ok" or r.get("flags")]
    order = flagged + [r for r in rows if r not in flagged]
    dice = [r["dice"] for r in rows if isinstance(r.get("dice"), float)]
    head = (f"<p>{len(rows)} cases, <b>{sum(1 for r in rows if r.get('flags'))} flagged</b>, "
            f"<b>{sum(1 for r in rows if r.get('status') != 'ok')} failed</b>"
            + (f", mean Dice {np.mean(dice):.3f}" if dice else "") + ". Flagged and failed cases first. Contour: "
            "the mask" + ("; red: false positive, blue: false negative." if dice else ".") + "</p>")
    body = []
    for r in order:
        case = html.escape(str(r.get("case")))
        if r.get("status") != "ok":
            body.append(f"<tr class=bad><td>{case}</td><td colspan=3>failed: {html.escape(str(r.get('error')))}</td></tr>")
            continue
        link = lambda p: html.escape(os.path.relpath(p, out)) if p else ""  # noqa: E731
        files = " ".join(f"<a href='{link(r[k])}'>{k}</a>" for k in ("mask", "image") if r.get(k))
        facts = f"{r.get('liver_ml', '')} mL" + (f"<br>Dice {r['dice']:.3f}" if isinstance(r.get("dice"), float) else "")
        flags = html.escape(str(r.get("flags") or "")).replace(";", "<br>")
        picture = _data_uri(out / "qc" / f"{r.get('case')}.png")
        body.append(f"<tr{' class=flag' if r.get('flags') else ''}><td>{case}<br>{files}</td><td>{facts}</td>"
                    f"<td>{flags}</td><td><img alt='{case}' src='{picture}'></td></tr>")
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}} td{{border-top:1px solid #ccc;
padding:4px 8px;vertical-align:top}} tr.flag td:first-child{{border-left:4px solid #e0a000}}
tr.bad td:first-child{{border-left:4px solid #d00}} img{{image-rendering:pixelated}}</style></head><body>
<h1>{html.escape(title)}</h1>{head}<table><tr><th>case</th><th>liver</th><th>flags</th><th>axial | coronal |
sagittal, then axial levels</th></tr>
{chr(10).join(body)}
</table></body></html>
"""
    return atomic_write(out / "index.html", lambda tmp: Path(tmp).write_text(text))
