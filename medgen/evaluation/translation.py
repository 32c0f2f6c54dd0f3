"""Evaluating translators. On paired volumes: SynthRAD metrics in HU inside the body, beside the identity
baseline (the MRI through the translator's own MRI preset, rescaled into the training CTs' range; see
:func:`medgen.transforms.identity_baseline`). On real MRIs with no paired CT (:func:`evaluate_unpaired`): organ HU
against a real-CT population, anatomy kept through a frozen CT segmenter and realism (FID/KID of liver-level
slices on that segmenter's features, beside real CT against real CT), with the identity and histogram-matching
baselines, as the SynthRAD 2025 challenge complements its paired metrics; and a page with a QC picture per case."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric

from medgen.data.datalist import image_label_pairs
from medgen.evaluation.report import html_table, write_report
from medgen.evaluation.synthesis import DeepFeatures, kid
from medgen.inference.segment import RunSegmenter, load_segmenter, postprocess
from medgen.inference.translate import load_translator
from medgen.io import atomic_write, case_name, load_image, ref_from_affine
from medgen.metrics import evaluate_pairs, mean_rows, segmentation_metrics
from medgen.qcpage import organ_tile, picture_row, save_png
from medgen.runtime import resolve_device
from medgen.transforms import reorient
from medgen.validate import check_label_values, check_same_grid

AIR_HU = -1024.0
DISPLAY_HU = (-200.0, 300.0)  # the QC pictures' CT window


def evaluate_translation(run: str | Path, mri: str | Path, ct: str | Path, device: str = "auto",
                         out: str | Path | None = None) -> tuple[list[dict], dict[str, float], Path]:
    """``medgen evaluate translation``: per-case rows (translator and ``identity_`` baseline), their means
    and the CSV written (``out``.csv/.json, default ``RUN/translation_eval``). MRIs and CTs are paired
    entry by entry from one datalist JSON, else by case name."""
    translator = load_translator(run, "mri2ct", device)
    pairs = image_label_pairs(mri, ct, "mri", "ct")
    rows = evaluate_pairs(lambda image, ref: translator.translate(image, ref)[0], pairs, translator.identity)
    csv_path, _ = write_report(rows, out or Path(run) / "translation_eval")
    return rows, mean_rows(rows), csv_path


# Organs judged by HU, as (name, MRI label value, CT label value): CHAOS MRI labels and BTCV CT labels.
ORGANS = (("liver", 1, 6), ("spleen", 4, 1), ("right_kidney", 2, 2), ("left_kidney", 3, 3))


def organ_medians(hu: np.ndarray, labels: np.ndarray, values: dict[str, int]) -> dict[str, float]:
    """The median HU inside each organ (``name -> label value``); organs absent from ``labels`` are left out.

    >>> hu = np.array([[10.0, 20.0, 30.0], [100.0, 110.0, 120.0]]); lab = np.array([[1, 1, 1], [2, 2, 0]])
    >>> organ_medians(hu, lab, {"a": 1, "b": 2, "c": 3})
    {'a': 20.0, 'b': 105.0}
    """
    return {name: float(np.median(hu[labels == v])) for name, v in values.items() if np.any(labels == v)}


def interval_overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Overlap of two intervals as a fraction of their union (1: the same, 0: disjoint).

    >>> interval_overlap((0, 10), (5, 15)), interval_overlap((0, 1), (2, 3))
    (0.3333333333333333, 0.0)
    """
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a == b)


def labelled_image(image_path: Path, label_path: Path) -> tuple[np.ndarray, object, np.ndarray]:
    """``(image, ref, labels)``; labels that are not integer-valued or lie on another grid are a one-line error."""
    image, ref = load_image(image_path)
    labels, label_ref = load_image(label_path)
    check_same_grid(ref, label_ref)
    return image, ref, check_label_values(labels, label_path)


