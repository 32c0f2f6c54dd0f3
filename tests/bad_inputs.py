"""A corpus of hostile and broken inputs, written at test time (no binaries in the repository).

``write_corpus(folder)`` returns ``{name: (path, cause)}``: each file and a regular expression the one-line
``medgen: error: <file>: <problem>`` must match. Run as a script to write the corpus somewhere to look at:
``python tests/bad_inputs.py tests/data/bad``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def hostile_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16, data: bytes = b"\0" * 256) -> Path:
    """A NIfTI-1 header claiming ``shape`` followed by only ``data`` (256 bytes by default)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def binary_nifti(path: Path, shape=(8, 8, 8)) -> Path:
    """A NIfTI of datatype 1 (binary), one byte per voxel: what nibabel refuses to read."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    block = bytearray(header.binaryblock)
    block[70:74] = np.array([1, 8], "<i2").tobytes()  # datatype 1, bitpix 8
    voxels = (np.arange(int(np.prod(shape))) % 3 == 0).astype(np.uint8).tobytes()
    path.write_bytes(bytes(block) + b"\0" * 4 + voxels)
    return path


def dicom_series(folder: Path, n: int = 6, uid: str = "1.2.826.0.1.3680043.2.1125.1", skip=(), first: int = 0,
                 spacing: float = 2.0) -> Path:
    """A small CT DICOM series (16 x 16 slices, ``spacing`` mm apart) in ``folder``; slices in ``skip`` left out,
    files numbered from ``first``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        if k in skip:
            continue
        s = sitk.GetImageFromArray((np.arange(256).reshape(16, 16) % 50 + 10 * k).astype(np.int16))
        for tag, value in [("0008|0060", "CT"), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"), ("0020|000d", "1.2.3.4"),
                           ("0020|000e", uid), ("0008|0018", f"{uid}.{k + 1}"), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{k * spacing}"), ("0020|0037", "1\\0\\0\\0\\1\\0")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{first + k:03d}.dcm"))
        writer.Execute(s)
    return folder


def truncated_slice(folder: Path) -> Path:
    """A DICOM series whose third slice lost its last 300 bytes (GDCM drops such a file without a word)."""
    dicom_series(folder)
    f = folder / "002.dcm"
    f.write_bytes(f.read_bytes()[:-300])
    return folder


def save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path


