"""Reading user input files (.npz with one array per input name, or one .npy). Torch-free."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError, MissingFileError
from edgekit.core.specs import TensorSpec


def load_arrays(path: str | Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """{input name: array} from ``path``; a .npy is accepted for one-input models."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"input file {str(p)!r} does not exist", "check the path given to --input")
    names = ", ".join(s.name for s in inputs)
    if p.suffix == ".npy" and len(inputs) != 1:
        raise DataError(f"{p.name} holds one array but the model has {len(inputs)} inputs ({names})",
                        "save an .npz with one array per input name: np.savez(f, **arrays)")
    try:
        if p.suffix == ".npy":
            return {inputs[0].name: np.load(p, allow_pickle=False)}
        with np.load(p, allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{p.name} is not a readable .npz/.npy file ({type(e).__name__}: {e})",
                        f"write it with numpy: np.savez('{p.stem}.npz', {inputs[0].name if inputs else 'x'}=array)") from None
    if not feeds:
        raise DataError(f"{p.name} contains no arrays", f"save one array per input: {names}")
    if len(inputs) == 1 and list(feeds) == ["arr_0"]:
        feeds = {inputs[0].name: feeds["arr_0"]}  # np.savez(f, arr) without a name stores it as arr_0
    return feeds