def ct_population(ct: str | Path, ct_labels: str | Path, slices: list | None = None) -> dict[str, dict]:
    """Per organ, the real CTs' median HU inside their labels: each CT's median, and their median and IQR.
    ``slices``: a list that receives each CT's liver slices (:func:`organ_slices`), for the realism figures."""
    per_ct = {name: [] for name, _, _ in ORGANS}
    for image_path, label_path in image_label_pairs(ct, ct_labels):
        hu, ref, labels = labelled_image(image_path, label_path)
        for name, value in organ_medians(hu, labels, {n: c for n, _, c in ORGANS}).items():
            per_ct[name].append(value)
        if slices is not None:
            slices.append(organ_slices(hu, labels == ORGANS[0][2], ref))
    return {name: {"median": float(np.median(v)), "iqr": [float(q) for q in np.percentile(v, (25, 75))], "n": len(v)}
            for name, v in per_ct.items() if v}


# Realism figures: axial slices through the liver, on one in-plane grid for every scan.
FEATURE_LEVELS, FEATURE_SPACING_MM, FEATURE_SIZE = 12, 2.0, 192


def organ_slices(hu: np.ndarray, organ: np.ndarray, ref, levels: int = FEATURE_LEVELS,
                 spacing: float = FEATURE_SPACING_MM, size: int = FEATURE_SIZE) -> torch.Tensor:
    """``(N, 1, size, size)`` axial slices in HU at ``levels`` heights spread over the organ mask (RAS, resampled
    in-plane to ``spacing`` mm, centred, NaN beyond the scan): the same anatomy on the same grid whatever the scan.

    >>> ref = ref_from_affine(np.diag([1.0, 1.0, 5.0, 1.0]), (64, 64, 10)); organ = np.zeros((64, 64, 10), bool)
    >>> organ[20:40, 20:40, 2:6] = True
    >>> organ_slices(np.zeros((64, 64, 10)), organ, ref, levels=3, size=40).shape
    torch.Size([3, 1, 40, 40])
    """
    hu, ornt = reorient(np.asarray(hu, np.float32), ref.affine, "RAS")
    organ = reorient(np.asarray(organ, bool), ref.affine, "RAS")[0]
    z = np.flatnonzero(organ.any((0, 1)))
    if not z.size:
        return torch.zeros((0, 1, size, size))
    ks = np.unique(np.linspace(z.min(), z.max(), levels).round().astype(int))
    vox = [ref.spacing[int(a)] for a, _ in ornt]
    x = torch.from_numpy(np.ascontiguousarray(hu[:, :, ks].transpose(2, 0, 1)))[:, None]
    x = F.interpolate(x, size=[max(1, round(n * v / spacing)) for n, v in zip(hu.shape[:2], vox[:2])],
                      mode="bilinear", align_corners=False)
    out = torch.full((len(ks), 1, size, size), float("nan"))
    src = [slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in x.shape[2:]]
    dst = [slice(max(0, (size - n) // 2), max(0, (size - n) // 2) + min(n, size)) for n in x.shape[2:]]
    out[:, :, dst[0], dst[1]] = x[:, :, src[0], src[1]]
    return out


def scanned_field(*sets: torch.Tensor, multiple: int = 16) -> int:
    """The side, in voxels and a multiple of ``multiple`` (the feature networks' stride), of the largest centred square
    scanned in every slice of ``sets`` (:func:`organ_slices`'s, NaN beyond the scan): one field of view for all.

    >>> a = torch.full((1, 1, 64, 64), float("nan")); a[..., 8:56, 10:54] = 0.0  # 48 x 44 voxels scanned
    >>> scanned_field(a, torch.zeros(2, 1, 64, 64)), scanned_field(torch.zeros(1, 1, 64, 64))
    (32, 64)
    """
    outside = torch.cat([s.isnan().flatten(0, 1) for s in sets]).any(0)
    c = outside.shape[-1] // 2
    i, j = torch.nonzero(outside, as_tuple=True)  # a square [c - h, c + h) holds voxel i once h >= max(c - i, i - c + 1)
    reach = torch.maximum(torch.maximum(c - i, i - c + 1), torch.maximum(c - j, j - c + 1))
    half = int(reach.min()) - 1 if len(reach) else c
    return 2 * half // multiple * multiple


def stored_range(real: torch.Tensor) -> tuple[float, float]:
    """The HU range that the real slices hold (NaN beyond the scan ignored; the floor at most air's): every set is
    judged in it, and the field beyond each scan is its floor. A CT stored clipped (BTCV: [-125, 275]) shows nothing
    below its floor, so a value below it (a synthetic CT's air, a fill of -1024 beyond the scan) tells only the
    storage and each scanner's field of view apart, not the tissue.

    >>> stored_range(torch.tensor([[float("nan"), -125.0], [40.0, 275.0]])), stored_range(torch.tensor([-3024.0, 9.0]))
    ((-125.0, 275.0), (-1024.0, 9.0))
    """
    v = real[~real.isnan()]
    return max(float(v.min()), AIR_HU), float(v.max())


def realism(features: DeepFeatures, fakes: dict[str, torch.Tensor], real: torch.Tensor, side: int | None = None,
            groups: dict[str, np.ndarray] | None = None, draws: int = 0, seed: int = 0) -> dict[str, dict]:
    """Per slice set of ``fakes``, FID (MONAI) and KID against ``real`` on the segmenter's deepest features, every set
    in the range the real slices hold (:func:`stored_range`: BTCV's [-125, 275]; beyond the scan, its floor): on the
    whole slices, and with ``side`` (``fid_fov``, ``kid_fov``) on their centred ``side`` x
    ``side`` squares, where every scan was scanned: a scanner's field of view, which no translator changes, out of the
    comparison. The real slices' features are computed once for all the sets. ``fid_mean`` is FID's mean term, and
    ``spread`` how much the set's features vary against the real slices' (traces of the covariances).

    With ``groups`` (each slice's case, per set name and under ``"real"`` for ``real``), ``spread_between``: the part of
    the spread in which the cases' mean features differ (the rest lies between the slices of one case); with ``draws``
    > 0 too, the FIDs' uncertainty over the cases (:func:`bootstrap_fid`): ``fid_ci`` (``fid_fov_ci``), a 95 % interval, and
    ``fid_delta_ci`` (``fid_fov_delta_ci``), per other set resampled with it, the interval of FID(set) - FID(other)."""
    lo, hi = stored_range(real)

    def views(x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, c, h = torch.nan_to_num(x, nan=lo).clamp(lo, hi), x.shape[-1] // 2, (side or 0) // 2
        return {"": x, **({"_fov": x[..., c - h:c + h, c - h:c + h]} if side else {})}

    def scores(f: torch.Tensor, r: torch.Tensor) -> tuple[float, float, float, float]:
        """FID, KID, FID's mean term (the squared distance of the mean features) and the spread (the trace of the
        features' covariance over the real slices'): FID minus its mean term is the covariance term."""
        return (float(FIDMetric()(f, r)), kid(f, r), float(((f.mean(0) - r.mean(0)) ** 2).sum()),
                float(f.double().var(0).sum() / r.double().var(0).sum()))

    reference = {key: features(x) for key, x in views(real).items()}
    feats = {name: {key: features(x) for key, x in views(fake).items()} for name, fake in fakes.items()}
    out = {name: {f"{what}{key}": v for key, f in by_view.items()
                  for what, v in zip(("fid", "kid", "fid_mean", "spread"), scores(f, reference[key]))}
           for name, by_view in feats.items()}
    for name, key in ((n, k) for n in (*feats, "real") for k in reference if groups and n in groups):
        f = reference[key] if name == "real" else feats[name][key]
        out.setdefault(name, {})[f"spread_between{key}"] = between_cases(f, groups[name], reference[key])
    if groups and draws > 0:
        for key in reference:
            intervals = bootstrap_fid({n: f[key] for n, f in feats.items()}, reference[key], groups, draws, seed)
            for name, (ci, delta) in intervals.items():
                out[name].update({f"fid{key}_ci": ci, f"fid{key}_delta_ci": delta})
    return out


def between_cases(f: torch.Tensor, cases: np.ndarray, reference: torch.Tensor) -> float:
    """How much the cases' mean features (``f``'s rows, each slice's case in ``cases``) vary about the set's mean, per
    slice, over the total variance of ``reference``'s features: the between-case part of :func:`realism`'s spread.

    >>> between_cases(torch.tensor([[0.0], [0.0], [2.0], [2.0]]), np.array([0, 0, 1, 1]), torch.tensor([[0.0], [2.0]]))
    1.0
    """
    f, total = f.double(), float(reference.double().var(0, unbiased=False).sum())
    means = torch.stack([f[torch.from_numpy(cases == c)].mean(0) for c in np.unique(cases)])
    counts = torch.tensor([(cases == c).sum() for c in np.unique(cases)], dtype=torch.float64)
    return float((counts[:, None] * (means - f.mean(0)) ** 2).sum() / len(f) / total)


def case_resample(cases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The slice indices of a bootstrap resample of the cases (each slice's case in ``cases``), drawn with replacement.

    >>> case_resample(np.array([7, 7, 7]), np.random.default_rng(0)).tolist()  # one case: drawn whole
    [0, 1, 2]
    >>> sorted(len(case_resample(np.array([0, 0, 1]), np.random.default_rng(s))) for s in range(20))[::19]  # 1+1 .. 2+2
    [2, 4]
    """
    ids = np.unique(cases)
    return np.concatenate([np.flatnonzero(cases == c) for c in rng.choice(ids, len(ids))])


def bootstrap_fid(feats: dict[str, torch.Tensor], reference: torch.Tensor, groups: dict[str, np.ndarray],
                  draws: int, seed: int = 0) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
    """Per set of ``feats`` (features per slice), the 2.5 and 97.5 percentiles of its FID against ``reference`` over
    ``draws`` resamples of the cases (:func:`case_resample`; the reference's cases, ``groups["real"]``, resampled in
    each draw too), and of FID(set) - FID(other) for each other set with the same cases (the methods on the same
    MRIs: resampled together, a paired comparison)."""
    rng = np.random.default_rng(seed)
    same = {n: [m for m in feats if m != n and np.array_equal(groups[m], groups[n])] for n in feats}
    fids = {n: [] for n in feats}
    for _ in range(draws):
        ref = reference[case_resample(groups["real"], rng)]
        picks: dict[bytes, np.ndarray] = {}  # one resample per grouping: sets on the same cases share it
        for name, f in feats.items():
            pick = picks.setdefault(groups[name].tobytes(), case_resample(groups[name], rng))
            fids[name].append(float(FIDMetric()(f[pick], ref)))
    pct = lambda v: [float(q) for q in np.percentile(v, (2.5, 97.5))]  # noqa: E731
    return {n: (pct(fids[n]), {m: pct(np.subtract(fids[n], fids[m])) for m in same[n]}) for n in feats}


def histogram_matched(mri: np.ndarray, reference_ct: np.ndarray) -> np.ndarray:
    """The MRI's intensity histogram matched to a CT's (SimpleITK, 256 levels, 15 match points): a baseline."""
    import SimpleITK as sitk

    matched = sitk.HistogramMatching(sitk.GetImageFromArray(mri.astype(np.float32)),
                                     sitk.GetImageFromArray(reference_ct.astype(np.float32)), 256, 15, True)
    return sitk.GetArrayFromImage(matched)


def evaluate_unpaired(run: str | Path, mri: str | Path, mri_labels: str | Path, ct: str | Path,
                      ct_labels: str | Path, segmenter: str = "ct-liver", device: str = "auto",
                      out: str | Path | None = None, features: list[str] | None = None, bootstrap: int = 0) -> dict:
    """``medgen evaluate translation --unpaired``: a translator judged on real MRIs with no paired CT, beside the
    identity and histogram-matching baselines in the same run.

    - organ HU: the median synthetic-CT HU inside each organ of the MRI's manual labels (liver, spleen, kidneys)
      against the real CTs' (:func:`ct_population`): |difference of medians| and the overlap of the IQRs;
    - anatomy kept: ``segmenter`` (a CT segmenter, frozen) on the synthetic CT, liver Dice against the MRI's label;
    - realism (``segmenter`` a medgen run or shipped model, or ``features`` given): FID and KID of liver-level slices
      against the even-numbered real CTs' on the deepest features of each of ``features`` (default: the segmenter),
      beside the odd-numbered real CTs' (real vs real), under ``by_features``; ``fid`` and ``kid``: the first's. A
      translator trained through the segmenter shapes that segmenter's features: judge it with another one too.
      With ``bootstrap`` > 0, 95 % intervals of the FIDs over that many resamples of the MRIs and real CTs
      (:func:`bootstrap_fid`), and of each FID's difference to the other methods' on the same MRIs.

    Writes ``OUT`` (.json), ``OUT.html`` and per case ``OUT_qc/CASE.png``: MRI | synthetic CT | a real CT at the
    same relative level of the liver (upper and lower), the organs outlined.
    """
    translator = load_translator(run, "mri2ct", device)
    seg = load_segmenter(segmenter, device)
    judges = list(features or ([segmenter] if isinstance(seg, RunSegmenter) else []))
    nets = {name: DeepFeatures(name, resolve_device(device)) for name in dict.fromkeys(judges)}
    ct_slices: list[torch.Tensor] = []
    population = ct_population(ct, ct_labels, ct_slices if nets else None)
    reference, reference_ref, reference_labels = labelled_image(*image_label_pairs(ct, ct_labels)[0])
    methods = {"translator": lambda a, r: translator.translate(a, r)[0], "identity": lambda a, r: translator.identity(a),
               "histmatch": lambda a, r: histogram_matched(a, reference)}
    path = Path(out) if out else Path(run) / "translation_unpaired.json"
    qc_dir = path.with_name(path.stem + "_qc")
    rows, fake_slices = [], {m: [] for m in methods}
    # every MRI and label read and checked before anything is written (the MRIs are small: kept in memory)
    cases = [(image_path, *labelled_image(image_path, label_path))
             for image_path, label_path in image_label_pairs(mri, mri_labels)]
    for image_path, image, ref, labels in cases:
        for method, make in methods.items():
            hu = make(image, ref)
            mask = postprocess(seg.predict(np.asarray(hu, np.float32), ref), seg.postprocess) > 0
            rows.append({"case": case_name(image_path), "method": method,
                         "dice": segmentation_metrics(mask, labels == ORGANS[0][1], ref.spacing, False)["dice"],
                         **{f"hu_{k}": v for k, v in organ_medians(hu, labels, {n: m for n, m, _ in ORGANS}).items()}})
            if nets:
                fake_slices[method].append(organ_slices(hu, labels == ORGANS[0][1], ref))
            if method == "translator":
                save_png(qc_picture(image, hu, ref, labels, reference, reference_ref, reference_labels),
                         qc_dir / f"{case_name(image_path)}.png")
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        organs = {}
        for name, stats in population.items():
            values = [r[f"hu_{name}"] for r in mine if f"hu_{name}" in r]
            if values:
                iqr = tuple(np.percentile(values, (25, 75)))
                organs[name] = {"median": float(np.median(values)), "abs_diff": abs(float(np.median(values)) - stats["median"]),
                                "iqr": [float(q) for q in iqr], "iqr_overlap": interval_overlap(iqr, tuple(stats["iqr"]))}
        summary[method] = {"dice": float(np.mean([r["dice"] for r in mine])), "organs": organs}
    if nets:
        reals = torch.cat(ct_slices[0::2]), torch.cat(ct_slices[1::2])
        sets = {**{m: torch.cat(fake_slices[m]) for m in methods}, "real_vs_real": reals[1]}
        case_of = lambda parts: np.repeat(np.arange(len(parts)), [len(p) for p in parts])  # noqa: E731
        groups = {**{m: case_of(fake_slices[m]) for m in methods}, "real_vs_real": case_of(ct_slices[1::2]),
                  "real": case_of(ct_slices[0::2])}
        side = scanned_field(reals[0], *sets.values())
        scores = {name: realism(net, sets, reals[0], side, groups, bootstrap) for name, net in nets.items()}
        for method in sets:
            mine = {name: by_set[method] for name, by_set in scores.items()}
            summary.setdefault(method, {}).update(**mine[judges[0]], by_features=mine)
    report = {"translator": str(run), "segmenter": segmenter, "ct_population": population, "summary": summary,
              "realism": {"slices": f"{FEATURE_LEVELS} axial levels over the liver, {FEATURE_SPACING_MM} mm in-plane, "
                                    f"{FEATURE_SIZE}^2; features: the deepest layer of {', '.join(nets)} (fid, kid: "
                                    f"{judges[0]}'s); reference: the even-numbered real CTs, real_vs_real: the "
                                    f"odd-numbered ones; fid_fov, kid_fov: the centred {side * FEATURE_SPACING_MM:.0f} "
                                    "mm square scanned in every slice (the whole slices' figures see each scan's field "
                                    "of view); fid_ci, fid_delta_ci: 95 % intervals over resamples of the MRIs and "
                                    "real CTs; every set in the reference's stored HU range (range), beyond the scan "
                                    "its floor", "fov_mm": side * FEATURE_SPACING_MM, "bootstrap": bootstrap,
                          "range": list(stored_range(reals[0]))}
              if nets else None,
              "cases": rows}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    write_unpaired_html(report, path.with_suffix(".html"), qc_dir)
    return report


def qc_picture(mri: np.ndarray, sct: np.ndarray, ref, labels: np.ndarray, ct: np.ndarray, ct_ref,
               ct_labels: np.ndarray) -> np.ndarray:
    """MRI | synthetic CT | real CT, at the liver's upper (70 %) and lower (20 %) levels, organs outlined."""
    mri_values, ct_values = [m for _, m, _ in ORGANS], [c for _, _, c in ORGANS]
    rows = [picture_row([organ_tile(mri, labels, ref, mri_values, level),
                         organ_tile(sct, labels, ref, mri_values, level, DISPLAY_HU),
                         organ_tile(ct, ct_labels, ct_ref, ct_values, level, DISPLAY_HU)]) for level in (0.7, 0.2)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows)


def write_unpaired_html(report: dict, path: Path, qc_dir: Path) -> Path:
    """The unpaired evaluation as a page: the summary per method, the real-CT population, the QC pictures."""
    table = []
    for method, r in report["summary"].items():
        row = {"method": method, "ct segmenter liver Dice": r.get("dice", "")}
        for name, v in r.get("by_features", {}).items():
            row.update({f"FID ({name})": v["fid"], f"KID ({name})": v["kid"]})
            if "fid_fov" in v:
                row.update({f"FID, common field of view ({name})": v["fid_fov"]})
            for key, label in (("fid_ci", "FID"), ("fid_fov_ci", "FID, common field of view")):
                if key in v:
                    row[f"{label}, 95 % interval ({name})"] = "{:.2f} to {:.2f}".format(*v[key])
        for name, _, _ in ORGANS:
            o = r.get("organs", {}).get(name)
            row[f"{name} median HU (|diff|)"] = f"{o['median']:.0f} ({o['abs_diff']:.0f})" if o else ""
        table.append(row)
    pop = [{"organ": k, "real CT median HU": v["median"], "IQR": f"{v['iqr'][0]:.0f} to {v['iqr'][1]:.0f}", "CTs": v["n"]}
           for k, v in report["ct_population"].items()]
    pictures = "".join(f"<h3>{html.escape(p.stem)}</h3><img src='{html.escape(os.path.relpath(p, path.parent))}'>"
                       for p in sorted(qc_dir.glob("*.png")))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medgen: translation without pairs</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Translator {html.escape(report['translator'])} on real MRIs, no paired CT</h1>
<p>Frozen CT segmenter: {html.escape(str(report['segmenter']))}. Realism: {html.escape(str(report.get('realism') or 'not computed (the segmenter is not a medgen run)'))}.</p>
{html_table(table)}<h2>Real CTs</h2>{html_table(pop)}
<h2>Cases: MRI | synthetic CT | real CT at the same liver level</h2>
<p>Outlines: green liver, red spleen, blue right kidney, yellow left kidney.</p>{pictures}</body></html>
"""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page))
