"""The ``medgen`` command line's arguments: one parser per subcommand, in the house style (a usage error is one
line, ``medgen: error: <problem>``, exit status 2). :mod:`medgen.cli` runs what they parse."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from medgen.models.shipped import SHIPPED
from medgen.phantoms import DEFAULT_SHAPE, DEFAULT_SPACING

LIVER_INDEX_HELP = ("output channel / class of the liver (default: the backend's own: 1, or a TorchScript "
                    "sidecar's liver_index)")

EXAMPLES = """\
examples:
  medgen info scan.nii.gz                                  geometry, intensities, modality guess
  medgen phantoms data/phantoms --cases 20 --seed 0         write the embedded phantom data set
  medgen train configs/demo_cyclegan_2d.yaml --out runs/t   train any model from a YAML config
  medgen translate runs/t mri/ synth_ct/                    MRI -> CT on whole volumes (file or folder)
  medgen segment mri.nii.gz liver.nii.gz --modality mri    liver mask with the shipped model, no training
  medgen pipeline mri-liver mri/ out/                       masks + QC summary for a folder of MRIs
  medgen fit mri-liver --mri mri/ --out model/              adapt the shipped model to your scanner
  medgen models                                             the shipped models and their cards
  medgen synth runs/vae samples/ --n 20                     sample image+label pairs from a synthesizer
  medgen evaluate segmentation --pred out/ --truth labels/  Dice, HD95, ASSD per case and on average
  medgen demo demo_out                                      the whole job on phantoms (what `make demo` runs)
