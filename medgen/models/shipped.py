"""The ready-made models that ship inside the package: ``ct-liver`` and ``mri-liver``.

Each lives in ``medgen/models/weights/<name>/`` as a finished run directory with a model card:

- ``config.yaml``: the training config (its data paths blanked: the weights carry no training file);
- ``checkpoints/checkpoint_<N>.pt``: one entry, ``net``, the weights inference uses (read with ``weights_only``);
- ``card.json``: training data and its terms, the command that made it, architecture, input spacing, measured
  figures with their commands, intended use, known failure modes, and the weights' sha256.

A shipped model's name is accepted wherever a segmenter run is (``--segmenter ct-liver``, ``train.init=mri-liver``):
:func:`resolve_model` turns it into that directory after checking the sha256, so a damaged install gives one
``medgen: error:`` line instead of a wrong mask. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path

from medgen.errors import MedgenError, short

WEIGHTS_DIR = Path(str(files("medgen") / "models" / "weights"))
CARD_FILE = "card.json"
SHIPPED = ("ct-liver", "mri-liver")  # the names, in the order `medgen models` lists them
DEFAULT_FOR = {"ct": "ct-liver", "mri": "mri-liver"}  # `medgen segment IN OUT --modality M` with no model


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(name: str) -> dict:
    """The model card of shipped model ``name`` (a ``MedgenError`` for an unknown name or a damaged card)."""
    if name not in SHIPPED:
        raise MedgenError(name, f"no such shipped model (shipped: {', '.join(SHIPPED)})")
    path = WEIGHTS_DIR / name / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedgenError(path, f"unreadable model card ({short(exc, 100)}): reinstall medgen") from None
    if not isinstance(card, dict) or not isinstance(card.get("weights"), dict):
        raise MedgenError(path, "model card has no 'weights' entry: reinstall medgen")
    return card


def shipped_dir(name: str) -> Path:
    """The run directory of shipped model ``name``, its weights checked against the card's sha256."""
    card = read_card(name)
    weights = WEIGHTS_DIR / name / str(card["weights"].get("file", ""))
    if not weights.is_file() or weights.parent.parent != WEIGHTS_DIR / name:
        raise MedgenError(weights, "shipped weights missing: reinstall medgen")
    if sha256(weights) != card["weights"].get("sha256"):
        raise MedgenError(weights, "shipped weights do not match the sha256 of their model card (damaged or "
                                   "truncated file): reinstall medgen")
    return WEIGHTS_DIR / name


def resolve_model(spec: str | Path | None) -> str | Path | None:
    """A segmenter or model argument -> what the loaders read: a shipped model's name becomes its checked run
    directory (:func:`shipped_dir`); anything else (a path, ``totalsegmentator``) is returned as given."""
    return str(shipped_dir(str(spec))) if spec is not None and str(spec) in SHIPPED else spec


def describe_card(card: dict, full: bool = False) -> str:
    """A model card as text: name, purpose, data, figures; ``full`` adds everything else it holds."""
    lines = [f"{card.get('name')}: {card.get('summary', '')}"]
    for key in ("intended_use", "training_data", "terms"):
        if card.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {card[key]}")
    for what, figure in card.get("figures", {}).items():
        lines.append(f"  {what}: {figure.get('value')} ({figure.get('command')})" if full else f"  {what}: "
                     f"{figure.get('value')}")
    if full:
        for key in ("architecture", "input", "command", "failure_modes", "weights"):
            if card.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {json.dumps(card[key]) if isinstance(card[key], (dict, list)) else card[key]}")
    return "\n".join(lines)
