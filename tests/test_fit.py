"""`medgen fit mri-liver` on tiny phantoms: both routes, resume, a user's TorchScript segmenter, bad data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.engines.fit_mri_liver import split_sets
from medgen.io import load_image
from medgen.models.fit_model import read_model
from medgen.inference.translate import load_translator
from medgen.models.registry import load_config
from medgen.models.run import latest_checkpoint, load_checkpoint

TINY = {"train.iterations": 2, "train.batch_size": 2, "train.checkpoint_every": 1, "train.log_every": 1,
        "data.cache_workers": 1, "preprocess.spacing": "null", "data.patch_size": "[32, 32]", "train.amp": "none"}
SEG = {**TINY, "network.channels": "[4, 8]", "network.num_res_units": 0}
TRANS = {**TINY, "generator.ngf": 4}


def _args(phantom_dir: Path, out: Path, route: str = "direct", extra: list[str] = ()) -> list[str]:
    sets = [f"segmenter.{k}={v}" for k, v in SEG.items()] + [f"translator.{k}={v}" for k, v in TRANS.items()]
    args = ["fit", "mri-liver", "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
            "--label-map", "1:1", "--mri", str(phantom_dir / "mri"), "--out", str(out), "--set", f"route={route}",
            "--set", "device=cpu", "--set", "adapt.iterations=0", "--set", "start=scratch"]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


def test_split_sets_routes_stage_keys():
    own, stages = split_sets(["route=synthct", "segmenter.train.iterations=5", "translator.loss.lambda_seg=0"])
    assert own == ["route=synthct"]
    assert stages == {"segmenter": ["train.iterations=5"], "translator": ["loss.lambda_seg=0"], "ct2mri": []}


@pytest.mark.parametrize("route", ["direct", "synthct"])
def test_fit_then_pipeline_with_the_model(phantom_dir, tmp_path, route, capsys):
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model, route)) == 0
    got_route, translator, segmenter, liver_index = read_model(model)
    assert got_route == route and Path(segmenter) == model / "segmenter" and liver_index == 1
    assert (translator is None) == (route == "direct")
    assert latest_checkpoint(model / "segmenter").name == "checkpoint_2.pt"
    if route == "synthct":  # trained through the fit's own 2D segmenter
        cfg = (model / "translator" / "config.yaml").read_text()
        assert f"segmenter: {model / 'segmenter'}" in cfg
    qc = json.loads((model / "qc" / "summary.json").read_text())
    assert len(qc["cases"]) == len(list((phantom_dir / "mri").glob("*.nii.gz")))
    mri = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    out = tmp_path / "mask.nii.gz"
    assert main(["pipeline", "mri-liver", "--model", str(model), str(mri), str(out),
                 "--truth", str(phantom_dir / "labels" / mri.name)]) == 0
    mask, ref = load_image(out)
    _, mri_ref = load_image(mri)
    assert mask.shape == mri_ref.shape and np.allclose(ref.affine, mri_ref.affine)
    row = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    truth = load_image(phantom_dir / "labels" / mri.name)[0] == 1
    expected = 2 * np.logical_and(mask > 0, truth).sum() / max((mask > 0).sum() + truth.sum(), 1)
    assert row["dice"] == pytest.approx(expected, abs=1e-6)


def test_synthct_translator_runs_on_its_weight_average(phantom_dir, tmp_path):
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model, "synthct", ["--set", "translator.ema_decay=0.5"])) == 0
    state = load_checkpoint(latest_checkpoint(model / "translator"))
    average = {k.removeprefix("module."): v for k, v in state["G_ema"].items() if k.startswith("module.")}
    used = load_translator(model / "translator").net.state_dict()
    assert used.keys() == average.keys() and all(torch.equal(used[k], average[k]) for k in used)
    assert any(not torch.equal(average[k], state["G"][k]) for k in average)  # the average, not the last step


def test_fit_resume_finishes_an_interrupted_fit(phantom_dir, tmp_path):
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model)) == 0
    (model / "model.json").unlink()  # as if stopped after training, before the QC and model.json
    shutil.rmtree(model / "qc")
    before = latest_checkpoint(model / "segmenter").stat().st_mtime_ns
    assert main(_args(phantom_dir, model, extra=["--resume"])) == 0
    assert read_model(model)[0] == "direct"
    assert latest_checkpoint(model / "segmenter").stat().st_mtime_ns == before  # the finished stage kept
    assert main(_args(phantom_dir, model)) == 2  # a finished model is not overwritten


def test_fit_self_trains_from_its_segmenter_on_pseudo_labelled_mris(phantom_dir, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model, extra=["--set", "adapt.iterations=2"])) == 0
    said = capsys.readouterr().out
    listing = model / "pseudo" / "dataset.json"
    rows = json.loads((model / "pseudo" / "summary.json").read_text())["cases"]
    plausible = [r["case"] for r in rows if r["status"] == "ok" and not
                 {"empty_mask", "liver_volume_low", "liver_volume_high"} & set(r["flags"].split(";"))]
    kept = json.loads(listing.read_text())["training"]
    assert [Path(e["image"]).name.removesuffix(".nii.gz") for e in kept] == plausible
    assert all(Path(e["label"]) == model / "pseudo" / Path(e["image"]).name for e in kept)
    if not kept:  # a 2-iteration segmenter's masks: the fit says so and keeps the segmenter
        assert "no MRI has a plausible mask" in said and Path(read_model(model)[2]) == model / "segmenter"
    # plausible pseudo-labels (here the phantoms' own masks) where the pass left them: --resume self-trains
    (model / "model.json").unlink()
    mris = sorted((phantom_dir / "mri").glob("*.nii.gz"))
    listing.write_text(json.dumps({"training": [{"image": str(p), "label": str(phantom_dir / "labels" / p.name)}
                                                for p in mris]}))
    assert main(_args(phantom_dir, model, extra=["--set", "adapt.iterations=2", "--resume"])) == 0
    assert Path(read_model(model)[2]) == model / "adapted"
    cfg = load_config(model / "adapted" / "config.yaml")
    assert (cfg.train.init, cfg.target.images, cfg.target.ratio) == (str(model / "segmenter"), str(listing), 0.5)
    assert cfg.train.iterations == 2 and cfg.optim.lr == pytest.approx(3e-4)
    start = load_checkpoint(latest_checkpoint(model / "segmenter"))["net"]
    tuned = load_checkpoint(latest_checkpoint(model / "adapted"))["net"]
    assert any(not torch.equal(start[k], tuned[k]) for k in start)  # fine-tuned from it, not a copy


class _Liver(torch.nn.Module):
    def forward(self, x):
        return torch.cat([-x, x], dim=1)  # 2 classes: bright = liver


def test_fit_with_a_frozen_torchscript_segmenter(phantom_dir, tmp_path, capsys):
    ts = tmp_path / "seg.pt"
    torch.jit.script(_Liver()).save(str(ts))
    (tmp_path / "seg.json").write_text(json.dumps({"spatial_dims": 2, "window": [-175, 250], "output": "softmax",
                                                    "orientation": "RAS"}))
    before = ts.read_bytes()
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model, extra=["--segmenter", str(ts)])) == 0
    assert "without the segmentation-consistency loss" in capsys.readouterr().out
    route, translator, segmenter, liver_index = read_model(model)
    assert route == "synthct" and segmenter == str(model / "user_segmenter" / "seg.pt") and liver_index is None
    assert (model / "user_segmenter" / "seg.json").is_file()  # copied with its sidecar: the model stands alone
    assert not (model / "segmenter").exists()  # the user's segmenter is never retrained
    assert ts.read_bytes() == before
    mri = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    assert main(["pipeline", "mri-liver", "--model", str(model), str(mri), str(tmp_path / "m.nii.gz")]) == 0


def _bad_run(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "medgen", *args], capture_output=True, text=True)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case", ["no_liver_value", "empty_mri", "labels_off_grid", "ct_without_labels",
                                  "label_map_without_labels"])
def test_fit_refuses_bad_data_in_one_line_writing_nothing(phantom_dir, tmp_path, case):
    ct, labels, mri = phantom_dir / "ct", phantom_dir / "labels", phantom_dir / "mri"
    label_map = "1:1"
    if case == "no_liver_value":
        label_map = "42:1"
    elif case == "empty_mri":
        mri = tmp_path / "empty"
        mri.mkdir()
    else:
        labels = tmp_path / "labels"
        shutil.copytree(phantom_dir / "labels", labels)
        img = nib.load(labels / "case_000.nii.gz")
        shifted = img.affine.copy()
        shifted[:3, 3] += 30.0
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted, img.header), labels / "case_000.nii.gz")
    out = tmp_path / "model"
    data = {"--ct": ct, "--ct-labels": labels, "--label-map": label_map}
    if case.endswith("without_labels"):  # unlabelled CTs need a frozen segmenter to label them (fit mri-ct's)
        del data["--ct-labels"]
        if case == "ct_without_labels":
            del data["--label-map"]
    code, err = _bad_run(["fit", "mri-liver", *[str(a) for kv in data.items() for a in kv], "--mri", str(mri),
                          "--out", str(out)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("medgen: error: "), err
    assert "Traceback" not in err and not out.exists()
    expected = {"no_liver_value": "liver value 42", "empty_mri": "holds no volumes", "labels_off_grid": "grid",
                "ct_without_labels": "--ct needs --ct-labels (and --label-map), or --segmenter",
                "label_map_without_labels": "--label-map maps the values of --ct-labels"}[case]
    assert expected in lines[0]


def test_pipeline_needs_a_segmenter_with_a_translator(tmp_path, capsys):
    assert main(["pipeline", "mri-liver", "--translator", str(tmp_path), "a.nii.gz", "b.nii.gz"]) == 2
    assert "--translator needs --segmenter" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    assert main(["pipeline", "mri-liver", "--model", str(tmp_path / "m"), "x.nii.gz", "y.nii.gz"]) == 2
    assert "not a fit model" in capsys.readouterr().err


def test_a_fit_killed_mid_stage_resumes_to_the_same_model(phantom_dir, tmp_path):
    import os
    import signal
    import time

    extra = ["--set", "segmenter.train.iterations=12", "--set", "segmenter.train.checkpoint_every=3",
             "--set", "segmenter.train.keep_checkpoints=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_PROGRESS": "0"}  # the same threads in every run

    def fit(out, more=()):
        return [sys.executable, "-m", "medgen", *_args(phantom_dir, out, extra=[*extra, *more])]

    whole = tmp_path / "whole"
    assert subprocess.run(fit(whole), env=env, capture_output=True).returncode == 0
    model = tmp_path / "killed"
    proc = subprocess.Popen(fit(model), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if latest_checkpoint(model / "segmenter") is not None:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    if (model / "model.json").exists():
        pytest.skip("the fit finished before it could be killed")
    assert subprocess.run(fit(model, ["--resume"]), env=env, capture_output=True).returncode == 0
    assert json.loads((model / "model.json").read_text()) == json.loads((whole / "model.json").read_text())
    for mask in sorted((whole / "qc").glob("*.nii.gz")):
        assert np.array_equal(load_image(mask)[0], load_image(model / "qc" / mask.name)[0]), mask.name


def test_synthct_l1_counts_only_samples_with_a_ct():
    """Real MRIs mixed into the translator's training (has_ct 0) add no L1: only the frozen segmenter judges them."""
    from medgen.engines.synthct import HAS_CT, synthct_step
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTLossConfig

    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.zero_()
    step = synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), SynthCTLossConfig(lambda_l1=1.0, lambda_seg=0.0),
                        torch.device("cpu"))
    x = torch.zeros(2, 1, 4, 4)
    ct = torch.stack([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 3.0)])  # |G(x) - ct|: 0.5 and 3.0
    batch = {Keys.MRI: x, Keys.IMAGE: ct, Keys.LABEL: torch.zeros(2, 1, 4, 4)}
    assert step(None, batch)["l1"] == pytest.approx(1.75)  # without the flag: every sample has its CT
    assert step(None, {**batch, HAS_CT: torch.tensor([[1.0], [0.0]])})["l1"] == pytest.approx(0.5)
    assert step(None, {**batch, HAS_CT: torch.tensor([[0.0], [0.0]])})["l1"] == 0.0


