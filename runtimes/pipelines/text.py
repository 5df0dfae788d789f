"""Raw text -> model inputs with a bundle's ``tokenizer.json`` (torch-free, ``tokenizers`` only).

``TextEncoder`` is shared by the token-gating pipeline and by plain text bundles (e.g. a
transformers classifier exported with ``edgekit export DIR``, whose manifest metadata has
``text: {tokenizer, max_len, pad_id}``): ``text_feeds`` builds their ``input_ids`` /
``attention_mask`` (/ ``token_type_ids``) feeds.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgekit.core.errors import InputError, UsageError


class TextEncoder:
    """Raw text -> (input_ids, attention_mask) with the bundle's ``tokenizer.json``."""

    def __init__(self, path: str, max_len: int, pad_id: int = 0):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover
            from edgekit.core.errors import BackendUnavailableError
            raise BackendUnavailableError("raw-text input needs the 'tokenizers' library",
                                          'pip install tokenizers (or edgekit[tokengate])') from None
        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_len, self.pad_id = int(max_len), int(pad_id)

    def __call__(self, texts: Sequence[str], truncate: bool = True) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts:
            raise InputError("text input must be a non-empty list of strings", "pass e.g. ['a review']")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(f"text item {bad[0]} is {type(texts[bad[0]]).__name__}, not str",
                             "pass strings only")
        encs = self.tok.encode_batch(list(texts))
        ids = []
        for i, e in enumerate(encs):
            seq = list(e.ids)
            if len(seq) > self.max_len:
                if not truncate:
                    raise InputError(f"text {i} has {len(seq)} tokens, more than max_len={self.max_len}",
                                     "shorten it or allow truncation (truncate=True)")
                seq = seq[: self.max_len - 1] + [seq[-1]]  # keep [SEP]
            ids.append(seq)
        t = max(len(s) for s in ids)
        out = np.full((len(ids), t), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), t), dtype=np.int64)
        for i, s in enumerate(ids):
            out[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return {"input_ids": out, "attention_mask": mask}


def text_feeds(bundle: Any, input_names: Sequence[str], texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Feeds for a single-graph bundle that declares ``metadata.text`` and takes ``input_ids``."""
    spec = (bundle.manifest.metadata or {}).get("text")
    if not spec or "input_ids" not in input_names:
        raise UsageError(f"{bundle.root.name} does not take text (no tokenizer in the bundle)",
                         "pass --input FILE.npz instead, or export a model directory that has tokenizer.json")
    enc = TextEncoder(bundle.file(spec.get("tokenizer", "tokenizer.json")), int(spec.get("max_len", 512)),
                      int(spec.get("pad_id", 0)))
    d = enc(texts)
    feeds = {"input_ids": d["input_ids"]}
    if "attention_mask" in input_names:
        feeds["attention_mask"] = d["attention_mask"]
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(d["input_ids"])
    return feeds
