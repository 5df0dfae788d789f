"""Turn a CLI MODEL argument into a ModelSource.

Forms: omitted (the embedded default), builtin:NAME, FILE.pt2 (torch.export.save), FILE.onnx,
pkg.mod:fn (a callable returning an nn.Module, a ModelSource, or (module, example_inputs)),
path/file.py:fn (the same, from a file), FILE.pt/.pth (TorchScript, a whole pickled nn.Module, or a token-gating checkpoint; --input gives shapes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import EdgekitError, ExportError, MissingFileError, UsageError, first_line
from edgekit.core.specs import check_dynamic
from edgekit.core.userimport import cwd_on_path, is_callable_ref, load_callable
from edgekit.exporters.build import normalize_examples
from edgekit.exporters.source import ModelSource
from edgekit.models import registry
from edgekit.models.examples import (
    EXAMPLE_SEED,
    examples_from_specs,
    parse_dynamic,
    random_example,
)
from edgekit.models.hf import hf_source, is_hf_dir


def _onnx_source(path: Path, inputs: list[str], dynamic: dict) -> ModelSource:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UsageError(f"{path.name} is not a readable ONNX file ({type(e).__name__})",
                         "check the file; it should come from torch.onnx.export or similar") from None
    init = {i.name for i in model.graph.initializer}
    ex = examples_from_specs(inputs) if inputs else {}
    dyn = dict(dynamic)
    rng = np.random.default_rng(EXAMPLE_SEED + 1)
    for vi in model.graph.input:
        if vi.name in init or vi.name in ex:
            continue
        tt = vi.type.tensor_type
        from onnx.helper import tensor_dtype_to_np_dtype

        dtype = np.dtype(tensor_dtype_to_np_dtype(tt.elem_type))
        shape = []
        for ax, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            else:
                shape.append(1)
                dyn.setdefault(vi.name, {})[ax] = d.dim_param or f"{vi.name}_{ax}"
        ex[vi.name] = random_example(shape, dtype, rng)
    check_dynamic(dyn, ex)
    return ModelSource(module=None, example_inputs=ex, output_names=[o.name for o in model.graph.output],
                       dynamic=dyn or None, name=path.stem, onnx_path=str(path),
                       metadata={"source": str(path.name)}, description="ONNX file")


def _pt2_dynamic(ep: Any, names: list[str]) -> dict[str, dict[int, str]]:
    """The dynamic dims a program was exported with (torch.export.Dim), one name per symbol
    (``NAME_AXIS`` of its first input: saved programs do not keep the Dim names)."""
    import torch

    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    symbols: dict[str, str] = {}
    out: dict[str, dict[int, str]] = {}
    for name in names:
        for ax, d in enumerate(getattr(vals.get(name), "shape", ())):
            if isinstance(d, torch.SymInt):
                out.setdefault(name, {})[ax] = symbols.setdefault(str(d), f"{name}_{ax}")
    return out


def _pt2_source(path: Path, inputs: list[str], dynamic: dict) -> ModelSource:
    import torch

    ep = torch.export.load(str(path))
    if inputs:
        ex = examples_from_specs(inputs)
    else:
        args = getattr(ep, "example_inputs", None)
        if not args or not args[0]:
            raise UsageError(f"{path.name} carries no example inputs", "pass --input NAME:SHAPE for each input")
        specs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        names = [getattr(s.arg, "name", f"input_{i}") for i, s in enumerate(specs)]
        ex = {n: a.detach().numpy() for n, a in zip(names, args[0])}
    dynamic = dynamic or _pt2_dynamic(ep, list(ex))  # --dynamic overrides the program's own dims
    check_dynamic(dynamic, ex)
    n_out = len(ep.graph_signature.user_outputs)
    outs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    return ModelSource(module=ep.module(), example_inputs=ex, output_names=outs, dynamic=dynamic or None,
                       name=path.stem, metadata={"source": path.name}, description="torch.export program")


def _callable_source(ref: str, inputs: list[str], dynamic: dict) -> ModelSource:
    fn_name = ref.rsplit(":", 1)[1]
    fn = load_callable(ref, "give MODEL as package.module:function importable from the current directory, "
                            "or path/to/file.py:function")
    try:
        made: Any = fn()
    except Exception as e:
        raise UsageError(f"calling {ref}() failed: {type(e).__name__}: {first_line(e)}",
                         "fix the function; it must return an nn.Module, (module, example_inputs) or a "
                         "ModelSource") from e
    if isinstance(made, ModelSource):
        return made
    example = None
    if isinstance(made, tuple) and len(made) == 2:
        made, example = made
    import torch

    if not isinstance(made, torch.nn.Module):
        raise UsageError(f"{ref}() returned {type(made).__name__}, not a torch.nn.Module",
                         "return an nn.Module, (module, example_inputs) or a ModelSource")
    return _module_source(made, example, inputs, dynamic, fn_name, ref, ref)


def _module_source(module: Any, example: Any, inputs: list[str], dynamic: dict, name: str, source: str,
                   description: str) -> ModelSource:
    """An nn.Module + its example inputs (``--input`` specs win over ``example``) -> ModelSource."""
    if inputs:
        ex = examples_from_specs(inputs)
    elif example is not None:

        ex = normalize_examples(module, example, None)
    else:
        raise UsageError(f"{source} gives a module without example inputs", "pass --input NAME:SHAPE[:DTYPE] for each input")
    check_dynamic(dynamic, ex)
    return ModelSource(module=module.eval(), example_inputs=ex, output_names=[], dynamic=dynamic or None,
                       name=name, metadata={"source": source}, description=description)


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save archives hold constants.pkl / code/ (torch.save zips hold data.pkl only)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _pt_source(path: Path, inputs: list[str], dynamic: dict) -> ModelSource:
    """A ``.pt``/``.pth``: a TorchScript module, a whole pickled nn.Module (torch.save(model)), or a
    token-gating checkpoint. A state_dict holds no architecture and is refused with the way out."""
    import torch

    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise UsageError(f"{path.name} is a TorchScript archive that torch.jit.load cannot read "
                             f"({type(e).__name__}: {first_line(e, 200)})", "re-save it with torch.jit.save") from None
        return _module_source(module, None, inputs, dynamic, path.stem, path.name, "TorchScript module")
    cwd_on_path()  # a pickled module's class is imported by name, as with pkg.mod:fn
    try:  # the user's own file, given to be exported: a whole pickled module needs weights_only=False
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as e:
        fix = ("its class was defined in the script that saved it (__main__): move the class into a module and "
               "save again, or give MODEL as path/to/file.py:function returning the model"
               if "__main__" in str(e) else "run from the directory its module imports from, or give MODEL as "
               "package.module:function returning the model")
        raise UsageError(f"{path.name} holds a pickled model whose code cannot be imported ({type(e).__name__}: "
                         f"{first_line(e, 200)})", fix) from None
    except Exception as e:
        raise UsageError(f"{path.name} is not a file torch.load can read ({type(e).__name__}: {first_line(e, 200)})",
                         "give a torch.save / torch.jit.save file, FILE.pt2, FILE.onnx or package.module:function") from None
    if isinstance(obj, torch.nn.Module):
        return _module_source(obj, None, inputs, dynamic, path.stem, path.name, "pickled nn.Module")
    if isinstance(obj, dict) and "arch" in obj and "state" in obj:  # from `edgekit tokengate train`
        from edgekit.tokengate.builtins import tokengate_checkpoint

        return tokengate_checkpoint(str(path))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path.name} holds a state_dict (weights only, no architecture)",
                         "give MODEL as package.module:function that builds the model and calls "
                         "load_state_dict, plus --input NAME:SHAPE; or torch.jit.save / torch.export.save it")
    raise UsageError(f"{path.name} holds a {type(obj).__name__}, not a model",
                     "give a torch.save(model) / torch.jit.save file, FILE.pt2, FILE.onnx or package.module:function")


def resolve(model: str | None, inputs: list[str] | None = None, dynamic: list[str] | None = None) -> ModelSource:
    inputs, dyn = list(inputs or []), parse_dynamic(list(dynamic or []))
    if not model:
        model = f"builtin:{registry.DEFAULT}"
    if model.startswith("builtin:"):
        src = registry.get(model.split(":", 1)[1])
        src.metadata.setdefault("source", model)
        if dyn:
            check_dynamic(dyn, src.example_inputs)
            src.dynamic = dyn
        return src
    p = Path(model)
    if model.endswith((".pt2", ".onnx")):
        if not p.is_file():
            raise MissingFileError(f"model file {model!r} does not exist", "check the path")
        return _onnx_source(p, inputs, dyn) if model.endswith(".onnx") else _pt2_source(p, inputs, dyn)
    if model.endswith((".pt", ".pth")):  # TorchScript, torch.save(model), or a token-gating checkpoint
        if not p.is_file():
            raise MissingFileError(f"model file {model!r} does not exist", "check the path")
        return _pt_source(p, inputs, dyn)

    if is_hf_dir(p):  # a transformers model directory (save_pretrained)
        return hf_source(p, inputs, dyn)
    if is_callable_ref(model):  # pkg.mod:fn, path/file.py:fn
        return _callable_source(model, inputs, dyn)
    if not p.exists():
        raise MissingFileError(f"MODEL {model!r} does not exist (no such file or directory)",
                               "check the path; or give builtin:NAME (see `edgekit models`) or "
                               "package.module:function")
    raise UsageError(f"cannot understand MODEL {model!r}" + (" (a directory without config.json)" if p.is_dir() else ""),
                     "use builtin:NAME, FILE.pt2, FILE.onnx, FILE.pt (TorchScript, torch.save(model) or a "
                     "token-gating checkpoint), a transformers model directory, or package.module:function (or nothing for the default)")


def check_runs(src: ModelSource, inputs: list[str] | None = None) -> None:
    """Run the model once on its example inputs before any export: a wrong ``--input`` shape or dtype,
    or a forward that raises, is one line naming the fix (not an internal error after minutes of work)."""
    if src.exporter is not None:
        return  # multi-graph built-ins export (and check) themselves
    feeds = src.example_inputs
    try:
        if src.module is not None:  # the run that names the outputs (export does not run it again)
            from edgekit.exporters.source import default_output_names

            names = default_output_names(src.module, feeds)
            src.output_names = src.output_names or names
        elif src.onnx_path:
            import onnxruntime as ort

            ort.InferenceSession(src.onnx_path, providers=["CPUExecutionProvider"]).run(None, feeds)
    except ExportError as e:
        if e.__cause__ is None:
            raise
        _fails(src, inputs, f"{type(e.__cause__).__name__}: {first_line(e.__cause__, 200)}")  # the model's own error
    except EdgekitError:
        raise
    except Exception as e:
        _fails(src, inputs, f"{type(e).__name__}: {first_line(e, 200)}")


def _fails(src: ModelSource, inputs: list[str] | None, why: str) -> None:
    """The one-line error for a model that fails on its example: name --input when the user gave it."""
    if inputs:
        raise UsageError(f"the model fails on {' '.join('--input ' + i for i in inputs)} ({why})",
                         "give each input the shape and dtype the model expects: --input NAME:SHAPE[:DTYPE], "
                         "e.g. x:1x3x224x224:float32") from None
    shapes = ", ".join(f"{k}:{'x'.join(map(str, v.shape))}:{v.dtype}" for k, v in src.example_inputs.items())
    raise UsageError(f"the model fails on its own example inputs {shapes} ({why})",
                     "fix the model's forward, or pass --input NAME:SHAPE[:DTYPE] with the shapes it expects") from None
