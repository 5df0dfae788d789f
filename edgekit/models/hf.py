"""A local Hugging Face transformers model directory as an export source (``edgekit export DIR``).

The directory is what ``model.save_pretrained(DIR)`` (+ ``tokenizer.save_pretrained(DIR)``) writes;
nothing is downloaded. The class is the config's ``architectures[0]`` (e.g.
BertForSequenceClassification), else AutoModel. Example inputs follow the model's main input:
text (``input_ids`` + ``attention_mask``, dynamic batch and sequence, one padded row), images
(``pixel_values`` at the config's image size, dynamic batch) or audio (``input_values``, dynamic
batch and length); ``--input`` / ``--dynamic`` override them. Outputs are the model's output
fields (``logits``, ``last_hidden_state``, ...); decoder caches are switched off. The bundle
carries the tokenizer / preprocessor files it finds and ``id2label`` as its labels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import UsageError
from edgekit.core.specs import check_dynamic
from edgekit.exporters.source import ModelSource
from edgekit.models.examples import examples_from_specs

CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
           "vocab.json", "sentencepiece.bpe.model", "spiece.model", "preprocessor_config.json")


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _load(path: Path) -> tuple[Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise UsageError("exporting a transformers model directory needs the transformers library",
                         'pip install "edgekit[tokengate]" (or pip install transformers)') from None
    hf_logging.set_verbosity_error()
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(path))
    except Exception as e:
        raise UsageError(f"cannot read {path / 'config.json'}: {type(e).__name__}: {str(e)[:300]}",
                         "pass a directory written by save_pretrained") from None
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls or transformers.AutoModel
    try:
        model = cls.from_pretrained(str(path))
    except Exception as e:
        raise UsageError(f"cannot load {arch or 'the model'} from {path}: {type(e).__name__}: {str(e)[:300]}",
                         "check that the directory holds the weights (model.safetensors / pytorch_model.bin)") from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False        # no past_key_values outputs: one graph, fixed output set
    return model.eval(), cfg


def _examples(model: Any, cfg: Any) -> tuple[dict[str, np.ndarray], dict[str, dict[int, str]]]:
    rng = np.random.default_rng(0)
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        vocab = int(getattr(cfg, "vocab_size", 1000) or 1000)
        pad = getattr(cfg, "pad_token_id", None)
        ids = rng.integers(min(3, vocab - 1), min(vocab, 1000), size=(2, 16)).astype(np.int64)
        if pad is not None:
            ids[ids == pad] = (pad + 1) % vocab
        mask = np.ones_like(ids)
        mask[1, 11:] = 0
        if pad is not None:
            ids[1, 11:] = pad
        dyn = {0: "batch", 1: "seq"}
        return {"input_ids": ids, "attention_mask": mask}, {"input_ids": dyn, "attention_mask": dyn}
    if main == "pixel_values":
        size = getattr(cfg, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        c = int(getattr(cfg, "num_channels", 3) or 3)
        return ({"pixel_values": rng.standard_normal((1, c, h, w)).astype(np.float32)},
                {"pixel_values": {0: "batch"}})
    if main == "input_values":
        return ({"input_values": rng.standard_normal((1, 16000)).astype(np.float32)},
                {"input_values": {0: "batch", 1: "samples"}})
    raise UsageError(f"{type(model).__name__} takes {main!r}; edgekit builds example inputs for text "
                     "(input_ids), images (pixel_values) and audio (input_values)",
                     f"pass --input {main}:SHAPE[:DTYPE] (and --dynamic), or a package.module:function "
                     "returning (module, example_inputs)")


def hf_source(path: Path, inputs: list[str], dynamic: dict) -> ModelSource:

    model, cfg = _load(path)
    if inputs:
        ex, dyn = examples_from_specs(inputs), dict(dynamic)
    else:
        ex, dyn = _examples(model, cfg)
        dyn = dict(dynamic) or dyn
    dyn = check_dynamic(dyn, ex)
    labels = getattr(cfg, "id2label", None) or {}
    meta: dict[str, Any] = {"source": str(path), "hf_architecture": type(model).__name__,
                            "model_type": getattr(cfg, "model_type", None)}
    if labels and any(k in type(model).__name__ for k in ("ForSequenceClassification", "ForImageClassification",
                                                          "ForAudioClassification")):
        meta["labels"] = [str(labels[i]) for i in sorted(labels)]
    if type(model).__name__.endswith("Classification"):
        meta["task"] = "classification"
    elif type(model).__name__.endswith("Model"):  # a bare encoder (AutoModel): hidden states and embeddings
        meta["task"] = "embedding"
    carried = [f for f in CARRIED if (path / f).is_file()]
    if carried:
        meta["preprocessing_files"] = carried
    if "tokenizer.json" in carried and "input_ids" in ex:   # raw text in: `edgekit run BUNDLE --text ...`
        emb = getattr(getattr(model, "base_model", model), "embeddings", None)
        offset = int(emb.padding_idx) + 1 if hasattr(emb, "padding_idx") and emb.padding_idx is not None else 0
        max_pos = int(getattr(cfg, "max_position_embeddings", 512) or 512)
        meta["text"] = {"tokenizer": "tokenizer.json", "max_len": max_pos - offset,
                        "pad_id": int(getattr(cfg, "pad_token_id", 0) or 0)}
    return ModelSource(module=model, example_inputs=ex, output_names=[], dynamic=dyn or None,
                       metadata=meta, name=path.resolve().name, description=f"transformers {type(model).__name__}",
                       extra_files={f: path / f for f in carried})