def test_synthct_segmentation_loss_can_judge_the_mris_alone():
    """loss.seg_painted false: the frozen segmenter judges only the MRI samples (has_ct 0); the painted CTs get L1
    alone. The segmentation loss is Dice + cross-entropy of the segmenter's liver against the sample's label."""
    from medgen.engines.synthct import HAS_CT, synthct_step
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTLossConfig

    seen = []

    def segmenter(fake):  # a constant liver probability of 0.8, recording the samples it is shown
        seen.append(len(fake))
        return torch.full_like(fake, 0.8)

    net = torch.nn.Conv2d(1, 1, 1)
    liver = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])  # the CT's label empty, the MRI's all liver
    batch = {Keys.MRI: torch.zeros(2, 1, 4, 4), Keys.IMAGE: torch.zeros(2, 1, 4, 4), Keys.LABEL: liver,
             HAS_CT: torch.tensor([[1.0], [0.0]])}

    def run(loss_cfg, b):
        return synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), loss_cfg, torch.device("cpu"), segmenter)(None, b)

    mri_only = SynthCTLossConfig(lambda_l1=1.0, lambda_seg=1.0, seg_painted=False)
    out = run(mri_only, batch)
    dice = 1 - 2 * 0.8 * 16 / (0.8 * 16 + 16)  # MONAI DiceLoss on the all-liver MRI sample alone
    assert seen == [1] and out["seg"] == pytest.approx(dice - np.log(0.8), rel=1e-4)
    out = run(SynthCTLossConfig(lambda_l1=1.0, lambda_seg=1.0), batch)
    assert seen[-1] == 2 and out["seg"] > dice - np.log(0.8) + 0.5  # the empty CT label: 0.8 everywhere is wrong
    painted = {**batch, HAS_CT: torch.tensor([[1.0], [1.0]])}  # no MRI in the batch: no segmentation loss
    out = run(mri_only, painted)
    assert seen[-1] == 2 and len(seen) == 2 and out["seg"] == 0.0


