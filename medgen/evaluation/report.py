"""Reports: per-case CSV + JSON with mean and sd (every ``medgen evaluate``), and the demo's HTML page
with tables and PNG figures (matplotlib, no display needed)."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medgen.io import atomic_write, load_image


def summarize(rows: Sequence[Mapping], keys: Sequence[str] = ("dice", "hd95", "assd")) -> dict[str, float]:
    """Mean and sd of each metric over the cases with a finite value (``n_inf`` counts the others)."""
    out: dict[str, float] = {}
    for k in keys:
        values = np.array([r[k] for r in rows if k in r], float)
        finite = values[np.isfinite(values)]
        out[f"{k}_mean"] = float(finite.mean()) if finite.size else float("nan")
        out[f"{k}_sd"] = float(finite.std()) if finite.size else float("nan")
        if finite.size < values.size:
            out[f"{k}_n_inf"] = int(values.size - finite.size)
    return out


def write_report(rows: Sequence[Mapping], out: str | Path, extra: Mapping | None = None) -> tuple[Path, Path]:
    """``OUT.csv`` (one row per case, then mean and sd rows) and ``OUT.json`` (cases + summary)."""
    out = Path(out)
    keys = [k for k in rows[0] if k != "case"]
    summary = summarize(rows, [k for k in keys if isinstance(rows[0][k], (int, float))])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", *keys])
    for r in rows:
        w.writerow([r["case"], *[_fmt(r[k]) for k in keys]])
    for stat in ("mean", "sd"):
        w.writerow([stat, *[_fmt(summary.get(f"{k}_{stat}", "")) for k in keys]])
    text = json.dumps({"cases": list(rows), "summary": summary, **(extra or {})}, indent=2, default=float)
    csv_path = atomic_write(out.with_suffix(".csv"), lambda tmp: Path(tmp).write_text(buf.getvalue()))
    json_path = atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text + "\n"))
    return csv_path, json_path


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return str(v)


def html_table(rows: Sequence[Mapping], keys: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    keys = list(keys or [k for k in rows[0] if k not in ("mask",)])
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = []
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            if isinstance(v, float):
                v = "inf" if math.isinf(v) else f"{v:.4g}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _mid_liver_slice(mask: np.ndarray) -> int:
    z = np.nonzero(mask.any(axis=(0, 1)))[0]
    return int(z[len(z) // 2]) if len(z) else mask.shape[-1] // 2


def case_figure(path: Path, mri: Path, ct: Path, sct: Path, truth: Path, mask: Path, baseline: Path | None) -> Path:
    """One row per case: MRI, synthetic CT, real CT, |error| and the liver contours (truth/pipeline/baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, c, s = load_image(mri)[0], load_image(ct)[0], load_image(sct)[0]
    t, p = load_image(truth)[0] == 1, load_image(mask)[0] > 0
    b = load_image(baseline)[0] > 0 if baseline is not None and baseline.exists() else None
    z = _mid_liver_slice(t)
    view = lambda a: np.asarray(a[:, :, z], float).T[::-1]  # noqa: E731  (x right, anterior up)
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    for ax, img, title, kw in (
        (axes[0], view(m), "MRI", {"cmap": "gray"}),
        (axes[1], view(s), "synthetic CT", {"cmap": "gray", "vmin": -200, "vmax": 300}),
        (axes[2], view(c), "CT", {"cmap": "gray", "vmin": -200, "vmax": 300}),
        (axes[3], np.abs(view(s) - view(c)), "|sCT - CT| (HU)", {"cmap": "magma", "vmin": 0, "vmax": 200}),
        (axes[4], view(m), "liver: truth / pipeline / baseline", {"cmap": "gray"}),
    ):
        im = ax.imshow(img, **kw)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for mask_, color in ((t, "lime"), (p, "red"), (b, "cyan")):
        if mask_ is not None and view(mask_).any():
            axes[4].contour(view(mask_), levels=[0.5], colors=color, linewidths=1)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path


def _synthesis_section(report: Mapping | None) -> str:
    if not report:
        return ""
    c1 = report.get("class_1", {})
    return f"""<h2>Anatomy synthesizer (VAE)</h2>
<p>FID {report['fid']:.3f}, KID {report['kid']:.4f} (features of the demo segmenter);
MS-SSIM between samples {report['ms_ssim_synthetic']:.3f} (real: {report['ms_ssim_real']:.3f});
a single liver component of plausible size in {c1.get('plausible_fraction', 0):.0%} of samples;
liver area {c1.get('size_synthetic_mean', 0):.1f} +- {c1.get('size_synthetic_sd', 0):.1f} {report['size_unit']}
(real {c1.get('size_real_mean', 0):.1f} +- {c1.get('size_real_sd', 0):.1f}).</p>
<img src="synthesis/samples.png" width="100%">"""


def write_demo_report(out: Path, translation_rows: Sequence[Mapping], pipeline_rows: Sequence[Mapping],
                      figures: Mapping) -> Path:
    """``OUT/report.html``: headline figures, per-case tables and one figure per held-out case."""
    info = json.loads((out / "phantoms" / "dataset.json").read_text())
    root = out / "phantoms"
    images = []
    for c in info["test"][:3]:
        name = c["name"]
        png = case_figure(out / "figures" / f"{name}.png", root / c["mri"], root / c["ct"],
                          out / "liver" / "sct" / f"{name}.nii.gz", root / c["label"], out / "liver" / f"{name}.nii.gz",
                          out / "liver" / "baseline" / f"{name}.nii.gz")
        images.append(f'<h3>{html.escape(name)}</h3><img src="{png.relative_to(out)}" width="100%">')
    t = figures.get("translation", {})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medgen demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>medgen demo: MRI &rarr; CT translation and the MRI liver pipeline on phantoms</h1>
<p>{len(info['cases'])} procedural phantom cases, {len(info['test'])} held out for every figure below.</p>
<h2>Translation (SynthRAD metrics inside the body, CT clipped to [-1024, 3000] HU)</h2>
<p>CycleGAN: MAE {t.get('mae', float('nan')):.1f} HU, PSNR {t.get('psnr', float('nan')):.2f} dB,
SSIM {t.get('ssim', float('nan')):.3f}. Identity baseline (MRI rescaled into the CT range):
MAE {t.get('identity_mae', float('nan')):.1f} HU.</p>
{html_table(translation_rows)}
<h2>MRI liver pipeline</h2>
<p>Mean liver Dice: pipeline (MRI &rarr; synthetic CT &rarr; CT segmenter) {figures.get('pipeline_dice', float('nan')):.4f};
direct baseline (the CT segmenter on the MRI itself) {figures.get('baseline_dice', float('nan')):.4f}.</p>
{html_table(pipeline_rows)}
{_synthesis_section(figures.get("synthesis"))}
<h2>Held-out cases</h2>
<p>Contours: green truth, red pipeline, cyan direct baseline.</p>
{''.join(images)}
</body></html>
"""
    return atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page))