"""


def _label_map(text: str | None) -> dict[int, int] | None:
    """``"5:1,6:2"`` -> ``{5: 1, 6: 2}``.

    >>> _label_map("5:1,6:2")
    {5: 1, 6: 2}
    """
    if not text:
        return None
    try:
        return {int(a): int(b) for a, b in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"label map {text!r} is not of the form SRC:CLASS[,SRC:CLASS...]") from None


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """How a synthesizer run is sampled; each option's default is the run's config key of the same name."""
    g = p.add_argument_group("sampling (default: the run's own config key of the same name)")
    g.add_argument("--temperature", type=_non_negative, metavar="T",
                   help="VAE, GAN: latents from N(0, T^2); a mixture component's or a posterior's spread x T")
    g.add_argument("--sampling", choices=("prior", "posterior", "mixture"),
                   help="VAE: latents from the prior, around the encodings of training patches, or from the mixture "
                        "fitted to them (both stored in the run)")
    g.add_argument("--mixture-components", type=_positive, metavar="C",
                   help="VAE: components of the latent mixture (another count than the stored fit's is fitted on the "
                        "stored encodings)")
    g.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                   help="VAE, GAN: keep each class's largest component in every sampled map")
    g.add_argument("--labels", metavar="RUN|training",
                   help="label2image: render this VAE/GAN run's label maps (the options above go to it), or "
                        "'training': the run's training label maps (these read the training data)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where networks run (auto: CUDA when available)")


def _add_trust_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-bundle", action="store_true",
                   help="evaluate a MONAI bundle's $-expressions (Python code in its config); only for bundles you trust")


def _add_output_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-format", choices=("auto", "nifti", "dicom-seg", "both"), default="auto",
                   help="masks as NIfTI, DICOM-SEG (referencing a DICOM input series) or both (default auto: both "
                        "for DICOM input, NIfTI otherwise)")


def _add_overwrite(p: argparse.ArgumentParser, help_text: str = "replace existing outputs") -> None:
    p.add_argument("--overwrite", action="store_true", help=help_text)


class _Parser(argparse.ArgumentParser):
    """argparse in the house style: a usage error is one line, ``medgen: error: <problem>``, exit status 2 (the
    usage itself only with ``-h``)."""

    def error(self, message: str):
        self.exit(2, f"medgen: error: {message.removeprefix('argument ')}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medgen",
        description="MRI <-> CT translation, anatomy synthesis and the MRI liver pipeline.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=f"{help_text} (e.g. {example})", description=help_text,
                           epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(command=name)
        return p

    for group in (_data_commands, _training_commands, _inference_commands, _evaluation_commands):
        group(add)
    return parser


def _data_commands(add: Callable) -> None:
    """The subcommands of the data: info, phantoms."""
    p = add("info", "print geometry, intensity percentiles and a modality guess",
            "medgen info scan.nii.gz")
    p.add_argument("paths", nargs="+", metavar="PATH", help="NIfTI/NRRD/MetaImage file or DICOM series directory")

    p = add("phantoms", "write procedural abdominal phantoms (paired CT, MRI, labels)",
            "medgen phantoms data/phantoms --cases 20 --seed 0")
    p.add_argument("out", help="output directory (gets ct/, mri/, labels/, dataset.json)")
    p.add_argument("--cases", type=_positive, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=_positive, nargs=3, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("SX", "SY", "SZ"))
    p.add_argument("--weighting", choices=("T1", "T2"), default="T1", help="MRI weighting")
    p.add_argument("--test", type=int, default=0, metavar="K",
                   help="hold out the last K cases: dataset.json gets 'training' and 'test' sections")
    _add_overwrite(p, "replace an existing data set")


def _training_commands(add: Callable) -> None:
    """The subcommands of training: train, models, fit."""
    p = add("train", "train a model described by a YAML config (any task)",
            "medgen train configs/demo_cyclegan_2d.yaml --out runs/t --set train.iterations=500")
    p.add_argument("config", nargs="?", help="YAML config (configs/*.yaml); optional with --resume")
    p.add_argument("--out", help="run directory: config.yaml, checkpoints/, metrics.csv, tb/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.iterations=200 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue a run from its last checkpoint (RUN defaults to --out)")

    p = add("models", "list the ready-made models shipped in the package, with their cards",
            "medgen models mri-liver")
    p.add_argument("name", nargs="?", choices=SHIPPED, help="show this model's whole card")

    p = add("fit", "fit a model directory to your scanner; mri-liver: the shipped segmenter adapted to "
            "your unlabelled MRIs (and your labelled CTs, when given); mri-ct: an MRI <-> CT translator for your MRIs, "
            "from CTs (labelled or not)", "medgen fit mri-liver --mri mri/ --out model/")
    p.add_argument("name", choices=("mri-liver", "mri-ct"), help="what to fit")
    p.add_argument("--ct", help="CTs: a folder or a datalist JSON (mri-liver: optional, added to the adaptation)")
    p.add_argument("--ct-labels", help="their label maps (folder matched by file name, or the JSON); optional with a "
                   "frozen segmenter (mri-ct, --segmenter), whose liver masks of the CTs then label them")
    p.add_argument("--label-map", type=_label_map, help="CT label value -> class; the liver is class 1, "
                   "e.g. 6:1 (BTCV) or 5:1 (TotalSegmentator)")
    p.add_argument("--mri", required=True, help="unlabelled MRIs of the kind to segment: a folder or a datalist JSON")
    p.add_argument("--out", required=True, help="model directory (fit.yaml, model.json, one run per stage, qc/)")
    p.add_argument("--preset", default="cpu", help="cpu (2 cores) | gpu (one GPU) | a fit YAML (default cpu)")
    p.add_argument("--segmenter", help="a CT segmenter used frozen (ct-liver, or your run dir, TorchScript file, MONAI "
                   "bundle): the fit trains the MRI -> synthetic CT translator for it, on --ct (mri-ct: default "
                   "ct-liver)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key (route=synthct), or a stage's (segmenter.train.iterations=500)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted fit in --out (stage by stage)")
    _add_trust_bundle(p)


def _inference_commands(add: Callable) -> None:
    """The subcommands of inference: translate, segment, pipeline, synth."""
    p = add("translate", "translate whole volumes with a translator run or a `medgen fit mri-ct` model",
            "medgen translate runs/t mri/ synth_ct/ --direction mri2ct")
    p.add_argument("run", help="a translator run directory (cyclegan, synthct) or a `medgen fit mri-ct` model")
    p.add_argument("input", help="a volume or a folder of volumes")
    p.add_argument("output", help="an output .nii.gz (for a single input) or a folder")
    p.add_argument("--direction", choices=("mri2ct", "ct2mri"), default="mri2ct")
    p.add_argument("--labels", help="the inputs' label maps (a file, or a folder matched by file name): a ct2mri "
                   "translator fitted with --set ct2mri.label_input=true reads them")
    _add_device(p)
    _add_overwrite(p)

    p = add("segment", "segment the liver on CT or MRI volumes (a shipped model or any segmenter backend)",
            "medgen segment mri.nii.gz liver.nii.gz --modality mri")
    p.add_argument("paths", nargs="+", metavar="[SEG] INPUT OUTPUT",
                   help="SEG (optional): ct-liver, mri-liver, a run dir, TorchScript file (+ sidecar), MONAI bundle dir "
                        "or 'totalsegmentator' (default: the shipped model of --modality); INPUT: a volume or a "
                        "folder; OUTPUT: a mask .nii.gz (single input) or a folder")
    p.add_argument("--liver-index", type=int, default=None, help=LIVER_INDEX_HELP)
    p.add_argument("--modality", choices=("ct", "mri"), default=None,
                   help="input intensity preset of a medgen segmenter run (default: its training modality; "
                        "mri for a contrast-agnostic segmenter on MRIs)")
    _add_device(p)
    _add_trust_bundle(p)
    _add_output_format(p)
    _add_overwrite(p)

    p = add("pipeline", "run a pipeline; mri-liver: MRI -> liver mask on the MRI grid",
            "medgen pipeline mri-liver --model model/ mri/ out/")
    p.add_argument("name", choices=("mri-liver",), help="the pipeline")
    p.add_argument("input", help="an MRI volume or a folder of them")
    p.add_argument("output", help="mask .nii.gz for a single input, or an output folder (masks + summary.csv/json)")
    p.add_argument("--model", help="a model directory from `medgen fit mri-liver` (default, with no --segmenter: the "
                   "shipped mri-liver)")
    p.add_argument("--translator", help="translator run directory (MRI -> CT), with --segmenter")
    p.add_argument("--segmenter", help="ct-liver, mri-liver, a run dir, TorchScript file, MONAI bundle or "
                   "'totalsegmentator'")
    p.add_argument("--liver-index", type=int, default=None, help=LIVER_INDEX_HELP)
    p.add_argument("--save-sct", action="store_true", help="also write the synthetic CTs (OUT/sct/)")
    p.add_argument("--baseline", action="store_true",
                   help="also run the direct baseline: the segmenter on the MRI rescaled into the CT window")
    p.add_argument("--truth", help="folder of ground-truth label maps: adds Dice to the summary")
    p.add_argument("--label-map", type=_label_map, default=None, help="truth label -> class, e.g. 5:1 (default 1:1)")
    p.add_argument("--threshold", type=float, default=None, help="liver probability threshold (default 0.5)")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--qc-page", action=argparse.BooleanOptionalAction, default=True,
                   help="a folder run writes OUTPUT/index.html, a picture per case (default on)")
    _add_device(p)
    _add_trust_bundle(p)
    _add_output_format(p)
    _add_overwrite(p, "recompute finished cases and replace outputs")

    p = add("synth", "sample image+label pairs from a synthesizer run (VAE, GAN, label2image)",
            "medgen synth runs/vae synthetic/ --n 50 --seed 0")
    p.add_argument("run", help="synthesizer run directory (task vae, gan or label2image)")
    p.add_argument("out", help="output folder: images/, labels/, dataset.json")
    p.add_argument("--n", type=_positive, default=20, help="number of pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", metavar="SEG", help="keep only the pairs this segmenter (run, TorchScript, bundle) "
                                                   "agrees with: its mask of the image against the pair's label")
    p.add_argument("--min-dice", type=float, default=0.7, help="the agreement a kept pair needs (default 0.7)")
    p.add_argument("--judge-class", type=int, help="the synthesizer's class the judge segments (default: read "
                                                   "through the label maps of a medgen segmenter run)")
    _add_sampling(p)
    _add_device(p)
    _add_overwrite(p)


def _evaluation_commands(add: Callable) -> None:
    """The subcommands of evaluation and the demo."""
    p = add("evaluate", "evaluate segmentation, translation, synthesis or augmentation",
            "medgen evaluate segmentation --pred out/ --truth labels/ --label-map 5:1")
    ev = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    e = ev.add_parser("segmentation", help="Dice, HD95, ASSD (mm) per case and on average (CSV + JSON)")
    e.add_argument("--pred", required=True, help="folder of predicted masks")
    e.add_argument("--truth", required=True, help="folder of ground-truth label maps (matched by case name)")
    e.add_argument("--label-map", type=_label_map, default=None, help="truth label -> class, e.g. 5:1")
    e.add_argument("--pred-label-map", type=_label_map, default=None, help="prediction label -> class")
    e.add_argument("--out", help="report path without extension (default PRED/evaluation)")
    e = ev.add_parser("translation", help="SynthRAD MAE/PSNR/SSIM in the body beside the identity baseline")
    e.add_argument("--run", required=True, help="CycleGAN run directory")
    e.add_argument("--mri", required=True, help="MRIs (folder or datalist JSON)")
    e.add_argument("--ct", required=True, help="their paired CTs, matched by case name (--unpaired: any real CTs)")
    e.add_argument("--unpaired", action="store_true", help="no paired CT: organ HU against the real CTs' population "
                   "and anatomy kept through a frozen CT segmenter, beside identity and histogram matching")
    e.add_argument("--mri-labels", help="--unpaired: the MRIs' organ labels (CHAOS: liver 1, kidneys 2 3, spleen 4)")
    e.add_argument("--ct-labels", help="--unpaired: the CTs' labels (BTCV: liver 6, spleen 1, kidneys 2 3)")
    e.add_argument("--segmenter", default="ct-liver", help="--unpaired: the frozen CT segmenter (default ct-liver)")
    e.add_argument("--features", action="append", metavar="SEG", help="--unpaired: a medgen segmenter run whose "
                   "deepest features score FID/KID (repeatable; default --segmenter; the first gives fid and kid)")
    e.add_argument("--bootstrap", type=_positive, default=0, metavar="N", help="--unpaired: 95%% intervals of the FIDs over "
                   "N resamples of the MRIs and CTs, and of each method's FID minus the others' (default 0: off)")
    _add_device(e)
    e.add_argument("--out", help="report path without extension (default RUN/translation_eval; --unpaired: a .json)")
    e = ev.add_parser("synthesis", help="FID/KID, MS-SSIM diversity, label plausibility of a synthesizer")
    e.add_argument("--run", required=True, help="synthesizer run directory")
    e.add_argument("--features", required=True, help="segmenter run whose deepest features score FID/KID")
    e.add_argument("--n", type=_positive, default=200, help="samples of each kind")
    e.add_argument("--seed", type=int, default=0)
    _add_sampling(e)
    _add_device(e)
    e.add_argument("--out", help="output folder (default RUN/synthesis_eval)")
    e = ev.add_parser("augmentation", help="segmenter on k real cases vs k real + synthetic, over repeats")
    e.add_argument("--segmenter-config", required=True)
    e.add_argument("--synth-config", required=True,
                   help="a synthesizer config (trained on the k cases each repeat), or 'synthseg': label -> image "
                        "synthesis on the fly from the k cases' label maps (augment.synthseg.prob = --ratio)")
    e.add_argument("--train-images", required=True, help="labelled training pool (folder or datalist JSON)")
    e.add_argument("--train-labels", help="its labels (default: the same JSON)")
    e.add_argument("--test-images", help="held-out images (default: each repeat tests on the pool's cases it did "
                                          "not draw)")
    e.add_argument("--test-labels", help="held-out labels (default: the same JSON)")
    e.add_argument("--k", type=_positive, default=2, help="labelled training cases per repeat")
    e.add_argument("--repeats", type=_positive, default=3)
    e.add_argument("--ratio", type=float, default=0.5, help="fraction of synthetic samples in training")
    e.add_argument("--synthetic", type=_positive, default=200, help="synthetic pairs per repeat")
    e.add_argument("--reference", action="store_true",
                   help="add an arm trained on every labelled training case: the gain more real data gives")
    e.add_argument("--set-seg", action="append", default=[], metavar="KEY=VALUE", help="segmenter config override")
    e.add_argument("--set-synth", action="append", default=[], metavar="KEY=VALUE",
                   help="synthesizer override (with synthseg: a segmenter override of the synthetic arm only)")
    e.add_argument("--label-config", help="a VAE/GAN config of label maps, trained on the k cases too, whose maps "
                                          "the label2image --synth-config renders")
    e.add_argument("--set-label", action="append", default=[], metavar="KEY=VALUE",
                   help="label-map synthesizer override")
    e.add_argument("--judge-dice", type=float, metavar="D",
                   help="keep only the pairs the repeat's real-only segmenter agrees with at Dice >= D")
    e.add_argument("--out", required=True, help="experiment folder")

    p = add("demo", "run the whole job on the embedded phantoms", "medgen demo demo_out")
    p.add_argument("out", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the wiring in a minute")
