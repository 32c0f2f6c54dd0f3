"""The ``medgen`` command. Subcommands only parse arguments and call the library.

Every ``MedgenError`` becomes one line on stderr, ``medgen: error: <file>: <problem>``, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from medgen.errors import MedgenError

EXAMPLES = """\
examples:
  medgen info scan.nii.gz                                  geometry, intensities, modality guess
  medgen phantoms data/phantoms --cases 20 --seed 0         write the embedded phantom data set
  medgen train configs/demo_cyclegan_2d.yaml --out runs/t   train any model from a YAML config
  medgen translate runs/t mri/ synth_ct/                    MRI -> CT on whole volumes (file or folder)
  medgen segment runs/seg ct.nii.gz liver.nii.gz            CT liver segmentation
  medgen pipeline mri-liver --translator runs/t --segmenter runs/seg mri/ out/
  medgen synth runs/vae samples/ --n 20                     sample image+label pairs from a synthesizer
  medgen evaluate segmentation --pred out/ --truth labels/  Dice, HD95, ASSD per case and on average
  medgen demo demo_out                                      the whole job on phantoms (what `make demo` runs)
"""


def _cmd_info(args: argparse.Namespace) -> int:
    from medgen.info import describe

    for i, path in enumerate(args.paths):
        print(("\n" if i else "") + describe(path))
    return 0


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from medgen.phantoms import write_dataset

    info = write_dataset(args.out, args.cases, args.seed, tuple(args.shape), tuple(args.spacing),
                         args.weighting, args.overwrite, args.test)
    print(f"wrote {len(info['cases'])} phantom cases ({info['mri_weighting']} MRI, CT in HU, labels) "
          f"to {args.out} in {info['seconds']:.1f} s")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medgen.engines.train import train

    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if out is None:
        raise MedgenError(None, "--out RUN is required (or --resume RUN)")
    train(args.config, out, args.set, resume=bool(args.resume))
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from medgen.inference.translate import translate_files

    translate_files(args.run, args.input, args.output, args.direction, args.device, args.overwrite)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medgen.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from medgen.phantoms import DEFAULT_SHAPE, DEFAULT_SPACING

    parser = argparse.ArgumentParser(
        prog="medgen",
        description="MRI <-> CT translation, anatomy synthesis and the MRI liver pipeline.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help_text: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=f"{help_text} (e.g. {example})", description=help_text,
                           epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = add("info", _cmd_info, "print geometry, intensity percentiles and a modality guess",
            "medgen info scan.nii.gz")
    p.add_argument("paths", nargs="+", metavar="PATH", help="NIfTI/NRRD/MetaImage file or DICOM series directory")

    p = add("phantoms", _cmd_phantoms, "write procedural abdominal phantoms (paired CT, MRI, labels)",
            "medgen phantoms data/phantoms --cases 20 --seed 0")
    p.add_argument("out", help="output directory (gets ct/, mri/, labels/, dataset.json)")
    p.add_argument("--cases", type=_positive, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=_positive, nargs=3, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("SX", "SY", "SZ"))
    p.add_argument("--weighting", choices=("T1", "T2"), default="T1", help="MRI weighting")
    p.add_argument("--test", type=int, default=0, metavar="K",
                   help="hold out the last K cases: dataset.json gets 'training' and 'test' sections")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")

    p = add("train", _cmd_train, "train a model described by a YAML config (any task)",
            "medgen train configs/demo_cyclegan_2d.yaml --out runs/t --set train.iterations=500")
    p.add_argument("config", nargs="?", help="YAML config (configs/*.yaml); optional with --resume")
    p.add_argument("--out", help="run directory: config.yaml, checkpoints/, metrics.csv, tb/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.iterations=200 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue a run from its last checkpoint (RUN defaults to --out)")

    p = add("translate", _cmd_translate, "translate whole volumes with a trained CycleGAN run",
            "medgen translate runs/t mri/ synth_ct/ --direction mri2ct")
    p.add_argument("run", help="CycleGAN run directory")
    p.add_argument("input", help="a volume or a folder of volumes")
    p.add_argument("output", help="an output .nii.gz (for a single input) or a folder")
    p.add_argument("--direction", choices=("mri2ct", "ct2mri"), default="mri2ct")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    p = add("demo", _cmd_demo, "run the whole job on the embedded phantoms", "medgen demo demo_out")
    p.add_argument("out", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the wiring in a minute")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedgenError as exc:
        print(f"medgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medgen: interrupted", file=sys.stderr)
        return 130
