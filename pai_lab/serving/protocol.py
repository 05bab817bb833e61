"""Open Inference Protocol (V2) REST: decoding requests and encoding responses.

Kept free of tornado and of any runtime so the model server, the router and the tests
share one definition of what a valid tensor is. Every problem raises
:class:`InferenceError` with the HTTP status and a message that names the input and the
reason; the server renders it as ``{"error": "<message>"}``.

Tensor rules (the V2 spec, "Tensor Data"): ``data`` is row-major, either flat or nested to
the tensor's shape; ``shape`` is a list of non-negative ints whose product is the number
of elements; BOOL is JSON booleans, integer types are JSON integers within the type's
range, FP types are JSON numbers, BYTES are JSON strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # optional: about 3x faster (de)serialisation than the stdlib, same JSON
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _orjson = None

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}

# numpy kinds a JSON array may arrive as, per V2 datatype
_ACCEPTED_KINDS = {
    "BOOL": "b",
    "INT8": "iu",
    "INT16": "iu",
    "INT32": "iu",
    "INT64": "iu",
    "UINT8": "iu",
    "UINT16": "iu",
    "UINT32": "iu",
    "UINT64": "iu",
    "FP16": "iuf",
    "FP32": "iuf",
    "FP64": "iuf",
    "BYTES": "US",
}


class InferenceError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def loads(body: bytes) -> Any:
    """Parse a JSON body, raising a 400 that says the body is not JSON."""
    try:
        if _orjson is not None:
            return _orjson.loads(body)
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InferenceError(f"request body is not valid JSON: {e}") from None


def _np_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> bytes:
    """Serialise a response body (numpy scalars and arrays allowed)."""
    if _orjson is not None:
        return _orjson.dumps(obj, default=_np_default, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, default=_np_default, separators=(",", ":")).encode()


def datatype_of(arr: np.ndarray) -> str:
    """The V2 datatype name for a numpy array (strings and objects are BYTES)."""
    kind = arr.dtype.kind
    if kind in "USOa":
        return "BYTES"
    for name, t in DATATYPES.items():
        if t is not object and arr.dtype == np.dtype(t):
            return name
    raise InferenceError(f"cannot encode output of numpy dtype {arr.dtype}", 500)


@dataclass
class TensorSpec:
    """One entry of a model's signature: ``shape`` uses -1 for a free dimension."""

    name: str
    datatype: str
    shape: list[int]

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(str(d["name"]), str(d["datatype"]).upper(), [int(x) for x in d["shape"]])


@dataclass
class InferRequest:
    """A decoded infer request: input arrays in request order plus what to return."""

    inputs: list[tuple[str, np.ndarray]]
    outputs: list[str] | None = None  # None: the model's default outputs
    parameters: dict = field(default_factory=dict)
    id: str | None = None

    @property
    def rows(self) -> int:
        """Batch dimension (first dim of the first input); 1 for scalars."""
        arr = self.inputs[0][1]
        return int(arr.shape[0]) if arr.ndim else 1


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InferenceError(f"input '{name}': 'shape' must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InferenceError(f"input '{name}': 'shape' {shape} has a negative dimension")
    return shape


def decode_tensor(t: Any, index: int) -> tuple[str, np.ndarray]:
    """Decode one ``inputs[i]`` object into (name, array of its declared datatype)."""
    if not isinstance(t, dict):
        raise InferenceError(f"inputs[{index}] must be an object")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise InferenceError(f"inputs[{index}] needs a non-empty string 'name'")
    datatype = t.get("datatype")
    if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
        raise InferenceError(
            f"input '{name}': unsupported datatype {datatype!r}; expected one of "
            + ", ".join(DATATYPES)
        )
    datatype = datatype.upper()
    if "shape" not in t:
        raise InferenceError(f"input '{name}' has no 'shape'")
    shape = _check_shape(name, t["shape"])
    if "data" not in t:
        raise InferenceError(f"input '{name}' has no 'data'")
    data = t["data"]
    if not isinstance(data, list):
        data = [data]
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InferenceError(
            f"input '{name}': 'data' is ragged (nested lists of different lengths)"
        ) from None
    if raw.dtype.kind in "fO" and datatype in ("INT64", "UINT64"):
        # integers beyond float64's exact range arrive as floats/objects: keep them exact
        flat = np.asarray(data, dtype=object).ravel()
        if flat.size and all(type(v) is int for v in flat):
            try:
                raw = np.asarray(data, dtype=DATATYPES[datatype])
            except OverflowError:
                raise InferenceError(f"input '{name}': value out of range for {datatype}") from None
    expected = math.prod(shape)
    if raw.size != expected:
        raise InferenceError(
            f"input '{name}': shape {shape} needs {expected} elements but 'data' has {raw.size}"
        )
    if raw.ndim > 1 and list(raw.shape) != shape:
        raise InferenceError(
            f"input '{name}': nested 'data' has shape {list(raw.shape)}, declared shape {shape}"
        )
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[datatype]:
        got = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}.get(
            raw.dtype.kind, "strings" if raw.dtype.kind in "US" else "mixed values"
        )
        raise InferenceError(f"input '{name}': datatype {datatype} does not accept {got}")
    if datatype == "BYTES":
        arr = raw.astype(object).reshape(shape)
    else:
        np_type = DATATYPES[datatype]
        if raw.size and datatype[0] in "IU":
            info = np.iinfo(np_type)
            lo, hi = raw.min(), raw.max()
            if lo < info.min or hi > info.max:
                raise InferenceError(
                    f"input '{name}': value out of range for {datatype} [{info.min}, {info.max}]"
                )
        arr = raw.astype(np_type, copy=False).reshape(shape)
    return name, arr


