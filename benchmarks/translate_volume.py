"""Whole-volume translation speed (and peak memory) against plain MONAI inferers, same networks.

2D: medgen slice-wise inference (inference mode, channels-last, slice batches, the configs' amp bf16, which
runs fp32 on CPUs without native bf16) against MONAI's SliceInferer in fp32 (reference measured on the
issue's machine: 281 ms per 256^2 slice, ngf 64).
3D: medgen sliding window (Gaussian blending, same settings) against MONAI sliding_window_inference
in fp32 with the same window and overlap.
--memory: peak RSS of translating a 512 x 512 x 300 volume with the 3D path (a child process).
--layouts: the figures behind medgen's inference choices: channels-last against contiguous weights, and
slices per forward pass (1, 4, 16, without medgen's CPU cap) at --size; 3D windows one per pass.

    python benchmarks/translate_volume.py
    python benchmarks/translate_volume.py --slices 8 --memory
    python benchmarks/translate_volume.py --layouts --size 128
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
import torch
from monai.inferers import SliceInferer, sliding_window_inference

from reference import plain

from medgen.models.cyclegan import GeneratorConfig
from medgen.inference.volume import infer_volume
from medgen.networks.generators import build_generator
from medgen.runtime import effective_amp


CPU = torch.device("cpu")


def _precision() -> str:
    """What the configs' ``amp: bf16`` runs at on this CPU."""
    return {"bf16": "bf16", "none": "fp32"}[effective_amp(CPU, "bf16")]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def generators(spatial_dims: int, ngf: int, n_blocks: int):
    """medgen's generator (as built for training and translation) and its plain reference form, same weights."""
    torch.manual_seed(0)
    net = build_generator(GeneratorConfig(ngf=ngf, n_blocks=n_blocks), spatial_dims).eval()  # as Translator builds it
    ref = build_generator(GeneratorConfig(ngf=ngf, n_blocks=n_blocks), spatial_dims)
    ref.load_state_dict(net.state_dict())
    return net, plain(ref).eval()


def bench_2d(slices: int, size: int, ngf: int) -> None:
    net, ref = generators(2, ngf, 9)
    volume = torch.rand(1, size, size, slices) * 2 - 1
    inferer = SliceInferer(roi_size=(size, size), sw_batch_size=1, spatial_dim=2, progress=False)
    with torch.no_grad():
        inferer(volume[None, :, :, :, :2], ref)  # warm-up
        t_ref = _timed(lambda: inferer(volume[None], ref))
    infer_volume(net, volume[..., :2], 2, torch.device("cpu"), "bf16", 16)
    t_med = _timed(lambda: infer_volume(net, volume, 2, torch.device("cpu"), "bf16", 16))
    print(f"2D {slices} slices of {size}^2, ResNet-9 ngf {ngf}:")
    print(f"  reference MONAI SliceInferer fp32: {1000 * t_ref / slices:7.1f} ms/slice")
    print(f"  medgen slice batches, {_precision():<11}  {1000 * t_med / slices:7.1f} ms/slice   speed-up {t_ref / t_med:.2f}x")


def bench_3d(shape: tuple[int, int, int], roi: int, ngf: int) -> None:
    net, ref = generators(3, ngf, 6)
    volume = torch.rand(1, *shape) * 2 - 1
    rois = (roi,) * 3
    with torch.no_grad():
        t_ref = _timed(lambda: sliding_window_inference(volume[None], rois, 1, ref, overlap=0.5, mode="gaussian"))
    t_med = _timed(lambda: infer_volume(net, volume, 3, torch.device("cpu"), "bf16", 4, rois, 0.5))
    print(f"3D {shape} volume, {roi}^3 windows, overlap 0.5, ResNet-6 ngf {ngf}:")
    print(f"  reference MONAI sliding_window_inference fp32: {t_ref:7.2f} s")
    print(f"  medgen sliding window, {_precision():<23} {t_med:7.2f} s   speed-up {t_ref / t_med:.2f}x")


def bench_layouts(slices: int, size: int, ngf: int, shape3d, roi: int, ngf3d: int) -> None:
    import medgen.inference.volume as volume_mod

    formats = {"channels-last": (torch.channels_last, torch.channels_last_3d), "contiguous": (torch.contiguous_format,) * 2}
    net2d, net3d = generators(2, ngf, 9)[0], generators(3, ngf3d, 6)[0]
    volume2d, volume3d = torch.rand(1, size, size, slices) * 2 - 1, torch.rand(1, *shape3d) * 2 - 1
    cap, volume_mod.CPU_PASS_VOXELS = volume_mod.CPU_PASS_VOXELS, 2**62  # sweep pass sizes uncapped
    print(f"layouts and pass sizes, {_precision()}: 2D {slices} slices of {size}^2 ngf {ngf}; 3D {tuple(shape3d)}, {roi}^3 windows ngf {ngf3d}")
    try:
        for name, (fmt2d, fmt3d) in formats.items():
            net2d, net3d = net2d.to(memory_format=fmt2d), net3d.to(memory_format=fmt3d)
            for per_pass in (1, 4, 16):
                infer_volume(net2d, volume2d[..., :2], 2, CPU, "bf16", per_pass)
                t = _timed(lambda: infer_volume(net2d, volume2d, 2, CPU, "bf16", per_pass))
                print(f"  2D {name:<13} {per_pass:2d} slices a pass: {1000 * t / slices:7.1f} ms/slice")
            t = _timed(lambda: infer_volume(net3d, volume3d, 3, CPU, "bf16", 1, (roi,) * 3, 0.5))
            print(f"  3D {name:<13}  1 window a pass: {t:7.2f} s")
    finally:
        volume_mod.CPU_PASS_VOXELS = cap


def _big_volume(queue) -> None:
    from types import SimpleNamespace as NS

    from medgen.inference.translate import translate_array
    from medgen.io import ImageRef, header_from_affine

    shape = (512, 512, 300)
    from medgen.config import PreprocessConfig

    cfg = NS(spatial_dims=3, preprocess=PreprocessConfig(orientation="RAS", spacing=None),
             inference=NS(amp="bf16", batch_size=4, roi_size=[96, 96, 96], overlap=0.25))
    net = build_generator(GeneratorConfig(ngf=4, n_blocks=1), 3).eval()
    mri = (np.random.default_rng(0).random(shape, dtype=np.float32) * 1000).astype(np.int16)
    ref = ImageRef("big.nii.gz", header_from_affine(np.diag([-0.8, -0.8, 1.5, 1.0]), shape), "nifti")
    t0 = time.perf_counter()
    out, _ = translate_array(net, cfg, mri, ref, torch.device("cpu"))
    queue.put((out.shape, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2))


def bench_memory() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_big_volume, args=(queue,))
    proc.start()
    shape, seconds, gib = queue.get()
    proc.join()
    print(f"3D translation of a 512x512x300 int16 volume (96^3 windows, tiny net): {seconds:.1f} s, "
          f"peak RSS {gib:.2f} GiB (bound: about 4 GiB); output {shape}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--shape3d", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--ngf3d", type=int, default=16)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on a 512x512x300 volume")
    parser.add_argument("--layouts", action="store_true", help="only compare memory layouts and slices per pass")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads")
    if args.layouts:
        bench_layouts(args.slices, args.size, args.ngf, args.shape3d, args.roi, args.ngf3d)
        return
    bench_2d(args.slices, args.size, args.ngf)
    bench_3d(tuple(args.shape3d), args.roi, args.ngf3d)
    if args.memory:
        bench_memory()


if __name__ == "__main__":
    main()