def test_synthct_discriminator_judges_the_mri_outputs_against_real_ct():
    """lambda_gan: D learns real CT patches against the generator's outputs on the MRIs (has_ct 0) only, and the
    generator's loss gains the LSGAN term."""
    from medgen.engines.synthct import HAS_CT, synthct_step
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTDiscriminatorConfig, SynthCTLossConfig
    from medgen.networks.generators import build_discriminator

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 1)
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2)
    seen = []
    disc.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach().clone()))
    before = [p.detach().clone() for p in disc.parameters()]
    step = synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), SynthCTLossConfig(1.0, 0.0, lambda_gan=2.0),
                        torch.device("cpu"), disc=disc, opt_d=torch.optim.SGD(disc.parameters(), lr=0.1))
    x, ct = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    batch = {Keys.MRI: x, Keys.IMAGE: ct, Keys.LABEL: torch.zeros(4, 1, 16, 16), HAS_CT: torch.tensor([[1.], [1.], [0.], [0.]])}
    out = step(None, batch)
    fake = net(x).detach()
    assert [len(t) for t in seen] == [2, 2, 2]  # G's term on the 2 MRI outputs; then D on 2 real CTs, 2 MRI outputs
    assert torch.allclose(seen[0], fake[2:]) and torch.allclose(seen[1], ct[:2]) and torch.allclose(seen[2], fake[2:])
    assert out["loss"] == pytest.approx(out["l1"] + 2.0 * out["gan"], rel=1e-5) and np.isfinite(out["loss_d"])
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))  # D learned


