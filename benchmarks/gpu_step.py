"""Training-step times of the fit's networks on one GPU: medgen's step (fp32, then AMP bf16) against a plain
fp32 eager step of the same network and batch measured in the same run. Used by benchmarks/gpu_check.sh.

    python benchmarks/gpu_step.py [--batch 32] [--size 160] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.losses import DiceCELoss

from medgen.engines.segmenter import supervised_step
from medgen.keys import Keys
from medgen.models.registry import load_config
from medgen.models.segmenter import build_network
from medgen.runtime import grad_scaler

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def timed(step, batch, steps: int, device: torch.device) -> float:
    for _ in range(3):
        step(None, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(None, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(ROOT / "configs" / "segmenter_liver_any_contrast.yaml", ["data.label_map={6: 1}"])
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = (torch.rand(args.batch, 1, args.size, args.size) > 0.7).long()
    batch = {Keys.IMAGE: x, Keys.LABEL: y}
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    net = build_network(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    xd, yd = x.to(device), y.to(device)

    def plain(engine, _batch):
        opt.zero_grad(set_to_none=True)
        out = loss(net(xd), yd)
        out.backward()
        opt.step()

    ref = timed(plain, batch, args.steps, device)
    print(f"device {device}, UNet {cfg.network.channels}, batch {args.batch} x {args.size}^2")
    print(f"plain fp32 eager step: {ref * 1000:.1f} ms")
    for amp in ("none", "bf16"):
        net2 = build_network(cfg).to(device)
        opt2 = torch.optim.Adam(net2.parameters(), 1e-3)
        step = supervised_step(net2, opt2, loss, device, amp, grad_scaler(device, amp))
        t = timed(step, batch, args.steps, device)
        print(f"medgen step, amp {amp}: {t * 1000:.1f} ms ({ref / t:.2f}x the plain fp32 step)")


if __name__ == "__main__":
    main()
