"""Writing a training run as a shipped model (``medgen/models/weights/<name>/``): what
``benchmarks/shipped_models.py`` runs. Kept apart from :mod:`medgen.models.shipped`, which the CLI imports
without torch."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from medgen.config import save_config
from medgen.errors import MedgenError
from medgen.io import atomic_write
from medgen.models.run import CONFIG_FILE, EMA_SUFFIX, latest_checkpoint, load_checkpoint, load_run
from medgen.models.shipped import CARD_FILE, WEIGHTS_DIR, sha256


def export_run(run: Path, name: str, **card: object) -> Path:
    """Write training run ``run`` as shipped model ``name``: its config (data paths blanked), the weights
    inference uses (the weight average when the run keeps one, as plain ``net`` weights) and a card holding
    ``card``'s entries, the architecture, the input grid and the weights' sha256. Figures already in an earlier
    card of the same name are kept while the weights are the same."""
    cfg = load_run(run, "segmenter")
    last = latest_checkpoint(run)
    if last is None:
        raise MedgenError(run, "run has no checkpoint yet (train it first)")
    state = load_checkpoint(last)
    if cfg.network.ema_decay > 0:
        average = state[f"net{EMA_SUFFIX}"]
        weights = {k.removeprefix("module."): v for k, v in average.items() if k.startswith("module.")}
    else:
        weights = state["net"]
    cfg.network.ema_decay = 0.0  # the average is now the weights
    cfg.data.images, cfg.data.labels = "", ""
    cfg.augment.synthetic.source = None
    cfg.train.init = None
    out = WEIGHTS_DIR / name
    old = json.loads((out / CARD_FILE).read_text()) if (out / CARD_FILE).is_file() else {}
    for stale in (out / "checkpoints").glob("*.pt") if (out / "checkpoints").is_dir() else ():
        stale.unlink()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    file = f"checkpoints/{last.name}"
    buffer = io.BytesIO()  # saved through a buffer: torch names the archive after a file, and the temporary name
    torch.save({"net": {k: v.float().contiguous() for k, v in weights.items()}}, buffer)  # would change the sha256
    atomic_write(out / file, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    save_config(cfg, out / CONFIG_FILE)
    params = sum(v.numel() for k, v in weights.items() if v.is_floating_point())
    digest = sha256(out / file)
    slices = cfg.network.slices
    kind = f"{cfg.spatial_dims}D" if slices == 1 else f"2.5D ({slices} axial slices as input channels)"
    entry = {
        "name": name, **card,
        "architecture": (f"{kind} MONAI UNet, channels {cfg.network.channels}, "
                         f"{cfg.network.num_res_units} residual units, {params / 1e6:.2f} M parameters"),
        "input": {"orientation": cfg.preprocess.orientation, "spacing_mm": cfg.preprocess.spacing,
                  "modality_presets": {"ct": f"window {cfg.preprocess.ct_window} HU",
                                       "mri": f"percentiles {cfg.preprocess.mri_percentiles}"
                                              + (", N4 bias correction" if cfg.preprocess.mri_bias_correction else "")}},
        # the figures of the same weights are kept; new weights have none until they are measured again
        "figures": old.get("figures", {}) if old.get("weights", {}).get("sha256") == digest else {},
        "weights": {"file": file, "sha256": digest, "bytes": (out / file).stat().st_size,
                    "iterations": cfg.train.iterations},
    }
    text = json.dumps(entry, indent=2) + "\n"
    atomic_write(out / CARD_FILE, lambda tmp: Path(tmp).write_text(text))
    print(f"[shipped] {name}: {out} ({entry['weights']['bytes'] / 1e6:.1f} MB, sha256 {entry['weights']['sha256'][:12]})")
    return out