def test_synthct_discriminator_on_the_pairs_judges_the_rendered_outputs_alone():
    """loss.gan_on=pairs: D judges the outputs on the synthetic pairs' renderings (not the MRIs'); a batch without a
    rendering adds no GAN term and leaves D as it was; gan_on=pairs without a renderer is refused by name."""
    from medgen.engines.synthct import HAS_CT, setup, synthct_step
    from medgen.errors import MedgenError
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTConfig, SynthCTDiscriminatorConfig, SynthCTLossConfig
    from medgen.networks.generators import build_discriminator

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 1)
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2)
    seen = []
    disc.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach().clone()))
    loss_cfg = SynthCTLossConfig(1.0, 0.0, lambda_gan=2.0, gan_on="pairs")
    step = synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), loss_cfg, torch.device("cpu"), disc=disc,
                        opt_d=torch.optim.SGD(disc.parameters(), lr=0.1), renderer=lambda ct: -ct, pairs_prob=1.0)
    x, ct = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    batch = {Keys.MRI: x, Keys.IMAGE: ct, Keys.LABEL: torch.zeros(4, 1, 16, 16), HAS_CT: torch.tensor([[1.], [1.], [0.], [0.]])}
    out = step(None, batch)
    rendered = net(-ct[:2]).detach()  # the CT samples' inputs replaced by their renderings
    assert out["pairs"] == 2 and [len(t) for t in seen] == [2, 2, 2]
    assert torch.allclose(seen[0], rendered) and torch.allclose(seen[1], ct[:2]) and torch.allclose(seen[2], rendered)
    assert out["loss"] == pytest.approx(out["l1"] + 2.0 * out["gan"], rel=1e-5) and np.isfinite(out["loss_d"])
    before = [p.detach().clone() for p in disc.parameters()]
    out = step(None, {**batch, HAS_CT: torch.zeros(4, 1)})  # MRIs alone: nothing rendered, nothing judged
    assert len(seen) == 3 and out["gan"] == out["loss_d"] == out["loss"] == out["l1"] == 0.0  # finite: no divergence
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    with pytest.raises(MedgenError, match="loss.gan_on must be mri, or pairs with pairs.ct2mri set, not 'pairs'"):
        setup(SynthCTConfig(loss=SynthCTLossConfig(lambda_gan=1.0, gan_on="pairs")), torch.device("cpu"))
    with pytest.raises(ValueError, match="must be mri or pairs, not 'both'"):
        SynthCTLossConfig(gan_on="both")


def test_synthct_structure_loss_keeps_the_mris_edges_whatever_their_contrast():
    """lambda_structure: 1 - the local squared correlation of the output with its input, on the MRI samples alone
    (has_ct 0): 0 for an inverted, rescaled copy of the MRI, 1 for a flat output; the loss gains that term. (MONAI's
    LNCC pads each window with zeros: the copies keep no offset, so that the padding is a copy too.)"""
    from medgen.engines.synthct import HAS_CT, synthct_step
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTLossConfig

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 1)

    def run(weight, bias, has_ct):
        with torch.no_grad():
            net.weight.fill_(weight), net.bias.fill_(bias)
        x = torch.stack([torch.zeros(1, 12, 12), torch.rand(1, 12, 12)])  # a flat painted CT, a textured MRI
        batch = {Keys.MRI: x, Keys.IMAGE: torch.zeros(2, 1, 12, 12), Keys.LABEL: torch.zeros(2, 1, 12, 12),
                 HAS_CT: torch.tensor(has_ct)}
        step = synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0),
                            SynthCTLossConfig(1.0, 0.0, lambda_structure=3.0, structure_kernel=5), torch.device("cpu"))
        return step(None, batch)

    out = run(-2.0, 0.0, [[1.0], [0.0]])  # the MRI's contrast inverted: its edges all kept
    assert out["structure"] == pytest.approx(0.0, abs=1e-3)
    assert out["loss"] == pytest.approx(out["l1"] + 3.0 * out["structure"], rel=1e-5)
    assert run(0.0, 0.0, [[1.0], [0.0]])["structure"] == pytest.approx(1.0)  # a flat output: no edge kept
    both = run(-2.0, 0.0, [[1.0], [1.0]])  # no MRI in the batch: every output judged, the flat one's windows score 0
    assert both["structure"] == pytest.approx(0.5, abs=1e-3)


def test_synthct_liver_loss_pulls_the_mris_liver_to_the_cts_level():
    """lambda_liver: |the output's mean inside the target MRIs' liver - the CTs' liver level|; the painted CTs' livers
    and the MRIs' other voxels do not count, an MRI without a liver adds nothing; refused without target MRIs."""
    from medgen.engines.synthct import HAS_CT, setup, synthct_step
    from medgen.errors import MedgenError
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTConfig, SynthCTLossConfig

    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0), net.bias.fill_(0.0)  # the output is the input
    mri = torch.cat([torch.full((1, 2, 4), 0.3), torch.full((1, 2, 4), -0.6)], 1)  # its liver the upper half
    x = torch.stack([torch.full((1, 4, 4), 0.9), mri])
    liver = torch.stack([torch.ones(1, 4, 4), torch.cat([torch.ones(1, 2, 4), torch.zeros(1, 2, 4)], 1)])
    batch = {Keys.MRI: x, Keys.IMAGE: torch.zeros(2, 1, 4, 4), Keys.LABEL: liver, HAS_CT: torch.tensor([[1.0], [0.0]])}
    step = synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), SynthCTLossConfig(1.0, 0.0, lambda_liver=4.0),
                        torch.device("cpu"), level=-0.2)
    out = step(None, batch)
    assert out["liver"] == pytest.approx(0.5)  # the MRI's liver at 0.3; the painted CT's 0.9 and the MRI's -0.6 unseen
    assert out["loss"] == pytest.approx(out["l1"] + 4.0 * 0.5)
    assert step(None, {**batch, Keys.LABEL: torch.zeros(2, 1, 4, 4)})["liver"] == 0.0
    with pytest.raises(MedgenError, match="lambda_liver"):
        setup(SynthCTConfig(loss=SynthCTLossConfig(lambda_liver=1.0)), torch.device("cpu"))


