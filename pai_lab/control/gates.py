"""Evaluation gates: a tiny, safe expression language over a model version's metrics.

A gate such as ``accuracy >= 0.9 and latency_p99_ms < 20`` guards every alias move of a
model. Gates are written by people and stored in the database, so they are parsed with
:mod:`ast` and walked by hand — never ``eval``-ed. Only these nodes are allowed:

- metric names (``accuracy``, ``f1_macro``; any Python identifier) and numbers
  (``0.9``, ``-1``, ``1e-3``); ``true``/``false`` are not needed and not allowed;
- comparisons ``< <= > >= == !=`` (chains like ``0.8 <= accuracy < 1`` work);
- ``and``, ``or``, ``not`` and parentheses.

Anything else (calls, attributes, subscripts, strings, arithmetic, lambdas, ...) is a
:class:`~pai_lab.errors.BadRequest` naming what is not allowed, at the time the gate is
set, so a broken gate never sits in the database waiting to fail a promotion.

A metric the version does not have makes its comparison fail (and says so), rather than
raising: "no latency measured" must not pass a latency gate.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest

MAX_GATE_LENGTH = 1000

_CMP = {
    ast.Lt: (operator.lt, "<"),
    ast.LtE: (operator.le, "<="),
    ast.Gt: (operator.gt, ">"),
    ast.GtE: (operator.ge, ">="),
    ast.Eq: (operator.eq, "=="),
    ast.NotEq: (operator.ne, "!="),
}

_NODE_NAMES = {
    ast.Call: "function calls",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.BinOp: "arithmetic",
    ast.Lambda: "lambdas",
    ast.IfExp: "conditional expressions",
    ast.Dict: "dicts",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.ListComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.NamedExpr: "assignments",
    ast.JoinedStr: "strings",
}


@dataclass
class Check:
    """One comparison of a gate with the values it saw."""

    expr: str
    passed: bool
    values: dict[str, float | None] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"expr": self.expr, "passed": self.passed, "values": self.values}
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class GateResult:
    """The verdict of a gate on a set of metrics (what the API returns and audits)."""

    gate: str
    passed: bool
    checks: list[Check]

    @property
    def summary(self) -> str:
        if not self.gate:
            return "no gate set: passed"
        parts = []
        for c in self.checks:
            vals = ", ".join(
                f"{k}={'missing' if v is None else format(v, 'g')}" for k, v in c.values.items()
            )
            mark = "ok" if c.passed else "FAILED"
            parts.append(f"{c.expr} [{mark}{': ' + vals if vals else ''}]")
        return f"gate {self.gate!r} {'passed' if self.passed else 'failed'}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
            "summary": self.summary,
        }


def _reject(node: ast.AST, gate: str) -> BadRequest:
    what = _NODE_NAMES.get(type(node))
    if isinstance(node, ast.Constant):
        what = f"the constant {node.value!r}"
    elif what is None:
        what = f"'{type(node).__name__}' expressions"
    return BadRequest(
        f"gate: {what} are not allowed in {gate!r}; use metric names, numbers, "
        "comparisons (< <= > >= == !=), and/or/not and parentheses"
        if not what.startswith("the constant")
        else f"gate: {what} is not allowed in {gate!r}; only numbers may be compared with metrics"
    )


def _check(node: ast.AST, gate: str) -> None:
    """Walk the tree; raise BadRequest on any node outside the allowed set."""
    if isinstance(node, ast.Expression):
        _check(node.body, gate)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, gate)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            _check(node.operand, gate)
        elif isinstance(node.op, (ast.USub, ast.UAdd)) and _is_number(node.operand):
            return
        else:
            raise _reject(node, gate)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMP:
                raise BadRequest(
                    f"gate: the operator '{type(op).__name__}' is not allowed in {gate!r}; "
                    "use < <= > >= == !="
                )
        for operand in [node.left, *node.comparators]:
            if not (isinstance(operand, ast.Name) or _is_number(operand)):
                raise _reject(operand, gate)
    elif isinstance(node, ast.Name):
        raise BadRequest(
            f"gate: {node.id!r} alone is not a condition in {gate!r}; compare it, e.g. "
            f"'{node.id} >= 0.9'"
        )
    else:
        raise _reject(node, gate)


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _is_number(node.operand)
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    )


def parse_gate(gate: Any) -> ast.Expression | None:
    """Validate a gate expression; ``None`` for the empty gate (always passes)."""
    if gate is None:
        return None
    if not isinstance(gate, str):
        raise BadRequest("gate: expected a string such as 'accuracy >= 0.9'")
    if len(gate) > MAX_GATE_LENGTH:
        raise BadRequest(f"gate: longer than {MAX_GATE_LENGTH} characters")
    text = gate.strip()
    if not text:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise BadRequest(f"gate: {gate!r} is not a valid expression ({e.msg})") from None
    _check(tree, gate)
    return tree


def metric_names(gate: str) -> list[str]:
    """The metric names a gate reads, in order of appearance."""
    tree = parse_gate(gate)
    if tree is None:
        return []
    seen: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in seen:
            seen.append(node.id)
    return seen


def _number(node: ast.AST) -> float:
    if isinstance(node, ast.UnaryOp):
        v = _number(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    assert isinstance(node, ast.Constant)
    return float(node.value)


def _metric(metrics: dict, name: str) -> float | None:
    v = metrics.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def evaluate(gate: str | None, metrics: dict[str, Any]) -> GateResult:
    """Evaluate ``gate`` against ``metrics`` (name -> number); never executes code."""
    tree = parse_gate(gate)
    if tree is None:
        return GateResult(gate="", passed=True, checks=[])
    src = gate.strip() if gate else ""
    checks: list[Check] = []

    def ev(node: ast.AST) -> bool:
        if isinstance(node, ast.BoolOp):
            # Evaluate every operand (no short circuit) so the verdict lists all checks.
            results = [ev(v) for v in node.values]
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            values: dict[str, float | None] = {}
            nums: list[float | None] = []
            for o in operands:
                if isinstance(o, ast.Name):
                    v = _metric(metrics, o.id)
                    values[o.id] = v
                    nums.append(v)
                else:
                    nums.append(_number(o))
            expr = ast.get_source_segment(src, node) or ast.unparse(node)
            missing = [k for k, v in values.items() if v is None]
            if missing:
                checks.append(
                    Check(
                        expr,
                        False,
                        values,
                        f"metric{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} not recorded for this version",
                    )
                )
                return False
            ok = all(
                _CMP[type(op)][0](a, b)
                for op, a, b in zip(node.ops, nums[:-1], nums[1:], strict=True)
            )
            checks.append(Check(expr, ok, values))
            return ok
        raise _reject(node, src)  # unreachable after parse_gate

    passed = ev(tree.body)
    return GateResult(gate=src, passed=passed, checks=checks)


__all__ = ["Check", "GateResult", "evaluate", "metric_names", "parse_gate"]
