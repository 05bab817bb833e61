"""Gate expressions: the safe evaluator accepts comparisons of metrics and refuses code."""

from __future__ import annotations

import pytest

from pai_lab.control.gates import evaluate, metric_names, parse_gate
from pai_lab.errors import BadRequest

M = {"accuracy": 0.95, "latency_p99_ms": 12.0, "loss": 0.1}


@pytest.mark.parametrize(
    "gate,passed",
    [
        ("accuracy >= 0.9", True),
        ("accuracy >= 0.99", False),
        ("accuracy >= 0.9 and latency_p99_ms < 20", True),
        ("accuracy >= 0.9 and latency_p99_ms < 10", False),
        ("accuracy >= 0.99 or loss <= 0.2", True),
        ("not (loss > 0.5)", True),
        ("0.9 <= accuracy < 1", True),
        ("0.96 <= accuracy < 1", False),
        ("accuracy != 0.95", False),
        ("loss > -1", True),
        ("accuracy >= 9e-1", True),
        ("", True),
        ("   ", True),
    ],
)
def test_verdicts(gate, passed):
    r = evaluate(gate, M)
    assert r.passed is passed, r.to_dict()
    assert r.to_dict()["passed"] is passed


def test_all_checks_are_reported_without_short_circuit():
    r = evaluate("accuracy >= 0.99 and latency_p99_ms < 20", M)
    assert [c.expr for c in r.checks] == ["accuracy >= 0.99", "latency_p99_ms < 20"]
    assert [c.passed for c in r.checks] == [False, True]
    assert r.checks[0].values == {"accuracy": 0.95}
    assert "accuracy >= 0.99 [FAILED: accuracy=0.95]" in r.summary
    assert r.summary.startswith("gate 'accuracy >= 0.99 and latency_p99_ms < 20' failed")


def test_missing_metric_fails_and_says_so():
    r = evaluate("latency_p50_ms < 5", M)
    assert not r.passed
    assert r.checks[0].values == {"latency_p50_ms": None}
    assert "not recorded" in r.checks[0].reason
    assert "latency_p50_ms=missing" in r.summary
    # a non-number and NaN count as missing too
    assert not evaluate("x < 5", {"x": "3"}).passed
    assert not evaluate("x < 5", {"x": float("nan")}).passed
    assert not evaluate("x < 5", {"x": True}).passed


@pytest.mark.parametrize(
    "gate,msg",
    [
        ("__import__('os').system('id')", "function calls"),
        ("accuracy.real > 1", "attribute access"),
        ("accuracy[0] > 1", "subscripts"),
        ("accuracy * 2 > 1", "arithmetic"),
        ("accuracy > 'a'", "constant 'a'"),
        ("accuracy > True", "constant True"),
        ("accuracy in [1, 2]", "operator 'In'"),
        ("accuracy is None", "operator 'Is'"),
        ("accuracy", "alone is not a condition"),
        ("accuracy >= 0.9 and", "not a valid expression"),
        ("(lambda: 1)() > 0", "function calls"),
        ("accuracy if loss else 1", "conditional"),
        ("x := 1", "not a valid expression"),
        ("1 > 0", None),  # allowed: a constant gate is odd but harmless
        ("~accuracy > 1", "UnaryOp"),
    ],
)
def test_refused_expressions(gate, msg):
    if msg is None:
        assert parse_gate(gate) is not None
        return
    with pytest.raises(BadRequest) as e:
        parse_gate(gate)
    assert msg in e.value.message
    assert e.value.message.startswith("gate:")


def test_non_string_and_too_long():
    with pytest.raises(BadRequest, match="expected a string"):
        parse_gate(5)
    with pytest.raises(BadRequest, match="longer than"):
        parse_gate("a > 1 and " * 200 + "a > 1")


def test_metric_names():
    assert metric_names("accuracy >= 0.9 and (latency_p99_ms < 20 or accuracy > 0.99)") == [
        "accuracy",
        "latency_p99_ms",
    ]
    assert metric_names("") == []