def test_synthct_hold_keeps_the_mris_outputs_near_a_frozen_translators_at_the_coarse_scale():
    """lambda_hold: the L1 between the target MRIs' outputs and the holder's, both blurred (hold_sigma voxels): a
    constant offset counts whole, a checkerboard (texture) barely; the painted CTs' outputs never; refused without a
    holder run and without target MRIs."""
    from medgen.engines.synthct import HAS_CT, setup, synthct_step
    from medgen.errors import MedgenError
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTConfig, SynthCTLossConfig

    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0), net.bias.fill_(0.0)  # the output is the input
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 0.8 - 0.4  # +-0.4, mean 0
    x = torch.stack([torch.full((1, 16, 16), 0.9), 0.1 + checker[None]])  # a painted CT, an MRI with texture
    batch = {Keys.MRI: x, Keys.IMAGE: torch.zeros(2, 1, 16, 16), Keys.LABEL: torch.zeros(2, 1, 16, 16),
             HAS_CT: torch.tensor([[1.0], [0.0]])}

    def run(holder):
        loss = SynthCTLossConfig(1.0, 0.0, lambda_hold=2.0, hold="runs/t", hold_sigma=2.0)
        return synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), loss, torch.device("cpu"),
                            holder=holder)(None, batch)

    out = run(lambda mri: torch.full_like(mri, -0.2))  # a flat holder 0.3 below the MRI output's mean
    assert out["hold"] == pytest.approx(0.3, abs=0.02)  # the checkerboard blurred away; the painted CT's 0.9 unseen
    assert out["loss"] == pytest.approx(out["l1"] + 2.0 * out["hold"], rel=1e-5)
    assert run(lambda mri: torch.full_like(mri, 0.1))["hold"] < 0.02  # the same coarse image: texture is free
    with pytest.raises(ValueError, match="hold"):
        SynthCTLossConfig(lambda_hold=1.0)
    with pytest.raises(MedgenError, match="lambda_hold"):
        setup(SynthCTConfig(loss=SynthCTLossConfig(lambda_hold=1.0, hold="runs/t")), torch.device("cpu"))


def test_synthct_synthetic_pairs_replace_a_ct_samples_painted_input_by_its_rendering():
    """pairs: with chance pairs_prob a CT sample's input is the renderer's output on its real CT (not its painted copy),
    under the same L1 to that CT; the MRI samples are never rendered; organ gains on every structure, or on the
    labelled organs alone; a probability outside [0, 1] and an unknown gain_on are refused."""
    from medgen.data.synthseg import BODY_FIRST
    from medgen.engines.synthct import HAS_CT, setup, synthct_step
    from medgen.errors import MedgenError
    from medgen.keys import Keys
    from medgen.models.synthct import SynthCTConfig, SynthCTLossConfig, SynthCTPairsConfig

    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0), net.bias.fill_(0.0)  # the output is the input
    rendered = []

    def renderer(ct):  # a CT -> MRI function: records what it is given, gives 0.5 - ct
        rendered.append(ct.clone())
        return 0.5 - ct

    ct = torch.stack([torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), -0.4), torch.zeros(1, 4, 4)])
    x = torch.stack([torch.full((1, 4, 4), 0.9), torch.full((1, 4, 4), 0.6), torch.full((1, 4, 4), -0.8)])
    batch = {Keys.MRI: x, Keys.IMAGE: ct, Keys.LABEL: torch.zeros(3, 1, 4, 4),
             HAS_CT: torch.tensor([[1.0], [1.0], [0.0]])}  # two painted CTs and an MRI (no CT, no L1)

    def run(prob):
        rendered.clear()
        return synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), SynthCTLossConfig(1.0, 0.0),
                            torch.device("cpu"), renderer=renderer, pairs_prob=prob)(None, batch)

    out = run(1.0)  # both CTs rendered: inputs 0.3 and 0.9, targets 0.2 and -0.4
    assert out["pairs"] == 2 and out["l1"] == pytest.approx((0.1 + 1.3) / 2)
    assert len(rendered) == 1 and torch.equal(rendered[0], ct[:2])  # the CTs only, never the MRI
    assert torch.equal(batch[Keys.MRI], x)  # the batch itself untouched
    out = run(0.0)  # the painted copies: |0.9 - 0.2| and |0.6 + 0.4|
    assert out["pairs"] == 0 and out["l1"] == pytest.approx((0.7 + 1.0) / 2) and not rendered
    seen = []  # organ_gain: each structure of the rendering (generation labels) scaled by its own gain above -1
    net.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach().clone()))
    gen = torch.zeros(3, 1, 4, 4, dtype=torch.int16)
    gen[:, :, :2] = 5  # two structures per sample: label 5 above, 0 below
    torch.manual_seed(0)
    synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), SynthCTLossConfig(1.0, 0.0), torch.device("cpu"),
                 renderer=renderer, pairs_prob=1.0, organ_gain=4.0)(None, {**batch, Keys.GEN: gen})
    gains = (seen[0][:2] + 1) / (0.5 - ct[:2] + 1)  # the rendered CTs' intensities above -1, relative to the rendering
    for g in gains:
        top, bottom = g[0, :2], g[0, 2:]
        assert torch.allclose(top, top[0, 0]) and torch.allclose(bottom, bottom[0, 0])  # one gain per structure
        assert 0.25 - 1e-5 <= float(top[0, 0]) <= 4 + 1e-5 and not torch.isclose(top[0, 0], bottom[0, 0])
    assert torch.equal(seen[0][2], x[2])  # the MRI as it was
    gen[:, :, 2:] = BODY_FIRST  # the lower half a body intensity class: organs_only leaves it at gain 1
    seen.clear()
    synthct_step(net, torch.optim.SGD(net.parameters(), lr=0.0), SynthCTLossConfig(1.0, 0.0), torch.device("cpu"),
                 renderer=renderer, pairs_prob=1.0, organ_gain=4.0, organs_only=True)(None, {**batch, Keys.GEN: gen})
    gains = (seen[0][:2] + 1) / (0.5 - ct[:2] + 1)
    for g in gains:
        assert torch.allclose(g[0, 2:], torch.ones(())) and torch.allclose(g[0, :2], g[0, 0, 0])
        assert not torch.isclose(g[0, 0, 0], torch.ones(()))
    with pytest.raises(ValueError, match="must be all or organs, not 'body'"):
        SynthCTPairsConfig("runs/smri", gain_on="body")
    for bad in (SynthCTPairsConfig("runs/smri", 1.5), SynthCTPairsConfig("runs/smri", 0.5, 0.5)):
        with pytest.raises(MedgenError, match=r"pairs.prob must lie in \[0, 1\] and pairs.organ_gain be >= 1"):
            setup(SynthCTConfig(pairs=bad), torch.device("cpu"))


