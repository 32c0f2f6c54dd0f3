"""CT liver segmenters behind one interface, :class:`Segmenter`, with a registry of backends.

Backends, tried in the order of :data:`SEGMENTERS` by :func:`load_segmenter` on the SEG argument:

- ``totalsegmentator``: TotalSegmentator's liver ROI, when that package and its weights are installed;
- a medgen run directory (``config.yaml`` of a ``segmenter`` run);
- a MONAI bundle directory (``configs/inference.json`` or ``.yaml`` and ``models/model.pt``);
- a TorchScript file (``model.pt``/``.ts``) with a sidecar ``model.json``/``model.yaml`` describing its
  preprocessing (see :class:`TorchScriptSegmenter`).

A backend is a class with ``accepts(spec) -> bool`` (a classmethod), a constructor
``(spec, device, liver_index)`` (``liver_index`` None: the backend's own, e.g. the sidecar's) and the
:class:`Segmenter` members; adding one is that class and one line in :data:`SEGMENTERS`.

Every backend returns float32 probabilities on the input's exact grid; :func:`postprocess` turns them
into a mask (threshold, largest component, holes filled) with the backend's :class:`PostprocessConfig`
(the defaults, or a run's own ``postprocess`` section).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from scipy import ndimage

from medgen.data.datalist import input_output_pairs
from medgen.data.synthseg import body_mask
from medgen.dicomseg import save_mask
from medgen.errors import MedgenError, each_case, short
from medgen.inference.volume import infer_volume
from medgen.io import ImageRef, case_name, load_image, save_like
from medgen.keys import Modality
from medgen.models.run import CONFIG_FILE, load_averages, load_checkpoint, load_run, load_weights
from medgen.models.segmenter import PostprocessConfig, build_network, input_multiple, n_classes, weights_name
from medgen.models.shipped import resolve_model
from medgen.qcpage import case_picture, save_png, write_index
from medgen.runtime import resolve_device
from medgen.transforms import Preprocessor, largest_component


# MONAI's image readers (a bundle's LoadImaged) warn on every CPU machine that the GPU DICOM decoder is missing: noise
# on stderr, where a refusal must be one line
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")


class Segmenter(Protocol):
    """A CT liver segmenter: probabilities on the input's grid, and how to turn them into a mask."""

    postprocess: PostprocessConfig

    def predict(self, array: np.ndarray, ref: ImageRef) -> np.ndarray:
        """Liver probability (float32) on ``ref``'s exact grid."""


def postprocess(prob: np.ndarray, options: PostprocessConfig | None = None) -> np.ndarray:
    """Probability -> uint8 mask: threshold, keep the largest 3D component, fill holes (as ``options`` say;
    default :class:`PostprocessConfig`).

    >>> p = np.zeros((8, 8, 8)); p[1:5, 1:5, 1:5] = 0.9; p[2, 2, 2] = 0.1; p[7, 7, 7] = 0.9
    >>> m = postprocess(p); int(m.sum()), int(m[2, 2, 2]), int(m[7, 7, 7])
    (64, 1, 0)
    >>> int(postprocess(p, PostprocessConfig(largest_component=False, fill_holes=False)).sum())
    64
    """
    opts = options or PostprocessConfig()
    mask = np.asarray(prob) > opts.threshold
    if opts.largest_component:
        mask = largest_component(mask)
    if opts.fill_holes and mask.any():
        mask = ndimage.binary_fill_holes(mask)
        for z in range(mask.shape[-1]):
            mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    return mask.astype(np.uint8)


def thresholded(options: PostprocessConfig) -> PostprocessConfig:
    """``options`` with only the threshold: the mask before component and hole clean-up."""
    return dataclasses.replace(options, largest_component=False, fill_holes=False)


def segment_array(net: torch.nn.Module, cfg, array: np.ndarray, ref: ImageRef, device: torch.device,
                  modality: str | None = None) -> np.ndarray:
    """Softmax probabilities ``(C, *ref.shape)`` of a medgen segmenter run's network on one volume, through the
    intensity preset of ``modality`` (default: the run's training modality, ``data.modality``)."""
    pre = Preprocessor.from_config(Modality(modality or cfg.data.modality), cfg.preprocess)
    x, geom = pre.forward(array, ref)
    inf = cfg.inference
    prob = None
    for gamma in [1.0, *inf.tta_gammas]:  # test-time contrast augmentation (inference.tta_gammas), averaged
        xg = x if gamma == 1.0 else ((x.clamp(-1, 1) + 1) / 2) ** gamma * 2 - 1
        p = torch.softmax(infer_volume(net, xg, cfg.spatial_dims, device, inf.amp, inf.batch_size, inf.roi_size,
                                       inf.overlap, input_multiple(cfg), slices=cfg.network.slices), 0)
        prob = p if prob is None else prob + p
    return pre.restore(prob / (1 + len(inf.tta_gammas)), geom).astype(np.float32)