def parse_infer_request(body: Any, max_inputs: int = 64) -> InferRequest:
    """Validate a decoded JSON body as a V2 inference request."""
    if not isinstance(body, dict):
        raise InferenceError("request body must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if inputs is None:
        raise InferenceError("request has no 'inputs'")
    if not isinstance(inputs, list) or not inputs:
        raise InferenceError("'inputs' must be a non-empty list of tensors")
    if len(inputs) > max_inputs:
        raise InferenceError(f"too many inputs ({len(inputs)} > {max_inputs})")
    decoded = [decode_tensor(t, i) for i, t in enumerate(inputs)]
    names = [n for n, _ in decoded]
    if len(set(names)) != len(names):
        raise InferenceError(f"duplicate input names in {names}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferenceError("'parameters' must be an object")
    outputs = body.get("outputs")
    out_names = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InferenceError("'outputs' must be a list of {\"name\": ...} objects")
        out_names = []
        for i, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InferenceError(f"outputs[{i}] must be an object with a string 'name'")
            out_names.append(o["name"])
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InferenceError("'id' must be a string")
    return InferRequest(decoded, out_names or None, params, rid)


def check_against_signature(req: InferRequest, signature: list[TensorSpec]) -> None:
    """Shape/datatype checks against the model's declared inputs (-1 = any size).

    A model with one declared input accepts one request input under any name (as
    MLServer and Triton clients commonly send ``input-0`` or ``INPUT0``); with several,
    names must match.
    """
    if not signature:
        return
    if len(signature) == 1 and len(req.inputs) == 1:
        pairs = [(signature[0], req.inputs[0])]
    else:
        by_name = dict(req.inputs)
        missing = [s.name for s in signature if s.name not in by_name]
        if missing:
            raise InferenceError(
                f"missing inputs {missing}; the model expects {[s.name for s in signature]}"
            )
        extra = [n for n in by_name if n not in {s.name for s in signature}]
        if extra:
            raise InferenceError(
                f"unknown inputs {extra}; the model expects {[s.name for s in signature]}"
            )
        pairs = [(s, (s.name, by_name[s.name])) for s in signature]
        req.inputs = [p[1] for p in pairs]
    for spec, (name, arr) in pairs:
        if len(spec.shape) != arr.ndim or any(
            d != -1 and d != a for d, a in zip(spec.shape, arr.shape, strict=False)
        ):
            raise InferenceError(
                f"input '{name}' has shape {list(arr.shape)}, the model expects {spec.shape}"
            )
        if spec.datatype == "BYTES" and arr.dtype != object:
            raise InferenceError(f"input '{name}' must be BYTES")
        if spec.datatype != "BYTES" and arr.dtype == object:
            raise InferenceError(f"input '{name}' must be {spec.datatype}, got BYTES")


def encode_tensor(name: str, arr: np.ndarray) -> dict:
    """One response tensor: flat row-major data (the V2 canonical form)."""
    arr = np.asarray(arr)
    datatype = datatype_of(arr)
    if datatype == "BYTES":
        flat = [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()
        ]
    elif _orjson is not None and arr.dtype != np.float16:
        flat = np.ascontiguousarray(arr.ravel())  # orjson serialises numpy natively
    else:
        flat = arr.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": flat}


def encode_response(
    model_name: str,
    model_version: str | None,
    outputs: dict[str, np.ndarray],
    request_id: str | None = None,
) -> bytes:
    body: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        body["model_version"] = model_version
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = [encode_tensor(n, a) for n, a in outputs.items()]
    return dumps(body)
