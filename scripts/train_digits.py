"""Train the embedded default model (digits-cnn) and write its weights, calibration sample and
held-out split to edgekit/models/weights/. Deterministic: seed 0. Runs in ~20 s on 2 CPU cores.

    python scripts/train_digits.py
"""
from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgekit.models import digits


def main() -> None:
    torch.manual_seed(0)
    d = load_digits()
    raw, y = d.data.astype(np.uint8), d.target.astype(np.int64)
    raw_tr, raw_te, y_tr, y_te = train_test_split(raw, y, test_size=0.25, stratify=y, random_state=0)
    x_tr, x_te = torch.from_numpy(digits.preprocess(raw_tr)), torch.from_numpy(digits.preprocess(raw_te))
    m = digits.build_module()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    for epoch in range(40):
        m.train()
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb = x_tr[idx] + 0.05 * torch.randn(len(idx), 1, 8, 8, generator=g)
            loss = torch.nn.functional.cross_entropy(m(xb), torch.from_numpy(y_tr)[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        acc = (m(x_te).argmax(1).numpy() == y_te).mean()
    digits.WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(digits.WEIGHTS, **{k: v.detach().numpy() for k, v in m.state_dict().items()})
    np.savez_compressed(digits.HELDOUT, raw=raw_te, y=y_te)
    rng = np.random.default_rng(0)
    np.savez_compressed(digits.CALIB, raw=raw_tr[rng.choice(len(raw_tr), 200, replace=False)])
    print(json.dumps({"test_accuracy": float(acc), "train": len(y_tr), "test": len(y_te)}))


if __name__ == "__main__":
    main()
