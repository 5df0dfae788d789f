"""Train the skip-path VOS heads on synthetic videos (CPU, frozen Lite0 backbone).

The backbone is frozen, so its stride-8/16/32 features are computed once per training frame and
cached; each step then trains the heavy head, the gate and the light path on sampled
(reference frame 0, last fully computed frame s, current frame t) triples:

* segmentation loss (BCE + soft Dice at full resolution) for the heavy and the light outputs;
* delta loss: the light path's delta against (target score of GT_t - previous score);
* gate loss: BCE of p_reuse toward IoU(GT_t, GT_s) -- the IoU between the current mask and the
  mask of the last fully computed frame;
* a hard straight-through mix (score = g*light + (1-g)*heavy, g = 1[p>0.5] with the soft gradient).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.vos.data import make_split
from edgekit.vos.model import VOSNet

SCORE_AMP = 6.0


def mask_to_score8(m8: torch.Tensor) -> torch.Tensor:
    """Area-averaged stride-8 mask in [0,1] -> score (logit-like), as the pipeline's first frame."""
    return SCORE_AMP * (2.0 * m8 - 1.0)


class _Frozen(torch.nn.Module):
    def __init__(self, model: VOSNet):
        super().__init__()
        self.m = model

    def forward(self, x):
        f8 = self.m.stem(x)
        f16, f32 = self.m.heavy.backbone(f8)
        return f8, f16, f32


@torch.no_grad()
def cache_features(model: VOSNet, videos, batch: int = 48):
    """Frozen-backbone features of every frame. Runs the frozen part through ONNX Runtime when it is
    installed (about 20x faster than eager PyTorch depthwise convolutions on CPU; same numbers to
    ~1e-5), else through PyTorch."""
    import tempfile
    frames = np.concatenate([v for v, _ in videos]).astype(np.float32) / 255.0
    x0 = torch.from_numpy(frames[:1]).permute(0, 3, 1, 2).contiguous()
    run = None
    try:
        import onnxruntime as ort
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/frozen.onnx"
            torch.onnx.export(_Frozen(model).eval(), (x0,), path, input_names=["x"], dynamo=False,
                              output_names=["f8", "f16", "f32"], dynamic_axes={"x": {0: "b"}})
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        run = lambda a: [torch.from_numpy(o) for o in sess.run(None, {"x": a})]  # noqa: E731
    except ImportError:
        pass
    f8s, f16s, f32s = [], [], []
    for i in range(0, len(frames), batch):
        a = np.ascontiguousarray(frames[i:i + batch].transpose(0, 3, 1, 2))
        f8, f16, f32 = run(a) if run else _Frozen(model)(torch.from_numpy(a))
        f8s.append(f8)
        f16s.append(f16)
        f32s.append(f32)
    masks = torch.from_numpy(np.concatenate([m for _, m in videos]).astype(np.float32))[:, None]
    return torch.cat(f8s), torch.cat(f16s), torch.cat(f32s), masks


