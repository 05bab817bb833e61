"""Tensor decoding/encoding of the Open Inference Protocol, every datatype we claim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pai_lab.serving.protocol import (
    DATATYPES,
    InferenceError,
    TensorSpec,
    check_against_signature,
    decode_tensor,
    encode_response,
    parse_infer_request,
)


@pytest.mark.parametrize(
    "datatype,data,expected_dtype",
    [
        ("BOOL", [True, False, True, True], np.bool_),
        ("INT8", [-128, 0, 5, 127], np.int8),
        ("INT16", [-3, 0, 5, 30000], np.int16),
        ("INT32", [-3, 0, 5, 2**31 - 1], np.int32),
        ("INT64", [-3, 0, 5, 2**62], np.int64),
        ("UINT8", [0, 1, 2, 255], np.uint8),
        ("UINT16", [0, 1, 2, 65535], np.uint16),
        ("UINT32", [0, 1, 2, 2**32 - 1], np.uint32),
        ("UINT64", [0, 1, 2, 2**63], np.uint64),
        ("FP16", [0.5, 1.0, -2.0, 3.25], np.float16),
        ("FP32", [0.5, 1, -2.0, 3.25], np.float32),
        ("FP64", [0.1, 1, -2.0, 3.25], np.float64),
        ("BYTES", ["a", "bc", "", "déf"], object),
    ],
)
def test_every_datatype_round_trips_flat_and_nested(datatype, data, expected_dtype):
    for payload in (data, [data[:2], data[2:]]):
        name, arr = decode_tensor(
            {"name": "x", "datatype": datatype, "shape": [2, 2], "data": payload}, 0
        )
        assert name == "x" and arr.shape == (2, 2)
        assert arr.dtype == np.dtype(expected_dtype)
        assert arr.ravel().tolist() == [
            np.dtype(expected_dtype).type(v) if expected_dtype is not object else v for v in data
        ]
        out = json.loads(encode_response("m", "1", {"y": arr}))["outputs"][0]
        assert out["datatype"] == datatype
        assert out["shape"] == [2, 2]
        assert out["data"] == (data if datatype != "FP16" else [float(v) for v in data])


@pytest.mark.parametrize(
    "tensor,needle",
    [
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, "unsupported datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}, "does not accept"),
        ({"name": "x", "datatype": "INT32", "shape": [2], "data": [1.5, 2]}, "does not accept"),
        ({"name": "x", "datatype": "BOOL", "shape": [2], "data": [1, 0]}, "does not accept"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}, "does not accept"),
        ({"name": "x", "datatype": "UINT8", "shape": [2], "data": [1, 256]}, "out of range"),
        ({"name": "x", "datatype": "INT8", "shape": [1], "data": [-129]}, "out of range"),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}, "needs 4"),
        (
            {"name": "x", "datatype": "FP32", "shape": [3, 2], "data": [[1, 2, 3], [4, 5, 6]]},
            "nested",
        ),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}, "ragged"),
        ({"name": "x", "datatype": "FP32", "shape": [-1, 2], "data": [1, 2]}, "negative"),
        ({"name": "x", "datatype": "FP32", "shape": "2", "data": [1, 2]}, "list of integers"),
        ({"name": "x", "datatype": "FP32", "data": [1, 2]}, "no 'shape'"),
        ({"name": "x", "datatype": "FP32", "shape": [2]}, "no 'data'"),
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "'name'"),
    ],
)
def test_bad_tensors_are_refused_with_a_reason(tensor, needle):
    with pytest.raises(InferenceError) as e:
        decode_tensor(tensor, 0)
    assert e.value.status == 400
    assert needle in e.value.message


def test_request_level_checks():
    with pytest.raises(InferenceError, match="no 'inputs'"):
        parse_infer_request({"outputs": []})
    with pytest.raises(InferenceError, match="JSON object"):
        parse_infer_request([1, 2])
    with pytest.raises(InferenceError, match="non-empty list"):
        parse_infer_request({"inputs": []})
    t = {"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(InferenceError, match="duplicate"):
        parse_infer_request({"inputs": [t, t]})
    with pytest.raises(InferenceError, match="outputs"):
        parse_infer_request({"inputs": [t], "outputs": ["predict"]})
    req = parse_infer_request(
        {"id": "r1", "inputs": [t], "outputs": [{"name": "p"}], "parameters": {"k": 1}}
    )
    assert (req.id, req.outputs, req.parameters, req.rows) == ("r1", ["p"], {"k": 1}, 1)


def test_signature_checks_shape_and_names():
    sig = [TensorSpec("a", "FP32", [-1, 4]), TensorSpec("b", "INT64", [-1])]
    ok = parse_infer_request(
        {
            "inputs": [
                {"name": "b", "datatype": "INT64", "shape": [2], "data": [1, 2]},
                {"name": "a", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))},
            ]
        }
    )
    check_against_signature(ok, sig)
    assert [n for n, _ in ok.inputs] == ["a", "b"]  # reordered to the signature
    bad = parse_infer_request(
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [2, 3], "data": list(range(6))}]}
    )
    with pytest.raises(InferenceError, match="missing inputs"):
        check_against_signature(bad, sig)
    with pytest.raises(InferenceError, match=r"shape \[2, 3\].*\[-1, 4\]"):
        check_against_signature(bad, sig[:1])


def test_all_claimed_datatypes_are_listed():
    assert set(DATATYPES) == {
        "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
        "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip
