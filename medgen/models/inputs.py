"""The input files of a training run, by content: what makes a finished run reusable besides its config.

A run records, when it starts, the sha256 of every file its resolved config reads (``RUN/inputs.json``): the values
of the path keys (:data:`PATH_KEYS`, e.g. ``data.images``, ``train.init``, ``augment.synthetic.source``), a folder
by its files, a datalist JSON by itself and the files its entries name, a shipped model's name by its weights.
:func:`medgen.models.run.run_finished` reuses a run only when those hashes are unchanged, so a label map edited in
place, a CT replaced under the same name or a retrained initial model makes the step run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from medgen.config import to_dict
from medgen.models.shipped import SHIPPED, shipped_dir

INPUTS_FILE = "inputs.json"
# config keys (at any depth) whose string values name files or folders the run reads
PATH_KEYS = frozenset({"images", "labels", "val_images", "val_labels", "mri", "ct", "val_mri", "val_ct", "source",
                       "translator", "segmenter", "init"})
_CACHE: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, within one process


def _values(tree: Mapping) -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _values(value)
        elif key in PATH_KEYS and isinstance(value, str) and value:
            yield value


def _files(spec: str) -> Iterator[Path]:
    """The files behind one path value (nothing for a value that names no file: ``totalsegmentator``, a typo)."""
    if spec in SHIPPED:
        yield from _files(str(shipped_dir(spec)))
        return
    path = Path(spec.rsplit("#", 1)[0] if ".json#" in spec else spec)
    if path.is_dir():
        yield from (f for f in sorted(path.rglob("*")) if f.is_file())
    elif path.is_file():
        yield path
        if path.suffix == ".json":  # a datalist: the volumes its entries name
            try:
                listing = json.loads(path.read_text())
            except (OSError, ValueError):
                return
            for text in _strings(listing):
                for candidate in (Path(text), path.parent / text):
                    if candidate.is_file():
                        yield candidate
                        break


def _strings(tree) -> Iterator[str]:
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, Mapping):
        for v in tree.values():
            yield from _strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _strings(v)


def sha256(path: Path) -> str:
    """The file's sha256 (cached in this process by path, size and modification time)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _CACHE[key] = digest.hexdigest()
    return _CACHE[key]


def input_digest(cfg) -> dict[str, str]:
    """``{absolute path: sha256}`` of every file the resolved config ``cfg`` reads (see the module docstring).

    >>> from medgen.models.segmenter import SegmenterConfig
    >>> input_digest(SegmenterConfig())  # no data named: nothing read
    {}
    """
    files = {str(f.resolve()) for spec in _values(to_dict(cfg)) for f in _files(spec)}
    return {f: sha256(Path(f)) for f in sorted(files)}


def changed_inputs(run: Path, cfg) -> list[str]:
    """The input files of ``cfg`` that differ from what ``run`` recorded when it started (added, removed or with other
    content); every recorded file when the run holds no readable record."""
    try:
        recorded = json.loads((run / INPUTS_FILE).read_text())["files"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return [str(run / INPUTS_FILE)]
    now = input_digest(cfg)
    return sorted(f for f in set(now) | set(recorded) if now.get(f) != recorded.get(f))