def _dice_bce(score8: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(score8, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    p = torch.sigmoid(up)
    inter = (p * gt).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + gt.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(up, gt) + dice.mean()


def _perturbed_prev(m8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A previous score like the loop produces: right place, imperfect amplitude and edges."""
    B = m8.shape[0]
    amp = 0.5 + torch.rand(B, 1, 1, 1, generator=gen) * 1.2
    noise = torch.randn(m8.shape, generator=gen)
    noise = F.avg_pool2d(noise, 3, 1, 1) * 3.0
    return mask_to_score8(m8) * amp + noise


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a * b).sum((1, 2, 3))
    union = ((a + b) > 0).float().sum((1, 2, 3))
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def train(n_videos: int = 240, frames: int = 24, steps: int = 1800, batch: int = 24, lr: float = 2e-3,
          seed: int = 0, log=print, time_budget_s: float | None = None) -> tuple[VOSNet, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model = VOSNet(pretrained_backbone=True)
    videos = make_split("train", n_videos, frames, model.size)
    f8, f16, f32, gt = cache_features(model, videos)
    m8 = F.avg_pool2d(gt, 8)
    log(f"cached {len(f8)} frames in {time.time() - t0:.1f}s")
    T = frames
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    model.train()
    hist = []
    t_train = time.time()
    for step in range(steps):
        # warm-up then cosine, over whichever runs out first: steps or the time budget
        prog = step / steps
        if time_budget_s:
            prog = max(prog, (time.time() - t_train) / max(time_budget_s - (t_train - t0), 1.0))
        if prog >= 1.0:
            log(f"time budget reached at step {step}")
            break
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * prog))
        v = torch.randint(0, n_videos, (batch,), generator=gen)
        t = torch.randint(1, T, (batch,), generator=gen)
        k = torch.minimum(t, 1 + torch.randint(0, 8, (batch,), generator=gen))
        k = torch.where(torch.rand(batch, generator=gen) < 0.25, torch.ones_like(k), k)
        s = t - k
        lag = torch.where(torch.rand(batch, generator=gen) < 0.3,
                          torch.randint(1, 3, (batch,), generator=gen), torch.zeros_like(t))
        it, is_, i0 = v * T + t, v * T + s, v * T
        ip = v * T + torch.clamp(t - 1 - lag, min=0)
        ips = v * T + torch.clamp(s - 1, min=0)
        prev = _perturbed_prev(m8[ip], gen)
        prev_s = _perturbed_prev(m8[ips], gen)
        # reference prototypes from frame 0 (its own key map, given mask)
        _, key0 = model.heavy.head(f8[i0], f16[i0], f32[i0], mask_to_score8(m8[i0]),
                                   torch.zeros(batch, 64), torch.zeros(batch, 64))
        w = m8[i0]
        fg = (key0 * w).sum((2, 3)) / w.sum((2, 3)).clamp(min=1e-3)
        bg = (key0 * (1 - w)).sum((2, 3)) / (1 - w).sum((2, 3)).clamp(min=1e-3)
        score_h, _ = model.heavy.head(f8[it], f16[it], f32[it], prev, fg, bg)
        _, template = model.gate(f8[is_], prev_s, torch.zeros(batch, 32, *f8.shape[-2:]))
        p, emb = model.gate(f8[it], prev, template)
        score_l = model.light(emb, template, prev)
        target = gt[it]
        iou = _iou(target, gt[is_])
        loss_h = _dice_bce(score_h, target)
        loss_l = _dice_bce(score_l, target)
        delta_t = (mask_to_score8(m8[it]) - prev).clamp(-12, 12)
        loss_d = F.smooth_l1_loss(score_l - prev, delta_t)
        loss_g = F.binary_cross_entropy(p[:, 0].clamp(1e-5, 1 - 1e-5), iou)
        g = (p > 0.5).float() + p - p.detach()  # hard straight-through
        mix = g[:, :, None, None] * score_l + (1 - g[:, :, None, None]) * score_h.detach()
        loss_mix = _dice_bce(mix, target)
        loss = loss_h + loss_l + 0.1 * loss_d + loss_g + 0.2 * loss_mix
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append([loss_h.item(), loss_l.item(), loss_d.item(), loss_g.item()])
        if step % 100 == 0 or step == steps - 1:
            h = np.mean(hist[-100:], axis=0)
            log(f"step {step:5d} heavy {h[0]:.3f} light {h[1]:.3f} delta {h[2]:.3f} gate {h[3]:.3f} "
                f"({time.time() - t_train:.0f}s)")
    model.eval()
    info = {"n_videos": n_videos, "frames": frames, "steps_done": len(hist), "batch": batch, "lr": lr,
            "seed": seed, "train_seconds": round(time.time() - t0, 1),
            "final_losses": dict(zip(["heavy", "light", "delta", "gate"],
                                     [round(float(x), 4) for x in np.mean(hist[-100:], axis=0)]))}
    return model, info


def save_heads(model: VOSNet, path, info: dict) -> None:
    """Atomic write of the trained (non-backbone) weights as fp32 safetensors."""
    import os
    from pathlib import Path

    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(model.head_state(), str(tmp), metadata={"edgekit": json.dumps(info)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
