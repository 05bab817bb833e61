"""Model runtimes: turn a model file from a local path into a ``predict`` over numpy arrays.

A runtime is loaded once per worker process from a path the operator (or the control
plane) chose — never from anything in a request. ``predict`` is synchronous and runs in
the batcher's executor thread, so it may take as long as the model needs without
blocking the event loop.

- ``sklearn``: a joblib or pickle file holding an estimator. Outputs ``predict`` (default)
  and ``predict_proba`` (when the request names that output, or sets the request
  parameter ``{"method": "predict_proba"}``).
- ``torch``: a TorchScript file (``torch.jit.save``), loaded with ``torch.jit.load`` on the
  chosen device and run under ``torch.inference_mode``; FP32 tensors in and out. torch is
  an optional extra (``pip install torch==2.13.0`` for the CPU wheel).

A ``model.json`` beside the model file (what the registry writes) may declare the
signature: ``{"signature": {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}}``.
Without one, sklearn infers it from ``n_features_in_``/``classes_``.

Note: unpickling executes code from the model file itself, so model files must come
from a trusted store; that is why the server only takes paths from its configuration.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import InferenceError, InferRequest, TensorSpec, datatype_of

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle")
TORCH_SUFFIXES = (".pt", ".pth", ".torchscript")


def resolve_model_file(path: str | os.PathLike, framework: str | None = None) -> Path:
    """A model path may be a file or a directory holding exactly one model file."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist")
    suffixes = {
        "sklearn": SKLEARN_SUFFIXES,
        "torch": TORCH_SUFFIXES,
    }.get(framework or "", SKLEARN_SUFFIXES + TORCH_SUFFIXES)
    found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
    if len(found) != 1:
        raise FileNotFoundError(
            f"model directory {str(p)!r} must hold exactly one model file "
            f"({', '.join(suffixes)}); found {[f.name for f in found]}"
        )
    return found[0]


def guess_framework(path: Path) -> str:
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    if path.suffix in SKLEARN_SUFFIXES:
        return "sklearn"
    raise ValueError(f"cannot tell the framework of {path.name!r}; pass framework explicitly")


