"""Datalists, the file-or-folder rule, patch sampling and the labelled-data factories."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.config import LabelledDataConfig, PreprocessConfig
from medgen.data.datalist import image_label_pairs, input_output_pairs, list_volumes
from medgen.data.patches import RandomPatches, Unpaired, crop_or_pad, labelled_patches
from medgen.data.volumes import labelled_volumes
from medgen.errors import MedgenError
from medgen.keys import Keys


def _nii(path, shape=(6, 5, 4), value=0, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path


# ---------------------------------------------------------------- datalists


def test_list_volumes_from_a_folder_sorted_images_only(tmp_path):
    for name in ("b.nii.gz", "a.nii", "c.nrrd", ".hidden.nii.gz"):
        (tmp_path / name).touch()
    (tmp_path / "notes.txt").touch()
    assert [p.name for p in list_volumes(tmp_path)] == ["a.nii", "b.nii.gz", "c.nrrd"]


def test_list_volumes_from_json_sections_aliases_and_relative_paths(tmp_path):
    ds = tmp_path / "data" / "dataset.json"
    ds.parent.mkdir()
    ds.write_text(json.dumps({
        "training": [{"mri": "mri/a.nii.gz", "ct": "ct/a.nii.gz", "label": "labels/a.nii.gz"}],
        "test": [{"image": "/abs/b.nii.gz", "label": "labels/b.nii.gz"}],
    }))
    assert list_volumes(ds, "mri") == [ds.parent / "mri/a.nii.gz"]
    assert list_volumes(ds) == [ds.parent / "ct/a.nii.gz"]  # an entry without 'image' gives its CT
    assert list_volumes(f"{ds}#test") == [ds.parent / "/abs/b.nii.gz"]
    (tmp_path / "list.json").write_text(json.dumps(["x.nii.gz", "y.nii.gz"]))
    assert list_volumes(tmp_path / "list.json") == [tmp_path / "x.nii.gz", tmp_path / "y.nii.gz"]


@pytest.mark.parametrize("content, source, message", [
    ({"training": [{"image": "a.nii.gz"}]}, "d.json", "has no 'label'"),
    ({"other": []}, "d.json", "none of the sections training, cases, validation, test"),
    ("{not json", "d.json", "unreadable datalist JSON"),
    (None, "missing", "no such file or directory"),
    (None, "empty", "holds no volumes"),
    (None, "", "no data given for 'label'"),
])
def test_datalist_errors(tmp_path, content, source, message):
    (tmp_path / "empty").mkdir()
    if content is not None:
        (tmp_path / source).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(MedgenError, match=message):
        list_volumes(tmp_path / source if source else "", "label")


def test_image_label_pairs_by_name_and_by_entry(tmp_path):
    for name in ("case_1", "case_0"):
        _nii(tmp_path / "img" / f"{name}.nii.gz")
        _nii(tmp_path / "lab" / f"{name}.nii.gz")
    pairs = image_label_pairs(tmp_path / "img", tmp_path / "lab")
    assert [(i.name, lab.parent.name) for i, lab in pairs] == [("case_0.nii.gz", "lab"), ("case_1.nii.gz", "lab")]
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps({"training": [{"image": "img/case_1.nii.gz", "label": "lab/case_0.nii.gz"}]}))
    assert image_label_pairs(ds, ds) == [(tmp_path / "img/case_1.nii.gz", tmp_path / "lab/case_0.nii.gz")]
    (tmp_path / "lab" / "case_1.nii.gz").unlink()
    with pytest.raises(MedgenError, match=r"case_1.nii.gz: no label with the same case name"):
        image_label_pairs(tmp_path / "img", tmp_path / "lab")


def test_input_output_pairs_file_or_folder(tmp_path):
    src = _nii(tmp_path / "in" / "case_7.nii.gz")
    _nii(tmp_path / "in" / "case_2.nii")
    assert input_output_pairs(src, tmp_path / "o.nii.gz") == (True, [(src, tmp_path / "o.nii.gz")])
    single, pairs = input_output_pairs(tmp_path / "in", tmp_path / "out")
    assert not single
    assert [(s.name, d) for s, d in pairs] == [("case_2.nii", tmp_path / "out" / "case_2.nii.gz"),
                                               ("case_7.nii.gz", tmp_path / "out" / "case_7.nii.gz")]
    # a folder with an image file as output is one volume (a DICOM series)
    assert input_output_pairs(tmp_path / "in", tmp_path / "series.nii.gz")[0]


# ---------------------------------------------------------------- patches


def _volume(depth=10) -> dict:
    """Background -1; a body (value z / 10) only on slices 3-6, with a 'liver' label inside it on slice 5."""
    image = torch.full((1, 16, 16, depth), -1.0)
    label = torch.zeros((1, 16, 16, depth), dtype=torch.uint8)
    for z in range(3, 7):
        image[0, 4:12, 4:12, z] = z / 10
    label[0, 6:8, 6:8, 5] = 1
    return {Keys.IMAGE: image, Keys.LABEL: label}


def test_random_patches_are_index_determined():
    patches = RandomPatches([_volume()], [Keys.IMAGE, Keys.LABEL], (8, 8), 2, seed=3, fg_key=Keys.IMAGE)
    again = RandomPatches([_volume()], [Keys.IMAGE, Keys.LABEL], (8, 8), 2, seed=3, fg_key=Keys.IMAGE)
    a, b = patches[17], again[17]
    assert a[Keys.IMAGE].shape == (1, 8, 8) and a[Keys.LABEL].shape == (1, 8, 8)
    assert torch.equal(a[Keys.IMAGE], b[Keys.IMAGE])
    assert any(not torch.equal(patches[n][Keys.IMAGE], a[Keys.IMAGE]) for n in range(18, 30))


def test_random_patches_2d_skip_slices_without_body():
    patches = RandomPatches([_volume()], [Keys.IMAGE], (16, 16), 2, seed=0, fg_key=Keys.IMAGE, fg_prob=0.0,
                            min_foreground=0.1)
    drawn = {round(float(patches[n][Keys.IMAGE].max()) * 10) for n in range(200)}
    assert drawn == {3, 4, 5, 6}  # every body slice, and never an empty one


def test_random_patches_positive_sampling():
    patches = RandomPatches([_volume()], [Keys.IMAGE, Keys.LABEL], (6, 6), 2, seed=1, fg_key=Keys.IMAGE,
                            pos_key=Keys.LABEL, pos_prob=1.0)
    assert all(patches[n][Keys.LABEL].max() == 1 for n in range(50))
    plain = RandomPatches([_volume()], [Keys.IMAGE, Keys.LABEL], (6, 6), 2, seed=1, fg_key=Keys.IMAGE)
    assert min(int(plain[n][Keys.LABEL].max()) for n in range(50)) == 0


def test_random_patches_2_5d_hold_the_neighbouring_slices_as_channels():
    """2.5D: the image as 3 slices centred on the drawn one (the pad value beyond the volume), the label the centre's;
    the same sample index draws the same slice as plain 2D."""
    image = torch.full((1, 16, 16, 5), -1.0)
    for z in range(5):
        image[0, 4:12, 4:12, z] = (z + 1) / 10  # a body on every slice, its value telling the slice
    vol = {Keys.IMAGE: image, Keys.LABEL: (image > 0.25).to(torch.uint8)}
    common = dict(fg_key=Keys.IMAGE, fg_prob=0.0)
    plain = RandomPatches([vol], [Keys.IMAGE, Keys.LABEL], (16, 16), 2, seed=2, **common)
    slab = RandomPatches([vol], [Keys.IMAGE, Keys.LABEL], (16, 16), 2, seed=2, slices=3, slab_keys=[Keys.IMAGE],
                         **common)
    seen = set()
    for n in range(60):
        a, b = plain[n], slab[n]
        assert b[Keys.IMAGE].shape == (3, 16, 16) and b[Keys.LABEL].shape == (1, 16, 16)
        assert torch.equal(b[Keys.IMAGE][1:2], a[Keys.IMAGE]) and torch.equal(b[Keys.LABEL], a[Keys.LABEL])
        z = round(float(a[Keys.IMAGE].max()) * 10) - 1
        seen.add(z)
        assert float(b[Keys.IMAGE][0].max()) == pytest.approx(z / 10 if z > 0 else -1.0)
        assert float(b[Keys.IMAGE][2].max()) == pytest.approx((z + 2) / 10 if z < 4 else -1.0)
    assert seen == {0, 1, 2, 3, 4}  # the first and last slices too: their missing neighbour is the pad value


def test_random_patches_3d_pad_outside_the_volume():
    patches = RandomPatches([_volume()], [Keys.IMAGE, Keys.LABEL], (20, 20, 12), 3, seed=0, fg_key=Keys.IMAGE,
                            pad_values={Keys.LABEL: 0})
    out = patches[0]
    assert out[Keys.IMAGE].shape == (1, 20, 20, 12) and out[Keys.LABEL].shape == (1, 20, 20, 12)
    assert out[Keys.IMAGE][0, 0, 0, 0] == -1 and out[Keys.LABEL].sum() == 4  # the whole volume, padded


def test_crop_or_pad_and_errors():
    x = torch.arange(16.0).view(1, 4, 4)
    out = crop_or_pad(x, (-1, 2), (3, 3), value=-5.0)
    assert out.tolist() == [[[-5, -5, -5], [2, 3, -5], [6, 7, -5]]]
    with pytest.raises(ValueError, match="does not fit spatial_dims=3"):
        RandomPatches([_volume()], [Keys.IMAGE], (8, 8), 3, seed=0, fg_key=Keys.IMAGE)
    with pytest.raises(ValueError, match="no volumes"):
        RandomPatches([], [Keys.IMAGE], (8, 8), 2, seed=0, fg_key=Keys.IMAGE)


def test_unpaired_draws_each_domain_on_its_own():
    a = RandomPatches([{Keys.MRI: _volume()[Keys.IMAGE]}], [Keys.MRI], (8, 8), 2, seed=1, fg_key=Keys.MRI)
    b = RandomPatches([{Keys.CT: _volume()[Keys.IMAGE]}], [Keys.CT], (8, 8), 2, seed=2, fg_key=Keys.CT)
    sample = Unpaired(a, b)[5]
    assert set(sample) == {Keys.MRI, Keys.CT}
    assert torch.equal(sample[Keys.MRI], a[5][Keys.MRI]) and torch.equal(sample[Keys.CT], b[5][Keys.CT])


def test_labelled_volumes_and_patches_follow_the_config(phantom_dir):
    pairs = image_label_pairs(phantom_dir / "dataset.json", phantom_dir / "dataset.json")[:2]
    data = LabelledDataConfig(label_map={1: 1, 2: 2}, patch_size=[16, 16], pos_prob=1.0, cache_workers=1)
    volumes = labelled_volumes(pairs, data, PreprocessConfig(spacing=[12.0, 12.0, None], ct_window=[-175, 250]))
    assert volumes[0][Keys.IMAGE].shape == (1, 32, 32, 32)  # 64 voxels of 6 mm -> 32 of 12 mm in plane
    assert set(torch.unique(volumes[0][Keys.LABEL]).tolist()) == {0, 1, 2}  # other labels are background
    assert volumes[0][Keys.IMAGE].min() == -1 and volumes[0][Keys.IMAGE].max() == 1  # the CT window, clipped
    patches = labelled_patches(volumes, data, 2, seed=0)
    assert patches[0][Keys.IMAGE].shape == (1, 16, 16)
    assert all(patches[n][Keys.LABEL].max() > 0 for n in range(10))  # pos_prob 1: every patch has a label
    identity = labelled_volumes(pairs, data, PreprocessConfig(spacing=None), label_map={})
    assert int(identity[0][Keys.LABEL].max()) > 2  # label_map {} keeps the source values


def test_labelled_volumes_refuse_labels_on_another_grid(tmp_path):
    image = _nii(tmp_path / "img" / "c.nii.gz", value=40)
    label = tmp_path / "lab" / "c.nii.gz"
    label.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.uint8), np.eye(4)), label)
    data = NS(modality="ct", label_map={1: 1}, cache_workers=1)
    with pytest.raises(MedgenError, match="grid differs"):
        labelled_volumes([(image, label)], data, PreprocessConfig())
