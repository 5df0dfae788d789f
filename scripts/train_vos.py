"""Train the built-in skip-path VOS model (heads only; frozen EfficientNet-Lite0 backbone).

    OMP_NUM_THREADS=1 python scripts/train_vos.py [--steps 1800] [--videos 240] [--out PATH]

Writes edgekit/vos/weights/vos_skip_heads.safetensors (fp32, a few hundred KB).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from edgekit.vos.model import WEIGHTS  # noqa: E402
from edgekit.vos.train import save_heads, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=600.0, help="stop after this many seconds")
    ap.add_argument("--out", default=str(WEIGHTS))
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, info = train(a.videos, a.frames, a.steps, a.batch, seed=a.seed, time_budget_s=a.budget)
    save_heads(model, a.out, info)
    print("saved", a.out, info)


if __name__ == "__main__":
    main()