def test_the_frozen_segmenter_reads_a_3d_translator_slice_by_slice():
    """A 3D synthct translator trains through a 2D segmenter: each axial slice of its patch is segmented alone."""
    from medgen.engines.synthct import FrozenSegmenter

    torch.manual_seed(0)
    seg = FrozenSegmenter.__new__(FrozenSegmenter)
    torch.nn.Module.__init__(seg)
    seg.net, seg.window, seg.seg_window, seg.liver_index, seg.multiple = torch.nn.Conv2d(1, 2, 3, padding=1), \
        [-175.0, 250.0], [-100.0, 200.0], 1, 4
    volume = torch.rand(2, 1, 10, 12, 5) * 2 - 1
    prob = seg(volume)
    assert prob.shape == volume.shape
    for k in range(volume.shape[-1]):
        assert torch.allclose(prob[..., k], seg(volume[..., k]), atol=1e-6)


def test_the_frozen_route_trains_its_translator_on_the_pseudo_labelled_mris(phantom_dir, tmp_path):
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model, "synthct", ["--set", "translator.target.ratio=0.5"])) == 0
    listing = json.loads((model / "pseudo" / "dataset.json").read_text())["training"]
    cfg = load_config(model / "translator" / "config.yaml")
    assert listing and cfg.target.ratio == 0.5 and cfg.target.images == str(model / "pseudo" / "dataset.json")


def test_target_mris_without_the_frozen_segmenter_are_refused(phantom_dir, tmp_path):
    from medgen.engines.train import train
    from medgen.errors import MedgenError

    ds = phantom_dir / "dataset.json"
    sets = [f"{k}={v}" for k, v in TRANS.items()] + [f"data.images={ds}", f"data.labels={ds}",
                                                      f"target.images={ds}", f"target.labels={ds}", "target.ratio=0.5"]
    with pytest.raises(MedgenError, match="through the frozen segmenter alone"):
        train("synthct_2d", tmp_path / "t", sets)
    assert not (tmp_path / "t").exists()
    with pytest.raises(MedgenError, match="segmentation loss on the target MRIs alone"):
        train("synthct_2d", tmp_path / "t", sets[:-3] + ["loss.seg_painted=false", "segmenter=x"])
    assert not (tmp_path / "t").exists()