def _read_signature(model_file: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    meta = model_file.parent / "model.json"
    if not meta.is_file():
        return [], []
    try:
        sig = json.loads(meta.read_text()).get("signature") or {}
        return (
            [TensorSpec.from_dict(d) for d in sig.get("inputs", [])],
            [TensorSpec.from_dict(d) for d in sig.get("outputs", [])],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{meta}: invalid signature: {e}") from None


class ModelRuntime:
    """Base class: subclasses set the signature and implement ``predict``."""

    framework = "none"
    platform = ""

    def __init__(self, model_file: Path):
        self.model_file = model_file
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.default_outputs: list[str] = []
        self.predict_calls = 0  # how many times the model itself ran (batching shows here)

    def output_names(self, req: InferRequest) -> list[str]:
        """Which outputs this request wants; 400 naming the unknown one otherwise."""
        names = req.outputs or self.default_outputs
        known = {o.name for o in self.outputs}
        for n in names:
            if known and n not in known:
                raise InferenceError(f"unknown output '{n}'; this model has {sorted(known)}", 400)
        return list(names)

    def predict(self, inputs: list[np.ndarray], outputs: list[str], params: dict) -> dict:
        raise NotImplementedError


class SklearnRuntime(ModelRuntime):
    framework = "sklearn"
    platform = "sklearn"

    def __init__(self, model_file: Path):
        super().__init__(model_file)
        self.model = self._load(model_file)
        if not hasattr(self.model, "predict"):
            raise ValueError(f"{model_file.name}: object has no predict() method")
        ins, outs = _read_signature(model_file)
        n = getattr(self.model, "n_features_in_", None)
        self.inputs = ins or [
            TensorSpec("input-0", "FP64", [-1, int(n)] if n is not None else [-1, -1])
        ]
        classes = getattr(self.model, "classes_", None)
        if outs:
            self.outputs = outs
        else:
            pred_type = datatype_of(np.asarray(classes)) if classes is not None else "FP64"
            self.outputs = [TensorSpec("predict", pred_type, [-1])]
            if hasattr(self.model, "predict_proba") and classes is not None:
                self.outputs.append(TensorSpec("predict_proba", "FP64", [-1, len(classes)]))
        self.default_outputs = ["predict"]

    @staticmethod
    def _fast_config() -> Any:
        import sklearn

        return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)

    @staticmethod
    def _load(path: Path) -> Any:
        if path.suffix == ".joblib":
            import joblib

            return joblib.load(path)
        with open(path, "rb") as f:
            return pickle.load(f)

    def output_names(self, req: InferRequest) -> list[str]:
        method = req.parameters.get("method")
        if method is not None and not req.outputs:
            if method not in ("predict", "predict_proba"):
                raise InferenceError(
                    f"parameter 'method' must be 'predict' or 'predict_proba', got {method!r}"
                )
            if method == "predict_proba" and not hasattr(self.model, "predict_proba"):
                raise InferenceError("this model has no predict_proba")
            return [method]
        return super().output_names(req)

    def predict(self, inputs: list[np.ndarray], outputs: list[str], params: dict) -> dict:
        if len(inputs) != 1:
            raise InferenceError(f"a scikit-learn model takes one input tensor, got {len(inputs)}")
        x = inputs[0]
        if x.ndim == 1:
            x = x.reshape(1, -1) if len(self.inputs[0].shape) == 2 else x
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InferenceError("input contains NaN or infinity", 400)
        self.predict_calls += 1
        result = {}
        try:
            # finiteness was checked above and the estimator's parameters were validated
            # when it was fitted: skip both checks on the hot path (~10% of a small predict)
            with self._fast_config():
                for name in outputs:
                    if name == "predict":
                        result[name] = np.asarray(self.model.predict(x))
                    elif name == "predict_proba":
                        result[name] = np.asarray(self.model.predict_proba(x))
                    else:
                        raise InferenceError(f"unknown output '{name}'")
        except InferenceError:
            raise
        except (ValueError, TypeError) as e:
            raise InferenceError(f"the model rejected the input: {e}", 400) from None
        return result


class TorchRuntime(ModelRuntime):
    framework = "torch"
    platform = "pytorch_torchscript"

    def __init__(self, model_file: Path, device: str = "auto", num_threads: int = 0):
        super().__init__(model_file)
        try:
            import torch
        except ImportError:
            raise RuntimeError(
                "serving a TorchScript model needs torch: pip install torch==2.13.0"
            ) from None
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.model = torch.jit.load(str(model_file), map_location=self.device)
        self.model.eval()
        ins, outs = _read_signature(model_file)
        self.inputs = ins or [TensorSpec("input-0", "FP32", [-1, -1])]
        self.outputs = outs or [TensorSpec("output-0", "FP32", [-1, -1])]
        self.default_outputs = [o.name for o in self.outputs]

    def output_names(self, req: InferRequest) -> list[str]:
        names = req.outputs or self.default_outputs
        if req.outputs and self.outputs:
            known = {o.name for o in self.outputs}
            bad = [n for n in names if n not in known]
            if bad:
                raise InferenceError(f"unknown outputs {bad}; this model has {sorted(known)}")
        return list(names)

    def predict(self, inputs: list[np.ndarray], outputs: list[str], params: dict) -> dict:
        torch = self.torch
        tensors = []
        for x in inputs:
            if x.dtype == object:
                raise InferenceError("a TorchScript model takes numeric tensors, not BYTES")
            tensors.append(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            )
        self.predict_calls += 1
        with torch.inference_mode():
            try:
                out = self.model(*tensors)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise InferenceError(f"the model rejected the input: {first}", 400) from None
        if isinstance(out, dict):
            values = list(out.values())
        elif isinstance(out, (tuple, list)):
            values = list(out)
        else:
            values = [out]
        arrays = [v.detach().to("cpu", torch.float32).numpy() for v in values]
        all_names = [o.name for o in self.outputs]
        if len(all_names) != len(arrays):
            all_names = [f"output-{i}" for i in range(len(arrays))]
        by_name = dict(zip(all_names, arrays, strict=True))
        missing = [n for n in outputs if n not in by_name]
        if missing:
            raise InferenceError(f"unknown outputs {missing}; this model has {all_names}")
        return {n: by_name[n] for n in outputs}


def load_runtime(
    path: str | os.PathLike,
    framework: str | None = None,
    *,
    device: str = "auto",
    torch_threads: int = 0,
) -> ModelRuntime:
    """Load a model file (or a directory holding one) with the matching runtime."""
    model_file = resolve_model_file(path, framework)
    framework = framework or guess_framework(model_file)
    if framework == "sklearn":
        return SklearnRuntime(model_file)
    if framework in ("torch", "pytorch", "torchscript"):
        return TorchRuntime(model_file, device=device, num_threads=torch_threads)
    raise ValueError(f"unknown framework {framework!r}; expected 'sklearn' or 'torch'")
