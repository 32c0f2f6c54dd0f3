"""The ``medgen`` command. Subcommands only parse arguments and call the library.

Every ``MedgenError`` becomes one line on stderr, ``medgen: error: <file>: <problem>``, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from medgen.data.datalist import input_output_pairs
from medgen.errors import MedgenError, WriteError
from medgen.info import describe
from medgen.io import new_output
from medgen.models.fit_model import read_model
from medgen.cliparser import build_parser
from medgen.models.shipped import DEFAULT_FOR, SHIPPED, describe_card, read_card
from medgen.phantoms import write_dataset
from medgen.validate import check_output_folder, check_output_of

# The commands after `info` and `phantoms` import their library modules lazily, when they run: those pull in torch
# and MONAI (3.5 s to import, measured), which `medgen --help`, `info` and `phantoms` (0.2-0.4 s) never need.


def _cmd_info(args: argparse.Namespace) -> int:
    for i, path in enumerate(args.paths):
        print(("\n" if i else "") + describe(path))
    return 0


def _cmd_phantoms(args: argparse.Namespace) -> int:
    info = write_dataset(args.out, args.cases, args.seed, tuple(args.shape), tuple(args.spacing),
                         args.weighting, args.overwrite, args.test)
    print(f"wrote {len(info['cases'])} phantom cases ({info['mri_weighting']} MRI, CT in HU, labels) "
          f"to {args.out} in {info['seconds']:.1f} s")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medgen.engines.train import train  # lazy: torch + MONAI (3.5 s)

    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if out is None:
        raise MedgenError(None, "--out RUN is required (or --resume RUN)")
    check_output_folder(out)  # before the data are read and the run directory is made
    train(args.config, out, args.set, resume=bool(args.resume))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    for name in [args.name] if args.name else SHIPPED:
        print(describe_card(read_card(name), full=bool(args.name)))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from medgen.engines.fit_mri_liver import fit_mri_liver  # lazy: torch + MONAI (3.5 s)

    check_output_folder(args.out)
    with new_output(args.out, undo=(WriteError,)):  # a full disk: no half-made model (an interrupted fit resumes)
        fit_mri_liver(args.ct, args.ct_labels, args.label_map, args.mri, args.out, args.preset, args.segmenter,
                      args.set, args.resume, pipeline=args.name)
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from medgen.inference.translate import translate_files  # lazy: torch + MONAI (3.5 s)

    written, failed = translate_files(args.run, args.input, args.output, args.direction, args.device, args.overwrite,
                                      args.labels)
    return _folder_status(written, failed, "translated")


def _folder_status(written: list, failed: int, done: str) -> int:
    """A folder run's last line and exit status: 2 when any input failed (each was reported on its line)."""
    if failed:
        print(f"{len(written)} cases {done}, {failed} failed")
    return 2 if failed else 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from medgen.inference.segment import segment_files  # lazy: torch + MONAI (3.5 s)

    if len(args.paths) not in (2, 3):
        raise MedgenError(None, "segment takes [SEG] INPUT OUTPUT (SEG: a shipped model, run, TorchScript file or "
                                "bundle; without it the shipped model of --modality)")
    args.segmenter, args.input, args.output = ([None] if len(args.paths) == 2 else []) + args.paths
    if args.segmenter is None:
        args.segmenter = DEFAULT_FOR[args.modality or "ct"]
    check_output_of(args.input, args.output, input_output_pairs(args.input, args.output)[0])
    written, failed = segment_files(args.segmenter, args.input, args.output, args.device, args.liver_index,
                                    args.overwrite, args.modality, args.output_format)
    return _folder_status(written, failed, "segmented")


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from medgen.inference.pipeline import PipelineOptions, run_pipeline  # lazy: torch + MONAI (3.5 s)

    options = PipelineOptions(args.threshold, args.largest_component, args.fill_holes, args.save_sct, args.baseline,
                              args.overwrite, args.output_format, args.qc_page)
    translator, segmenter, liver_index = args.translator, args.segmenter, args.liver_index
    if args.model:
        if translator or segmenter:
            raise MedgenError(args.model, "give either --model or --translator/--segmenter, not both")
        _, translator, segmenter, own_index = read_model(args.model)
        liver_index = own_index if liver_index is None else liver_index
    elif translator and not segmenter:
        raise MedgenError(translator, "--translator needs --segmenter (the CT segmenter it feeds)")
    elif not segmenter:
        segmenter = DEFAULT_FOR["mri"]  # no model given: the shipped contrast-agnostic segmenter, route direct
    rows, failed = run_pipeline(translator, segmenter, args.input, args.output, args.device,
                                liver_index, options, args.truth, args.label_map)
    ok = [r for r in rows if r["status"] == "ok"]
    route = "MRI -> synthetic CT -> segmenter" if translator else "MRI -> contrast-agnostic segmenter"
    for key, name in (("dice", f"pipeline ({route})"), ("baseline_dice", "direct baseline")):
        values = [r[key] for r in ok if key in r]
        if values:
            print(f"mean liver Dice, {name}: {sum(values) / len(values):.4f} over {len(values)} cases")
    print(f"{len(ok)} cases segmented, {failed} failed")
    return 2 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medgen import evaluation  # lazy: torch + MONAI (3.5 s)

    augmentation, segmentation = evaluation.augmentation, evaluation.segmentation
    synthesis, translation = evaluation.synthesis, evaluation.translation

    if args.kind == "segmentation":
        rows, summary, csv_path = segmentation.evaluate_segmentation(args.pred, args.truth, args.label_map,
                                                                     args.pred_label_map, args.out)
        print(f"{len(rows)} cases: Dice {summary['dice_mean']:.4f} +- {summary['dice_sd']:.4f}, "
              f"HD95 {summary['hd95_mean']:.2f} mm, ASSD {summary['assd_mean']:.2f} mm -> {csv_path}")
    elif args.kind == "translation" and args.unpaired:
        if not (args.mri_labels and args.ct_labels):
            raise MedgenError(None, "--unpaired needs --mri-labels (organ masks of the MRIs) and --ct-labels")
        report = translation.evaluate_unpaired(args.run, args.mri, args.mri_labels, args.ct, args.ct_labels,
                                               args.segmenter, args.device, args.out, args.features, args.bootstrap)
        for method, r in report["summary"].items():
            realism = "; ".join(f"FID {v['fid']:.2f}" + (" [{:.2f}, {:.2f}]".format(*v["fid_ci"]) if "fid_ci" in v else "")
                                + f", KID {v['kid']:.4f}" + (f", common field of view FID {v['fid_fov']:.2f}" if "fid_fov"
                                                             in v else "") + f" ({name})"
                                for name, v in r.get("by_features", {}).items())
            if "dice" not in r:  # real_vs_real: the realism floor
                print(f"{method}: {realism}")
                continue
            organs = ", ".join(f"{k} {v['median']:.0f} HU (|diff| {v['abs_diff']:.0f}, IQR overlap {v['iqr_overlap']:.2f})"
                               for k, v in r["organs"].items())
            print(f"{method}: liver Dice of {args.segmenter} {r['dice']:.3f}; {organs}" + (f"; {realism}" if realism else ""))
    elif args.kind == "translation":
        rows, m, csv_path = translation.evaluate_translation(args.run, args.mri, args.ct, args.device, args.out)
        print(f"{len(rows)} cases, inside the body: MAE {m['mae']:.1f} HU, PSNR {m['psnr']:.2f} dB, SSIM "
              f"{m['ssim']:.3f}; identity baseline MAE {m['identity_mae']:.1f} HU, PSNR {m['identity_psnr']:.2f} dB, "
              f"SSIM {m['identity_ssim']:.3f} -> {csv_path}")
    elif args.kind == "synthesis":
        options = _sampling_options(args, synthesis.SamplingOptions)
        report = synthesis.evaluate_synthesis(args.run, args.features, args.n, args.seed, args.device, options)
        path = synthesis.write_synthesis_report(report, args.out or Path(args.run) / "synthesis_eval", args.run,
                                                options=options)
        c1 = report.get("class_1", {})
        print(f"FID {report['fid']:.3f}, KID {report['kid']:.4f} (real vs real {report['fid_real_vs_real']:.3f}, "
              f"{report['kid_real_vs_real']:.4f}), MS-SSIM synthetic {report['ms_ssim_synthetic']:.3f} "
              f"(real {report['ms_ssim_real']:.3f}); class 1 plausible in {c1.get('plausible_fraction', 0):.0%} "
              f"of samples, every organ in {report['organs']['plausible_fraction']:.0%} (real samples "
              f"{report['organs']['real_plausible_fraction']:.0%}"
              + (f"; before keep_largest {report['organs']['raw_plausible_fraction']:.0%}"
                 if "raw_plausible_fraction" in report["organs"] else "") + f") -> {path}")
    else:
        report = augmentation.augmentation_experiment(
            args.segmenter_config, args.synth_config, (args.train_images, args.train_labels or args.train_images),
            (args.test_images, args.test_labels or args.test_images) if args.test_images else None, args.out,
            args.k, args.repeats, args.ratio,
            args.synthetic, args.set_seg, args.set_synth, args.reference, args.label_config, args.set_label,
            args.judge_dice)
        print(f"k={report['k']}, {report['repeats']} repeats: Dice real-only {report['dice_real_mean']:.4f} +- "
              f"{report['dice_real_sd']:.4f}, real+synthetic {report['dice_real_synthetic_mean']:.4f} +- "
              f"{report['dice_real_synthetic_sd']:.4f}, gain {report['gain_mean']:+.4f} +- {report['gain_sd']:.4f} "
              f"({report['minutes']} min)")
        if args.reference:
            print(f"reference, all {report['training_pool']} real training cases: Dice {report['dice_real_all_mean']:.4f} "
                  f"+- {report['dice_real_all_sd']:.4f}, gain {report['gain_real_all_mean']:+.4f} over k={report['k']}")
    return 0


