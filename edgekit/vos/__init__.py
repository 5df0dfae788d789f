"""Skip-path semi-supervised video object segmentation (model, synthetic data, training, metrics, I/O).

Torch-free modules: data, metrics, io. model/train/export need torch.
"""
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights" / "vos_skip_heads.safetensors"
