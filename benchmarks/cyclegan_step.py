"""CycleGAN training-step time: medgen's step against a plain fp32 eager reference, same networks.

The reference is the pytorch-CycleGAN-and-pix2pix step written plainly: the same networks in their
plain form (contiguous memory, ``nn.InstanceNorm2d``), separate real/fake discriminator passes, fp32.
medgen's step batches each discriminator's real and pooled-fake passes and runs under the configured
mixed precision (bf16 autocast by default here; fp32 on a CPU without native bf16), its generators
channels-last with a layout-keeping instance norm where that pays (reduced precision, CUDA).

    python benchmarks/cyclegan_step.py                 # 2D 256^2, ngf 64, ResNet-9 (the reference setting)
    python benchmarks/cyclegan_step.py --size 128 --ngf 32 --steps 5
    python benchmarks/cyclegan_step.py --layout channels-last   # medgen's step with another memory layout
    python benchmarks/cyclegan_step.py --flops         # also: the reference step's FLOPs and FLOP rate
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F
from reference import plain

from medgen.engines.common import set_requires_grad
from medgen.engines.cyclegan import ImagePool, cyclegan_step
from medgen.models.cyclegan import CycleGANConfig, CycleLossConfig, DiscriminatorConfig, GeneratorConfig, build_nets
from medgen.runtime import prefers_channels_last


def reference_step(nets, opt_g, opt_d, pools):
    """The plain fp32 eager step (pytorch-CycleGAN-and-pix2pix ``optimize_parameters``)."""
    g_ab, g_ba, d_a, d_b = nets["G_ab"], nets["G_ba"], nets["D_a"], nets["D_b"]
    mse, l1 = F.mse_loss, F.l1_loss

    def step(real_a, real_b):
        fake_b = g_ab(real_a)
        rec_a = g_ba(fake_b)
        fake_a = g_ba(real_b)
        rec_b = g_ab(fake_a)
        set_requires_grad([d_a, d_b], False)
        opt_g.zero_grad()
        idt_a, idt_b = g_ab(real_b), g_ba(real_a)
        pa, pb = d_b(fake_b), d_a(fake_a)
        loss_g = (mse(pa, torch.ones_like(pa)) + mse(pb, torch.ones_like(pb)) + 10 * l1(rec_a, real_a)
                  + 10 * l1(rec_b, real_b) + 5 * l1(idt_a, real_b) + 5 * l1(idt_b, real_a))
        loss_g.backward()
        opt_g.step()
        set_requires_grad([d_a, d_b], True)
        opt_d.zero_grad()
        for d, real, fake in ((d_b, real_b, pools["fake_b"].query(fake_b)), (d_a, real_a, pools["fake_a"].query(fake_a))):
            pr, pf = d(real), d(fake.detach())
            (0.5 * (mse(pr, torch.ones_like(pr)) + mse(pf, torch.zeros_like(pf)))).backward()
        opt_d.step()

    return step


def setup(size: int, ngf: int, blocks: int, reference: bool = False, amp: str = "none", layout: str = "auto"):
    torch.manual_seed(0)
    cfg = CycleGANConfig(generator=GeneratorConfig(ngf=ngf, n_blocks=blocks), discriminator=DiscriminatorConfig(ndf=ngf))
    channels_last = prefers_channels_last(torch.device("cpu"), amp) if layout == "auto" else layout == "channels-last"
    nets = build_nets(cfg, channels_last)  # auto: the layout medgen trains with
    if reference:
        nets = {k: plain(v) for k, v in nets.items()}
    opt_g = torch.optim.Adam(itertools.chain(nets["G_ab"].parameters(), nets["G_ba"].parameters()), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(itertools.chain(nets["D_a"].parameters(), nets["D_b"].parameters()), 2e-4, betas=(0.5, 0.999))
    pools = {"fake_a": ImagePool(50), "fake_b": ImagePool(50)}
    real_a, real_b = torch.rand(1, 1, size, size) * 2 - 1, torch.rand(1, 1, size, size) * 2 - 1
    return nets, opt_g, opt_d, pools, real_a, real_b


def timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flop_rate(step, a, b) -> None:
    """FLOPs of one step (torch's FlopCounterMode, a multiply-add = 2), their rate, and the share of the
    step's CPU time spent in convolutions (forward and backward, torch.profiler)."""
    from torch.profiler import profile
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(a, b)
    t = timed(lambda: step(a, b), 1, warmup=0)
    with profile() as prof:
        step(a, b)
    ops = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in ops if "convolution" in e.key)
    total = counter.get_total_flops()
    print(f"reference step: {total / 1e12:.3f} TFLOP at {total / t / 1e9:.0f} GFLOP/s, "
          f"{100 * conv / sum(e.self_cpu_time_total for e in ops):.0f} % of its CPU time in convolutions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--amp", default="bf16", choices=("none", "bf16", "fp16"))
    parser.add_argument("--layout", default="auto", choices=("auto", "channels-last", "contiguous"),
                        help="medgen's generator layout (auto: as medgen trains for this amp on this CPU)")
    parser.add_argument("--flops", action="store_true", help="also count the reference step's FLOPs")
    args = parser.parse_args()
    device = torch.device("cpu")
    print(f"2D CycleGAN step, {args.size}^2, ResNet-{args.blocks} ngf {args.ngf}, PatchGAN ndf {args.ngf}, "
          f"batch 1, {torch.get_num_threads()} threads, median of {args.steps}")

    nets, opt_g, opt_d, pools, a, b = setup(args.size, args.ngf, args.blocks, reference=True)
    ref = reference_step(nets, opt_g, opt_d, pools)
    t_ref = timed(lambda: ref(a, b), args.steps)
    print(f"reference (plain fp32 eager):   {t_ref:.3f} s/step")
    if args.flops:
        flop_rate(ref, a, b)

    nets, opt_g, opt_d, pools, a, b = setup(args.size, args.ngf, args.blocks, amp=args.amp, layout=args.layout)
    step = cyclegan_step(nets, opt_g, opt_d, pools, CycleLossConfig(), device, args.amp)
    batch = {"mri": a, "ct": b}
    t_med = timed(lambda: step(None, batch), args.steps)
    print(f"medgen (amp={args.amp}, layout {args.layout}): {t_med:.3f} s/step")
    print(f"speed-up: {t_ref / t_med:.2f}x")


if __name__ == "__main__":
    main()