def raw_nifti(path: Path, shape=(8, 8, 8), dtype=np.int16, mutate=None, data: bytes | None = None) -> Path:
    """An uncompressed NIfTI-1 written byte by byte: ``mutate(header)`` may set fields nibabel would refuse."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    if mutate:
        mutate(header)
    payload = data if data is not None else np.zeros(int(np.prod(shape)), dtype).tobytes()
    path.write_bytes(header.binaryblock + b"\0" * 4 + payload)
    return path


def patched_nifti(path: Path, offset: int, fmt: str, value) -> Path:
    """A valid 8^3 NIfTI-1 with one header field overwritten at byte ``offset``."""
    raw_nifti(path)
    block = bytearray(path.read_bytes())
    struct.pack_into(fmt, block, offset, value)
    path.write_bytes(bytes(block))
    return path


def mha(path: Path, header: str, data: bytes = b"") -> Path:
    path.write_bytes(("ObjectType = Image\n" + header + "ElementType = MET_SHORT\nElementDataFile = LOCAL\n").encode()
                     + data)
    return path


def file_corpus(d: Path) -> dict[str, tuple[Path, str]]:
    """Broken and hostile files of every format, beyond the headline cases of :func:`write_corpus`."""
    good = save(d / "good_src.nii.gz", np.arange(512, dtype=np.float32).reshape(8, 8, 8)).read_bytes()
    nan, inf = np.ones((8, 8, 8), np.float32), np.ones((8, 8, 8), np.float32)
    nan[1, 1, 1], inf[1, 1, 1] = np.nan, np.inf
    (d / "empty.nii.gz").write_bytes(b"")
    (d / "empty.nii").write_bytes(b"")
    (d / "text.nii.gz").write_text("hello")
    (d / "garbage.nii.gz").write_bytes(gzip.compress(bytes(range(256)) * 4))
    (d / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    (d / "random_header.nii").write_bytes(bytes((i * 37) % 256 for i in range(600)))
    nifti2 = nib.Nifti2Header()
    nifti2.set_data_shape((20000, 20000, 20000))
    nifti2.set_data_dtype(np.int16)
    nifti2["vox_offset"] = 544
    (d / "huge2.nii").write_bytes(nifti2.binaryblock + b"\0" * 260)
    (d / "garbage.mha").write_bytes(bytes((i * 91) % 256 for i in range(500)))
    (d / "missing_raw.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\n"
                                       "ElementDataFile = missing.raw\n")
    (d / "garbage.nrrd").write_bytes(b"NRRD0004\n" + bytes((i * 53) % 256 for i in range(300)))
    (d / "huge.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 20000 20000 20000\nendian: little\n"
                                  b"encoding: raw\n\n" + b"\0" * 256)
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    dicom_series(d / "one_series", n=3)
    (d / "single.dcm").write_bytes((d / "one_series" / "000.dcm").read_bytes())
    (d / "not_dicom").mkdir(exist_ok=True)
    (d / "not_dicom" / "notes.txt").write_text("x")
    (d / "folder.nii.gz").mkdir(exist_ok=True)
    if not (d / "dangling.nii.gz").is_symlink():
        (d / "dangling.nii.gz").symlink_to(d / "nowhere.nii.gz")
    dicom_series(d / "dicom_fake")
    (d / "dicom_fake" / "010.dcm").write_text("not a dicom")
    dicom_series(d / "dicom_dup")
    (d / "dicom_dup" / "100.dcm").write_bytes((d / "dicom_dup" / "002.dcm").read_bytes())
    (d / "double.nii.gz").write_bytes(gzip.compress(good))
    (d / "analyze.hdr").write_bytes(nib.Nifti1Header().binaryblock)
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "up.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\n"
                                      "ElementDataFile = ../garbage.mha\n")
    (d / "passwd.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\n"
                                  "ElementDataFile = /etc/passwd\n")
    (d / "passwd.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\nendian: little\n"
                                   "encoding: raw\ndata file: /etc/passwd\n\n")
    (d / "twod.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 2\nsizes: 8 8\nendian: little\nencoding: raw\n\n"
                                  + b"\0" * 128)
    outside = "lies outside the header's folder: refused"
    return {
        "double_gzip": (d / "double.nii.gz", "not a readable NIfTI file|corrupt or truncated"),
        "analyze_pair": (d / "analyze.hdr", "unsupported extension '.hdr'"),
        "mhd_data_outside": (d / "sub" / "up.mhd", outside),
        "mhd_etc_passwd": (d / "passwd.mhd", outside),
        "nhdr_etc_passwd": (d / "passwd.nhdr", outside),
        "nrrd_2d": (d / "twod.nrrd", "not a 3D scalar volume"),
        "mha_claim_1024": (mha(d / "g1024.mha", "NDims = 3\nDimSize = 1024 1024 1024\n"), "over the limit"),
        "mha_negative_size": (mha(d / "negdim.mha", "NDims = 3\nDimSize = 8 -8 8\n"), "over the limit|not a readable"),
        "mha_rgb": (mha(d / "rgb.mha", "NDims = 3\nDimSize = 8 8 8\nElementNumberOfChannels = 3\n", b"\0" * 3072),
                    r"3 component\(s\) per voxel"),
        "empty_niigz": (d / "empty.nii.gz", "not a readable NIfTI file"),
        "empty_nii": (d / "empty.nii", "not a readable NIfTI file"),
        "text_niigz": (d / "text.nii.gz", "not a readable NIfTI file"),
        "gz_garbage": (d / "garbage.nii.gz", "not a readable NIfTI file"),
        "gz_cut": (d / "cut.nii.gz", "corrupt or truncated image data"),
        "random_header": (d / "random_header.nii", "not a readable NIfTI file|invalid NIfTI header"),
        "zero_axis": (save(d / "zero_axis.nii.gz", np.zeros((8, 0, 8), np.float32)), "zero-size axis"),
        "two_d": (save(d / "two_d.nii.gz", np.ones((8, 8), np.float32)), r"not a 3D volume: 2D"),
        "five_d": (save(d / "five_d.nii.gz", np.ones((8, 8, 8, 2), np.float32)), r"not a 3D volume: 4D"),
        "nan": (save(d / "nan.nii.gz", nan), r"1 non-finite \(NaN/Inf\) voxels"),
        "inf": (save(d / "inf.nii.gz", inf), r"1 non-finite \(NaN/Inf\) voxels"),
        "singular_affine": (raw_nifti(d / "singular.nii", mutate=lambda h: h.__setitem__("srow_y", [0.0] * 4)),
                            "affine is singular"),
        "nan_affine": (raw_nifti(d / "nan_affine.nii", mutate=lambda h: h.__setitem__("srow_x", [1, 0, 0, np.nan])),
                       "affine has non-finite entries"),
        "negative_dim": (patched_nifti(d / "neg_dim.nii", 42, "<h", -5), r"invalid NIfTI header: dim = \[3, -5"),
        "dim0_out_of_range": (patched_nifti(d / "dim0.nii", 40, "<h", 9), r"invalid NIfTI header: dim = \[9"),
        "offset_past_end": (patched_nifti(d / "offset.nii", 108, "<f", 1e6), "truncated: the header claims"),
        "unknown_datatype": (patched_nifti(d / "dtype.nii", 70, "<h", 9999), "data code 9999 not recognized"),
        "complex128": (save(d / "c128.nii.gz", np.ones((8, 8, 8), np.complex128)), "complex voxels"),
        "header_only": (raw_nifti(d / "header_only.nii", data=b""), "truncated: the header claims 1376 bytes"),
        "huge_nifti2": (d / "huge2.nii", "header claims 8000000000000 voxels"),
        "mha_garbage": (d / "garbage.mha", "Unable to determine ImageIO reader"),
        "mhd_missing_raw": (d / "missing_raw.mhd", "File cannot be read.*No such file"),
        "nrrd_garbage": (d / "garbage.nrrd", "not a readable image"),
        "nrrd_huge": (d / "huge.nrrd", "header claims 8000000000000 voxel|not a readable image"),
        "mha_2d": (mha(d / "two_d.mha", "NDims = 2\nDimSize = 8 8\n", b"\0" * 128), "not a 3D scalar volume"),
        "mha_4d": (mha(d / "four_d.mha", "NDims = 4\nDimSize = 8 8 8 2\n", b"\0" * 2048), "not a 3D scalar volume"),
        "mha_zero_axis": (mha(d / "zero.mha", "NDims = 3\nDimSize = 8 0 8\n"), "zero-size axis"),
        "png": (d / "image.png", "unsupported extension '.png'"),
        "single_dicom_file": (d / "single.dcm", "a single DICOM file: pass the directory"),
        "folder_without_dicom": (d / "not_dicom", "holds no DICOM series"),
        "missing": (d / "does_not_exist.nii.gz", "no such file or directory"),
        "folder_named_nii": (d / "folder.nii.gz", "holds no DICOM series"),
        "dangling_link": (d / "dangling.nii.gz", "no such file or directory"),
        "dicom_single_slice": (dicom_series(d / "dicom_one", n=1), "a single slice: not a 3D volume"),
        "dicom_fake_member": (d / "dicom_fake", r"1 DICOM file\(s\) not readable .*: 010\.dcm"),
        "dicom_duplicate": (d / "dicom_dup", "not evenly spaced"),
    }


def write_corpus(folder: str | Path) -> dict[str, tuple[Path, str]]:
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    (d / "empty_folder").mkdir(exist_ok=True)
    (d / "corrupt.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
                                   "ElementDataFile = LOCAL\n")
    (d / "huge.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 20000 20000 20000\n"
                                "ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + "\0" * 256)
    return {
        "huge_nii": (hostile_nifti(d / "huge.nii", (20000, 20000, 20000)), "header claims 8000000000000 voxels"),
        "huge_niigz": (hostile_nifti(d / "huge.nii.gz", (20000, 20000, 20000)), "header claims 8000000000000 voxels"),
        "claim_1024": (hostile_nifti(d / "claim_1024.nii.gz", (1024, 1024, 1024)), "over the limit"),
        "truncated": (hostile_nifti(d / "truncated.nii", (64, 64, 64)), "truncated: the header claims"),
        "huge_mha": (d / "huge.mha", "header claims 8000000000000 voxel"),
        "rgb": (save(d / "rgb.nii.gz", rgb), "RGB voxels"),
        "complex": (save(d / "complex.nii.gz", np.ones((8, 8, 8), np.complex64)), "complex voxels"),
        "thin_z": (save(d / "thin_z.nii.gz", np.ones((128, 128, 1), np.float32)), r"degenerate grid \(128, 128, 1\)"),
        "thin_y": (save(d / "thin_y.nii.gz", np.ones((128, 1, 64), np.float32)), r"degenerate grid \(128, 1, 64\)"),
        "zeros": (save(d / "zeros.nii.gz", np.zeros((16, 16, 8), np.float32)), r"constant volume \(every voxel 0\)"),
        "corrupt_mha": (d / "corrupt.mha", "not a readable image or truncated"),
        "empty_folder": (d / "empty_folder", "holds no DICOM series"),
        "dicom_gap": (dicom_series(d / "dicom_gap", skip=(3,)), "not evenly spaced: 4 mm between 002.dcm and 004.dcm"),
        "dicom_two_series": (dicom_series(d / "dicom_two", uid="1.2.826.0.1.3680043.2.1125.2", first=10) and
                             dicom_series(d / "dicom_two"), r"holds 2 DICOM series \(1\.2\.826.*\): put each series"),
        "dicom_truncated": (truncated_slice(d / "dicom_truncated"), r"1 DICOM file\(s\) not readable .*: 002\.dcm"),
        **file_corpus(d),
    }


if __name__ == "__main__":
    for name, (path, cause) in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad").items():
        print(f"{name:14s} {path}  ->  {cause}")


class _Marker:
    """A pickle that, if ever unpickled, creates the file ``path`` (proof that code ran)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def model_corpus(d: Path, segmenter_run: Path, marker: Path) -> dict[str, tuple[Path, Path, str]]:
    """Damaged models, each from a copy of the good ``segmenter_run`` (or a bundle / TorchScript file made here):
    name -> (the model to load, the file the one-line error names, a regex of its problem). None of them may execute
    code: a pickle that would create ``marker`` is among them."""
    import pickle

    import torch

    def run(name: str) -> Path:
        dst = d / name
        shutil.copytree(segmenter_run, dst, ignore=shutil.ignore_patterns("tb"))
        return dst

    def last(r: Path) -> Path:
        return sorted((r / "checkpoints").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[-1]

    out: dict[str, tuple[Path, Path, str]] = {}
    r = run("config_garbage")
    (r / "config.yaml").write_text("task: [segmenter\n  : :\n")
    out["run: config.yaml not YAML"] = (r, r / "config.yaml", "")
    r = run("config_wrong_task")
    (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("task: segmenter", "task: cyclegan"))
    out["run: config.yaml of another task"] = (r, r / "config.yaml", "")
    r = run("config_bad_value")
    (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("spatial_dims: 2", "spatial_dims: seven"))
    out["run: config.yaml with a bad value"] = (r, r / "config.yaml", "spatial_dims")
    r = run("no_checkpoint")
    shutil.rmtree(r / "checkpoints")
    out["run: no checkpoint"] = (r, r, "no checkpoint")
    for name, damage in {"empty": b"", "garbage": os.urandom(4096)}.items():
        r = run(f"ckpt_{name}")
        last(r).write_bytes(damage)
        out[f"run: checkpoint {name}"] = (r, last(r), "unreadable checkpoint")
    r = run("ckpt_truncated")
    last(r).write_bytes(last(r).read_bytes()[:2000])
    out["run: checkpoint truncated"] = (r, last(r), "unreadable checkpoint")
    r = run("ckpt_pickle")
    last(r).write_bytes(pickle.dumps({"net": _Marker(marker)}))
    out["run: checkpoint a code-running pickle"] = (r, last(r), "unreadable checkpoint")
    r = run("ckpt_wrong_keys")
    torch.save({"weights": {"w": torch.zeros(2)}}, last(r))
    out["run: checkpoint without the network"] = (r, last(r), "has no 'net' weights")
    r = run("ckpt_wrong_shapes")
    state = torch.load(last(r), weights_only=True)
    state["net"] = {k: torch.zeros(*(s + 1 for s in v.shape)) if v.ndim else v for k, v in state["net"].items()}
    torch.save(state, last(r))
    out["run: checkpoint of another network"] = (r, last(r), "do not fit")

    ts = d / "ts_garbage" / "model.pt"
    ts.parent.mkdir(parents=True)
    ts.write_bytes(os.urandom(2048))
    (ts.parent / "model.json").write_text(json.dumps({"spatial_dims": 3}))
    out["TorchScript: garbage"] = (ts, ts, "")
    ts = d / "ts_pickle" / "model.pt"
    ts.parent.mkdir(parents=True)
    ts.write_bytes(pickle.dumps(_Marker(marker)))
    (ts.parent / "model.json").write_text(json.dumps({"spatial_dims": 3}))
    out["TorchScript: a code-running pickle"] = (ts, ts, "")
    ts = d / "ts_sidecar" / "model.pt"
    ts.parent.mkdir(parents=True)
    torch.jit.script(torch.nn.Conv3d(1, 2, 1)).save(str(ts))
    (ts.parent / "model.json").write_text("{broken")
    out["TorchScript: sidecar not JSON"] = (ts, ts.parent / "model.json", "")

    def bundle(name: str, config: str, weights: bytes | None = None) -> Path:
        b = d / name
        (b / "configs").mkdir(parents=True)
        (b / "models").mkdir()
        (b / "configs" / "inference.json").write_text(config)
        if weights is None:
            torch.save(torch.nn.Conv3d(1, 2, 1).state_dict(), b / "models" / "model.pt")
        else:
            (b / "models" / "model.pt").write_bytes(weights)
        return b

    net = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    b = bundle("bundle_json", "{\"network_def\": ")
    out["bundle: inference.json broken"] = (b, b / "configs" / "inference.json", "")
    full = {"network_def": net, "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16],
                                            "sw_batch_size": 1},
            "preprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "image"}]}}
    b = bundle("bundle_pickle", json.dumps(full), pickle.dumps({"weight": _Marker(marker)}))
    out["bundle: weights a code-running pickle"] = (b, b / "models" / "model.pt", "")
    b = bundle("bundle_class", json.dumps({**full, "network_def": {**net, "_target_": "nosuch.Net"}}))
    out["bundle: unknown network class"] = (b, b, "")
    return out