class RunSegmenter:
    """A ``medgen train`` segmenter run directory (its config, latest checkpoint, preprocessing and
    post-processing); ``liver_index``: the class whose probability :meth:`predict` returns (default 1);
    ``modality``: the intensity preset of the inputs (default: the run's training modality; ``mri`` for a
    contrast-agnostic segmenter applied to MRIs)."""

    @classmethod
    def accepts(cls, spec: str | Path) -> bool:
        return Path(spec).is_dir() and (Path(spec) / CONFIG_FILE).is_file()

    def __init__(self, run_dir: str | Path, device: str = "auto", liver_index: int | None = None,
                 modality: str | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = load_run(self.run_dir, "segmenter")
        self.modality = modality
        self.device = resolve_device(device)
        self.net = build_network(self.cfg).to(self.device)
        if weights_name(self.cfg) == "net":
            load_weights(self.run_dir, ["net"], [self.net])
        else:  # the weight average
            _, (self.net,) = load_averages(self.run_dir, [weights_name(self.cfg)], [self.net])
        self.liver_index = 1 if liver_index is None else liver_index
        classes = n_classes(self.cfg)
        if not 0 <= self.liver_index < classes:
            raise MedgenError(self.run_dir, f"liver_index {self.liver_index} is not a class of this segmenter "
                                            f"(0-{classes - 1})")
        self.postprocess = self.cfg.postprocess

    def predict(self, array: np.ndarray, ref: ImageRef) -> np.ndarray:
        prob = segment_array(self.net, self.cfg, array, ref, self.device, self.modality)[self.liver_index]
        return prob * body_mask(array) if self.postprocess.inside_body else prob


class TorchScriptSegmenter:
    """A TorchScript segmentation network plus a sidecar (JSON or YAML, same stem) like::

        spatial_dims: 3                 # 2: slice-wise along the axial axis; 3: sliding window
        orientation: RAS                # axis code the network expects
        spacing: [1.5, 1.5, 1.5]        # mm (null entries keep the volume's own)
        window: [-175, 250]             # CT HU window ...
        range: [0.0, 1.0]               # ... mapped linearly to this range (clipped)
        output: softmax                 # softmax | sigmoid | probabilities
        liver_index: 1                  # output channel of the liver (``--liver-index`` overrides it)
        roi_size: [96, 96, 96]          # sliding-window size (3D)
        overlap: 0.5
        batch_size: 4
        multiple: 16                    # inputs are padded to a multiple of this
    """

    DEFAULTS = {"spatial_dims": 3, "orientation": "RAS", "spacing": None, "window": [-1024, 2048],
                "range": [-1.0, 1.0], "output": "softmax", "liver_index": 1, "roi_size": [96, 96, 96],
                "overlap": 0.5, "batch_size": 4, "multiple": 16}

    @classmethod
    def accepts(cls, spec: str | Path) -> bool:
        return Path(spec).is_file()

    def __init__(self, path: str | Path, device: str = "auto", liver_index: int | None = None):
        self.path = Path(path)
        sidecar = next((self.path.with_suffix(s) for s in (".json", ".yaml", ".yml") if self.path.with_suffix(s).is_file()), None)
        if sidecar is None:
            raise MedgenError(self.path, "TorchScript segmenter needs a sidecar file with the same name and .json/.yaml")
        try:
            meta = yaml.safe_load(sidecar.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MedgenError(sidecar, f"unreadable sidecar ({short(exc, 100)})") from None
        self.meta = {**self.DEFAULTS, **meta, **({} if liver_index is None else {"liver_index": liver_index})}
        self.device = resolve_device(device)
        try:
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
            raise MedgenError(self.path, f"not a TorchScript model ({short(exc, 100)})") from None
        self.postprocess = PostprocessConfig()

    def predict(self, array: np.ndarray, ref: ImageRef) -> np.ndarray:
        m = self.meta
        pre = Preprocessor(Modality.CT, m["orientation"], m["spacing"], m["window"])
        x, geom = pre.forward(array, ref)
        lo, hi = m["range"]
        x = (x + 1) / 2 * (hi - lo) + lo
        out = infer_volume(self.net, x, m["spatial_dims"], self.device, "none", m["batch_size"], m["roi_size"],
                           m["overlap"], m["multiple"], pad_value=lo)
        prob = _activate(out, m["output"])[m["liver_index"] if out.shape[0] > 1 else 0]
        return pre.restore(prob, geom).astype(np.float32)


def _activate(out: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "softmax":
        return torch.softmax(out, 0) if out.shape[0] > 1 else torch.sigmoid(out)
    if kind == "sigmoid":
        return torch.sigmoid(out)
    if kind == "probabilities":
        return out
    raise MedgenError(None, f"unknown output activation {kind!r} (softmax | sigmoid | probabilities)")


TRUST_BUNDLE_ENV = "MEDGEN_TRUST_BUNDLE"  # "1": evaluate a bundle's $-expressions (set by --trust-bundle)


def _expressions(node) -> list[str]:
    """The ``$``-expressions (Python that MONAI's ConfigParser evaluates) anywhere in a bundle config."""
    if isinstance(node, str):
        return [node] if node.startswith("$") else []
    if isinstance(node, dict):
        return [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return []


class BundleSegmenter:
    """A MONAI bundle: its ``network_def``, ``preprocessing`` and ``inferer`` from ``configs/inference.*``,
    weights from ``models/model.pt``. The prediction is resampled from the bundle's preprocessed grid
    back onto the input grid through the two affines, so any bundle preprocessing is undone.
    ``liver_index``: the output channel of the liver (default 1).
    """

    @classmethod
    def accepts(cls, spec: str | Path) -> bool:
        return Path(spec).is_dir()

    def __init__(self, bundle: str | Path, device: str = "auto", liver_index: int | None = None):
        from monai.bundle import ConfigParser  # imports MONAI's bundle machinery: only for bundles

        self.root = Path(bundle)
        config = next((self.root / "configs" / f"inference.{s}" for s in ("json", "yaml", "yml")
                       if (self.root / "configs" / f"inference.{s}").is_file()), None)
        weights = self.root / "models" / "model.pt"
        if config is None or not weights.is_file():
            raise MedgenError(self.root, "not a MONAI bundle (needs configs/inference.json|yaml and models/model.pt)")
        parser = ConfigParser()
        try:
            parser.read_config(str(config))
        except Exception as exc:  # broken JSON/YAML
            raise MedgenError(config, f"unreadable bundle config ({short(exc, 120)})") from None
        code = _expressions(parser.get())
        if code and os.environ.get(TRUST_BUNDLE_ENV) != "1":
            raise MedgenError(config, f"the bundle config holds Python expressions ({short(code[0], 60)}), which MONAI "
                                      "runs at load: pass --trust-bundle if you trust this bundle")
        parser["bundle_root"] = str(self.root)
        self.device = resolve_device(device)
        try:
            self.net = parser.get_parsed_content("network_def").to(self.device).eval()
            self.preprocessing = parser.get_parsed_content("preprocessing")
            self.inferer = parser.get_parsed_content("inferer")
        except Exception as exc:  # MONAI raises many types for bad configs
            raise MedgenError(config, f"bundle config could not be instantiated ({short(exc, 120)})") from None
        state = load_checkpoint(weights, self.device)
        try:
            self.net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise MedgenError(weights, f"weights do not fit the bundle's network_def ({short(exc, 100)})") from None
        self.liver_index = 1 if liver_index is None else liver_index
        self.postprocess = PostprocessConfig()

    def predict(self, array: np.ndarray, ref: ImageRef) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_like(array.astype(np.float32), ref, Path(tmp) / "input.nii.gz")
            data = self.preprocessing({"image": str(path)})
        image = data["image"]
        with torch.inference_mode():
            out = self.inferer(image[None].to(self.device), self.net)[0].float().cpu()
        prob = _activate(out, "softmax")
        prob = prob[self.liver_index if prob.shape[0] > 1 else 0][None]
        src = MetaTensor(prob, affine=torch.as_tensor(image.affine, dtype=torch.float64))
        back = SpatialResample(mode="bilinear", padding_mode="zeros")(
            src, dst_affine=torch.as_tensor(ref.affine, dtype=torch.float64), spatial_size=ref.shape)
        return np.asarray(back[0], dtype=np.float32)


class TotalSegmentatorSegmenter:
    """TotalSegmentator's ``liver`` (``task="total"``, ``roi_subset``) when the package and its weights are
    installed. The weights must already be in TotalSegmentator's weights folder (``TOTALSEG_WEIGHTS_PATH``
    or ``~/.totalsegmentator/nnunet/results``): medgen refuses to let it download them at run time."""

    TASK_IDS = (291, 292, 293, 294, 295)  # the "total" task's five sub-models (liver is in 291)

    @classmethod
    def accepts(cls, spec: str | Path) -> bool:
        return str(spec).lower() == "totalsegmentator"

    def __init__(self, spec: str = "totalsegmentator", device: str = "auto", liver_index: int | None = None):
        try:  # an optional dependency
            from totalsegmentator.config import get_weights_dir
            from totalsegmentator.python_api import totalsegmentator  # noqa: F401
        except ImportError:
            raise MedgenError("totalsegmentator", "TotalSegmentator is not installed: pip install TotalSegmentator "
                              "and download its weights first (medgen never downloads at run time)") from None
        weights = Path(get_weights_dir())
        missing = [t for t in self.TASK_IDS if not any(weights.glob(f"Dataset{t}_*"))]
        if missing:
            raise MedgenError(weights, f"TotalSegmentator weights missing (Dataset{missing[0]}_* and "
                              f"{len(missing) - 1} more): run 'totalseg_download_weights -t total' first "
                              "(medgen never downloads at run time)")
        self.device = "gpu" if resolve_device(device).type == "cuda" else "cpu"
        self.postprocess = PostprocessConfig()

    def predict(self, array: np.ndarray, ref: ImageRef) -> np.ndarray:
        from totalsegmentator.python_api import totalsegmentator  # an optional dependency

        with tempfile.TemporaryDirectory() as tmp:
            path = save_like(array.astype(np.float32), ref, Path(tmp) / "ct.nii.gz")
            try:
                totalsegmentator(str(path), str(Path(tmp) / "seg"), roi_subset=["liver"], device=self.device, quiet=True)
                liver = load_image(Path(tmp) / "seg" / "liver.nii.gz")[0]
            except Exception as exc:
                raise MedgenError(ref.path, f"TotalSegmentator failed ({short(exc, 120)})") from None
        if liver.shape != array.shape:
            raise MedgenError(ref.path, f"TotalSegmentator returned a {liver.shape} mask for a {array.shape} image")
        return (liver > 0).astype(np.float32)


# backend name -> class, tried in this order by load_segmenter
SEGMENTERS: dict[str, type] = {
    "totalsegmentator": TotalSegmentatorSegmenter,
    "run": RunSegmenter,
    "bundle": BundleSegmenter,
    "torchscript": TorchScriptSegmenter,
}


def load_segmenter(spec: str | Path, device: str = "auto", liver_index: int | None = None,
                   modality: str | None = None) -> Segmenter:
    """The first backend of :data:`SEGMENTERS` that accepts SEG: ``totalsegmentator``, a run directory,
    a MONAI bundle or a TorchScript file. ``liver_index`` None keeps the backend's own; ``modality`` (a
    medgen run only) picks the input intensity preset, None the run's own. A shipped model's name (``ct-liver``,
    ``mri-liver``) loads that model, its weights checked against their card."""
    spec = resolve_model(spec)
    for backend in SEGMENTERS.values():
        if backend.accepts(spec):
            if modality is not None and backend is not RunSegmenter:
                raise MedgenError(spec, "--modality applies to medgen segmenter runs only (this is a CT model "
                                        "with its own preprocessing)")
            return backend(spec, device, liver_index, modality) if modality else backend(spec, device, liver_index)
    raise MedgenError(spec, "no such segmenter (a run directory, TorchScript file, MONAI bundle or 'totalsegmentator')")


def segment_file(seg, src: Path, dst: Path, overwrite: bool = False, output_format: str = "auto",
                 name: str = "medgen") -> tuple[np.ndarray, ImageRef, np.ndarray, Path]:
    """One volume through a loaded segmenter (:func:`load_segmenter`) into a mask file, post-processed with the
    segmenter's settings; returns ``(image, its ref, mask, the mask file written)``."""
    array, ref = load_image(src)
    mask = postprocess(seg.predict(array, ref), seg.postprocess)
    return array, ref, mask, save_mask(mask, ref, dst, overwrite, output_format, name)[0]


def segment_files(segmenter: str | Path, inputs: str | Path, output: str | Path, device: str = "auto",
                  liver_index: int | None = None, overwrite: bool = False,
                  modality: str | None = None, output_format: str = "auto") -> tuple[list[Path], int]:
    """``medgen segment``: a file -> mask file, or a folder -> a folder of masks (uint8, input header; a bad
    file is reported on its line and skipped, :func:`medgen.errors.each_case`); ``modality`` as in
    :func:`load_segmenter`. Returns the written masks and the number of failed inputs."""
    seg = load_segmenter(segmenter, device, liver_index, modality)
    single, pairs = input_output_pairs(inputs, output)
    rows = []

    def one(src: Path, dst: Path) -> Path:
        array, ref, mask, written = segment_file(seg, src, dst, overwrite, output_format, Path(str(segmenter)).name)
        if not single:  # a folder run: its QC page
            save_png(case_picture(array, mask, ref), Path(output) / "qc" / f"{case_name(src)}.png")
            rows.append({"case": case_name(src), "status": "ok", "flags": "", "mask": str(dst), "image": str(src),
                         "liver_ml": round(float(mask.sum()) * float(np.prod(ref.spacing)) / 1000.0, 1)})
        return written

    done, failed = each_case(pairs, single, one)
    if rows:
        write_index(output, rows, f"medgen segment ({Path(str(segmenter)).name})")
    return done, failed