def _sampling_options(args: argparse.Namespace, options: type):
    """The sampling flags of ``synth`` and ``evaluate synthesis`` as a ``SamplingOptions`` (None: the run's own)."""
    return options(temperature=args.temperature, sampling=args.sampling, mixture_components=args.mixture_components,
                   keep_largest=args.keep_largest, labels=args.labels)


def _cmd_synth(args: argparse.Namespace) -> int:
    from medgen.inference.synthesize import SamplingOptions, write_synthetic  # lazy: torch + MONAI (3.5 s)

    check_output_folder(args.out)
    with new_output(args.out):  # a failed sampling (a full disk ...) leaves no half-written set
        info = write_synthetic(args.run, args.out, args.n, args.seed, args.device, args.overwrite, args.judge,
                               args.min_dice, args.judge_class, _sampling_options(args, SamplingOptions))
    judged = info["judge"]
    print(f"wrote {len(info['training'])} synthetic image+label pairs to {args.out}"
          + (f" ({judged['kept']} of {judged['drawn']} drawn agree with {args.judge} at Dice >= {args.min_dice})"
             if judged else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medgen.demo import run_demo  # lazy: torch + MONAI (3.5 s)

    run_demo(args.out, quick=args.quick)
    return 0




COMMANDS: dict[str, Callable] = {
    "info": _cmd_info, "phantoms": _cmd_phantoms, "train": _cmd_train, "models": _cmd_models, "fit": _cmd_fit,
    "translate": _cmd_translate, "segment": _cmd_segment, "pipeline": _cmd_pipeline, "synth": _cmd_synth,
    "evaluate": _cmd_evaluate, "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    trusted = getattr(args, "trust_bundle", False) and "MEDGEN_TRUST_BUNDLE" not in os.environ
    if trusted:
        os.environ["MEDGEN_TRUST_BUNDLE"] = "1"  # read where a bundle is loaded (medgen.inference.segment)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except MedgenError as exc:
        print(f"medgen: error: {exc}", file=sys.stderr)
        if argv is None and threading.active_count() > 1:  # the command line, with data-loading threads still in
            sys.stdout.flush()  # ITK: interpreter shutdown would kill them mid-C++ and abort ("FATAL: exception not
            sys.stderr.flush()  # rethrown", status 134); a caller passing argv (tests, scripts) gets 2 back
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        print("medgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `medgen info x | head`
        sys.stderr.close()
        return 0
    finally:
        if trusted:
            del os.environ["MEDGEN_TRUST_BUNDLE"]
