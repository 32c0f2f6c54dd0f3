"""Training on a shared CPU (issue #13): the demo CycleGAN's step time alone, beside a second medgen training
of the same config, and as 2-process CPU DDP (torchrun, gloo) against 1 process per sample.

Step times come from the runs' own ``metrics.csv`` (the time column of the logged rows, the first logging
window skipped), so they are what a user's run measures. Two arms: every process with one thread per core
(torch's default: two processes run twice the threads the machine has, and OpenMP threads spin waiting for
each other), and medgen's default, ``train.threads: 0``, where the trainings split the cores between them
(``medgen.runtime.CpuShare``). Under torchrun each rank is such a process.

Measured (2 cores, 60 iterations): OpenMP's passive waiting (``OMP_WAIT_POLICY=PASSIVE``) was also tried:
0.18 s alone against 0.07 s, 0.65 s beside a second training: slower in every case, not used.

    python benchmarks/contention.py                  # about 6 minutes on 2 cores
    python benchmarks/contention.py --iterations 120 --work /tmp/contention
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(run: Path, data: Path, iterations: int, log_every: int) -> list[str]:
    ds = data / "dataset.json"
    sets = {"data.mri": f"{ds}#training", "data.ct": f"{ds}#training", "data.val_mri": "null", "data.val_ct": "null",
            "train.iterations": iterations, "train.log_every": log_every, "train.checkpoint_every": iterations,
            "train.image_every": 0, "train.val_every": 0, "data.cache_workers": 1}
    return ["train", str(ROOT / "configs" / "demo_cyclegan_2d.yaml"), "--out", str(run)] + \
        [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def step_seconds(run: Path) -> float:
    """Seconds per iteration between the first and the last logged row (the first window, with the cache
    warm-up and the first compilation, left out)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [(int(r["iteration"]), float(r["time"])) for r in csv.DictReader(f) if r["phase"] == "train"]
    its = sorted(set(rows))
    (i0, t0), (i1, t1) = its[0], its[-1]
    return (t1 - t0) / (i1 - i0)


def launch(runs: list[Path], data: Path, iterations: int, log_every: int, env: dict, sets: list[str],
           ddp: bool = False) -> list[float]:
    for r in runs:
        shutil.rmtree(r, ignore_errors=True)
    extra = [a for kv in sets for a in ("--set", kv)]
    args = train_cmd(runs[0], data, iterations, log_every) + extra
    if ddp:
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "medgen",
                 *args]]
    else:
        cmds = [[sys.executable, "-m", "medgen", *train_cmd(r, data, iterations, log_every), *extra] for r in runs]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"training failed ({p.returncode}):\n{err[-2000:]}")
    return [step_seconds(r) for r in (runs[:1] if ddp else runs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "contention"))
    ap.add_argument("--iterations", type=int, default=80)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--no-ddp", action="store_true", help="skip the DDP arm")
    a = ap.parse_args()
    work = Path(a.work)
    data = work / "phantoms"
    if not (data / "dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "medgen", "phantoms", str(data), "--cases", "8", "--test", "2"],
                       check=True, stdout=subprocess.DEVNULL)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    base["MEDGEN_PROGRESS"] = "0"
    cores = len(os.sched_getaffinity(0))
    arms = {f"every process {cores} threads (train.threads={cores}: torch's default, before)": [f"train.threads={cores}"],
            "medgen default (train.threads=0: cores split between live medgen processes)": []}
    rows = []
    for name, sets in arms.items():
        alone = launch([work / "alone"], data, a.iterations, a.log_every, base, sets)[0]
        pair = launch([work / "pair_a", work / "pair_b"], data, a.iterations, a.log_every, base, sets)
        ddp = float("nan") if a.no_ddp else launch([work / "ddp"], data, a.iterations, a.log_every, base, sets,
                                                   ddp=True)[0]
        rows.append((name, alone, max(pair), ddp))
    print(f"\ndemo CycleGAN (configs/demo_cyclegan_2d.yaml), {a.iterations} iterations, {os.cpu_count()} CPUs; "
          "seconds per iteration from metrics.csv\n")
    print("| threads | alone | beside a 2nd training | ratio | DDP 2 procs (2x samples) | DDP per sample vs alone |")
    print("|---|---|---|---|---|---|")
    for name, alone, pair, ddp in rows:
        print(f"| {name} | {alone:.3f} | {pair:.3f} | {pair / alone:.2f}x | {ddp:.3f} | {ddp / 2 / alone:.2f}x |")
    print(f"\ncommand: python benchmarks/contention.py --iterations {a.iterations}")


if __name__ == "__main__":
    main()
