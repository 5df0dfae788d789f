"""Skip-path semi-supervised video object segmentation (model, synthetic data, training, metrics, I/O).

Torch-free modules: data, metrics, io. model/train/export need torch.
"""