def test_fit_mri_ct_then_translate_with_the_model(phantom_dir, tmp_path, capsys):
    from medgen.models.shipped import shipped_dir

    model = tmp_path / "model"
    args = ["fit", "mri-ct", "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
            "--label-map", "1:1", "--mri", str(phantom_dir / "mri"), "--out", str(model), "--set", "device=cpu"]
    assert main(args + [a for k, v in TRANS.items() for stage in ("translator", "ct2mri")
                        for a in ("--set", f"{stage}.{k}={v}")]
                + ["--set", "pairs.iterations=3", "--set", "pairs.prob=1", "--set", "pairs.organ_gain=2"]) == 0
    assert "medgen translate" in capsys.readouterr().out
    route, translator, segmenter, _ = read_model(model)
    assert json.loads((model / "model.json").read_text())["ct2mri"] == "ct2mri"
    pairs = load_config(model / "translator_pairs" / "config.yaml")  # the translator trained on with synthetic pairs
    assert (pairs.pairs.ct2mri, pairs.pairs.prob, pairs.pairs.organ_gain, pairs.train.init, pairs.train.iterations) == (
        str(model / "ct2mri"), 1.0, 2.0, str(model / "translator"), 3)
    rows = [line.split(",") for line in (model / "translator_pairs" / "metrics.csv").read_text().splitlines()[1:]]
    assert sum(float(r[3]) for r in rows if r[2] == "pairs") > 0  # CT samples were rendered (every one: prob 1)
    assert (pairs.segmenter, pairs.target.images) == (str(shipped_dir("ct-liver")), str(model / "pseudo" / "dataset.json"))
    back = load_config(model / "ct2mri" / "config.yaml")  # CT -> MRI: cycled through the fit's own translator
    assert (back.task, back.translator, back.target.images) == ("synthmri", str(model / "translator"),
                                                               str(model / "pseudo" / "dataset.json"))
    assert (route, Path(translator), segmenter) == ("synthct", model / "translator_pairs", "ct-liver")
    cfg = load_config(model / "translator" / "config.yaml")  # the preset: through the shipped ct-liver, MRIs mixed in
    assert (cfg.segmenter, cfg.target.ratio, cfg.target.images) == (str(shipped_dir("ct-liver")), 0.5,
                                                                    str(model / "pseudo" / "dataset.json"))
    assert (cfg.loss.seg_painted, cfg.loss.lambda_seg) == (False, 0.25)  # that loss on the MRIs alone, a quarter
    mri = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", str(model), str(mri), str(out)]) == 0  # the model folder is a translator
    sct, ref = load_image(out)
    _, mri_ref = load_image(mri)
    assert sct.shape == mri_ref.shape and np.allclose(ref.affine, mri_ref.affine)
    assert nib.load(str(out)).get_data_dtype() == np.int16 and -175 <= sct.min() and sct.max() <= 250  # the window
    ct = sorted((phantom_dir / "ct").glob("*.nii.gz"))[0]
    smri_path = tmp_path / "smri.nii.gz"
    assert main(["translate", str(model), str(ct), str(smri_path), "--direction", "ct2mri"]) == 0
    smri, smri_ref = load_image(smri_path)
    _, ct_ref = load_image(ct)
    lo, hi = json.loads((model / "ct2mri" / "norm.json").read_text())["mri_scale"]  # the fit MRIs' median range
    assert smri.shape == ct_ref.shape and np.allclose(smri_ref.affine, ct_ref.affine)
    assert lo - 1e-3 <= smri.min() and smri.max() <= hi + 1e-3 and smri.std() > 0
    capsys.readouterr()
    assert main(["fit", "mri-ct", "--mri", str(phantom_dir / "mri"), "--out", str(tmp_path / "no_ct")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medgen: error:") and "fit mri-ct" in err and "\n" not in err
    assert not (tmp_path / "no_ct").exists()


def test_fit_mri_ct_with_label_input_translates_a_ct_with_its_labels(phantom_dir, tmp_path, capsys):
    from medgen.engines.synthct import FrozenTranslator
    from medgen.errors import MedgenError

    model = tmp_path / "model"
    args = ["fit", "mri-ct", "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
            "--label-map", "1:1,2:2", "--mri", str(phantom_dir / "mri"), "--out", str(model), "--set", "device=cpu",
            "--set", "ct2mri.label_input=true", "--set", "ct2mri.loss.lambda_liver=1", "--set",
            "ct2mri.generator.name=pointwise"]
    assert main(args + [a for k, v in TRANS.items() for stage in ("translator", "ct2mri")
                        for a in ("--set", f"{stage}.{k}={v}")]
                + ["--set", "ct2mri.data.pos_prob=1", "--set", "ct2mri.train.batch_size=4"]) == 0  # CTs on labels
    assert "translator_pairs: ct2mri/ reads the CTs' labels (label_input)" in capsys.readouterr().out  # no pairs
    assert read_model(model)[1] == str(model / "translator") and not (model / "translator_pairs").exists()
    back = load_config(model / "ct2mri" / "config.yaml")
    assert back.label_input and back.data.label_map == {1: 1, 2: 2} and back.loss.lambda_liver == 1
    rows = [line.split(",") for line in (model / "ct2mri" / "metrics.csv").read_text().splitlines()[1:]]
    liver = [float(r[3]) for r in rows if r[2] == "liver"]  # the liver-level loss against the pseudo-labels' level
    assert liver and min(liver) >= 0 and max(liver) > 0  # (0 only without the level or without a liver in the CTs)
    assert load_translator(model, "ct2mri").net[0].in_channels == 3  # the CT and its 2 classes
    with pytest.raises(MedgenError, match="reads the CT's label map too"):  # no synthetic pairs from it
        FrozenTranslator(str(model / "ct2mri"), [-175, 250], torch.device("cpu"), "ct2mri")
    ct = sorted((phantom_dir / "ct").glob("*.nii.gz"))[0]
    labels = phantom_dir / "labels" / ct.name
    out = tmp_path / "smri.nii.gz"
    assert main(["translate", str(model), str(ct), str(out), "--direction", "ct2mri", "--labels", str(labels)]) == 0
    smri, ref = load_image(out)
    _, ct_ref = load_image(ct)
    assert smri.shape == ct_ref.shape and np.allclose(ref.affine, ct_ref.affine) and smri.std() > 0
    ct_array, label = load_image(ct)[0], load_image(labels)[0]
    translator = load_translator(model, "ct2mri", "cpu")  # pointwise: each voxel from its CT value and its classes
    with_labels, without = (translator.translate(ct_array, ct_ref, lab)[0] for lab in (label, np.zeros_like(label)))
    assert np.allclose(with_labels, smri, atol=1e-3)  # the command's output
    inside, outside = np.isin(label, (1, 2)), ~np.isin(label, (1, 2))
    assert not np.allclose(with_labels[inside], without[inside]) and np.allclose(with_labels[outside], without[outside])
    for extra, problem in (([], "give --labels"), (["--labels", str(tmp_path / "none")], "no such file")):
        capsys.readouterr()
        folder = tmp_path / f"out_{len(extra)}"
        assert main(["translate", str(model), str(phantom_dir / "ct"), str(folder), "--direction", "ct2mri", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("medgen: error:") and problem in err and "\n" not in err and not folder.exists()
    some = tmp_path / "some_labels"  # a folder with the first CT's label map only: the other CTs fail on their line
    some.mkdir()
    shutil.copy(labels, some / labels.name)
    assert main(["translate", str(model), str(phantom_dir / "ct"), str(tmp_path / "some"), "--direction", "ct2mri",
                 "--labels", str(some)]) == 2
    written = sorted(p.name for p in (tmp_path / "some").glob("*.nii.gz"))
    missing = len(list((phantom_dir / "ct").glob("*.nii.gz"))) - 1
    assert written == [ct.name] and capsys.readouterr().err.count("no label map of this case") == missing
    capsys.readouterr()
    mri = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    assert main(["translate", str(model), str(mri), str(tmp_path / "sct.nii.gz"), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert "reads no label map" in err and "\n" not in err and not (tmp_path / "sct.nii.gz").exists()


def test_fit_mri_ct_without_mris_to_train_through_puts_the_loss_back_on_the_painted_cts(phantom_dir, tmp_path):
    """The preset's segmentation loss acts on the fit's MRIs alone; a translator given none of them (here
    target.ratio=0) trains that loss on the painted CTs instead of being refused."""
    model = tmp_path / "model"
    args = ["fit", "mri-ct", "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
            "--label-map", "1:1", "--mri", str(phantom_dir / "mri"), "--out", str(model), "--set", "device=cpu",
            "--set", "ct2mri.config=''", "--set", "translator.target.ratio=0"]
    assert main(args + [a for k, v in TRANS.items() for a in ("--set", f"translator.{k}={v}")]) == 0
    cfg = load_config(model / "translator" / "config.yaml")
    assert (cfg.loss.seg_painted, cfg.loss.lambda_seg, cfg.target.images) == (True, 0.25, None)


def test_fit_mri_ct_without_ct_labels_labels_the_cts_with_its_segmenter(phantom_dir, tmp_path):
    model = tmp_path / "model"
    args = ["fit", "mri-ct", "--ct", str(phantom_dir / "ct"), "--mri", str(phantom_dir / "mri"), "--out", str(model),
            "--set", "device=cpu", "--set", "ct2mri.config=''"]
    assert main(args + [a for k, v in TRANS.items() for a in ("--set", f"translator.{k}={v}")]) == 0
    listing = model / "ct_labels" / "dataset.json"
    entries = json.loads(listing.read_text())["training"]
    cts = sorted((phantom_dir / "ct").glob("*.nii.gz"))
    assert sorted(Path(e["image"]).name for e in entries) == [p.name for p in cts]  # every phantom CT has a liver
    for entry in entries:  # ct-liver's liver masks, on each CT's grid, overlapping the phantom's own liver label
        mask, mask_ref = load_image(entry["label"])
        _, ct_ref = load_image(entry["image"])
        truth = load_image(phantom_dir / "labels" / Path(entry["image"]).name)[0] == 1
        assert mask.shape == truth.shape and np.allclose(mask_ref.affine, ct_ref.affine)
        assert set(np.unique(mask)) == {0, 1} and (mask[truth] == 1).mean() > 0.5
    cfg = load_config(model / "translator" / "config.yaml")  # the translator paints those masks and body classes
    assert (cfg.data.images, cfg.data.labels, cfg.data.label_map) == (str(listing), str(listing), {1: 1})
    mri = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    assert main(["translate", str(model), str(mri), str(tmp_path / "sct.nii.gz")]) == 0
    assert load_image(tmp_path / "sct.nii.gz")[0].shape == load_image(mri)[0].shape


def test_fit_mri_ct_trains_a_3d_translator_through_the_2d_segmenter(phantom_dir, tmp_path):
    model = tmp_path / "model"
    sets = {**TRANS, "spatial_dims": 3, "data.patch_size": "[32, 32, 8]", "inference.roi_size": "[32, 32, 16]"}
    args = ["fit", "mri-ct", "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
            "--label-map", "1:1", "--mri", str(phantom_dir / "mri"), "--out", str(model), "--set", "device=cpu",
            "--set", "ct2mri.config=''"]
    assert main(args + [a for k, v in sets.items() for a in ("--set", f"translator.{k}={v}")]) == 0
    cfg = load_config(model / "translator" / "config.yaml")
    assert cfg.spatial_dims == 3 and cfg.target.ratio == 0.5 and cfg.segmenter  # MRIs mixed in, through ct-liver
    written = json.loads((model / "model.json").read_text())  # no ct2mri stage: nothing renders synthetic pairs
    assert (written["ct2mri"], written["translator"]) == (None, "translator") and not (model / "translator_pairs").exists()
    mri = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    assert main(["translate", str(model), str(mri), str(tmp_path / "sct.nii.gz")]) == 0
    assert load_image(tmp_path / "sct.nii.gz")[0].shape == load_image(mri)[0].shape


def test_translate_refuses_a_fit_model_without_a_translator(tmp_path, capsys):
    model = tmp_path / "direct"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"route": "direct", "segmenter": "mri-liver", "translator": None,
                                                  "liver_index": 1}))
    assert main(["translate", str(model), str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medgen: error: {model / 'model.json'}") and "no mri2ct translator" in err
    assert not (tmp_path / "out.nii.gz").exists()
