"""Reproduce the committed PPP weights.

    python scripts/train_ppp.py fashion   # -> edgekit/ppp/weights/ppp_fashion.safetensors (~7 min, 1 thread)
    python scripts/train_ppp.py kws       # needs edgekit/ppp/weights/ppp_kws_features.npz (scripts/make_kws.py)
    python scripts/train_ppp.py digits --out /tmp/d.safetensors
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["fashion", "kws", "digits"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from edgekit.ppp.tasks import train_builtin

    out = train_builtin(a.task, epochs=a.epochs, seed=a.seed, out=a.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
