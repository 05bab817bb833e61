"""Helpers for notebook and script code: metrics, job context, checkpoints.

They work the same interactively and inside a job, so a notebook needs no ``if`` to be
submitted: inside a job (``PAI_METRICS_FILE`` set by the runner) metrics are appended as
JSON lines that the backend streams to the control plane while the job runs; in an
interactive session they are kept in memory (``metrics()``) and nothing is printed.

This module imports only the standard library: it is imported inside every job's kernel.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

_metrics: list[dict] = []


def _number(value: Any) -> float | int:
    """ints stay ints; anything else with ``__float__`` (numpy, 0-d tensors) is a float."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"log_metric: value must be a number, got {type(value).__name__}") from None


def log_metric(name: str, value: Any, step: int | None = None) -> dict:
    """Record ``value`` for metric ``name`` (optionally at ``step``); returns the record.

    Inside a job the record goes to ``$PAI_METRICS_FILE`` (one JSON object per line,
    flushed at once so live metrics appear while the job runs).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("log_metric: name must be a non-empty string")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                step = int(step)
            except (TypeError, ValueError):
                raise TypeError(
                    f"log_metric: step must be an integer, got {type(step).__name__}"
                ) from None
    v = _number(value)
    # JSON has no NaN/inf; a diverging loss is still worth recording, as a string
    v_json: Any = str(v) if isinstance(v, float) and not math.isfinite(v) else v
    record = {"name": name, "value": v_json, "step": step, "time": time.time()}
    path = os.environ.get("PAI_METRICS_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
    else:
        _metrics.append(record)
    return record


def metrics() -> list[dict]:
    """Metrics logged so far in this process (interactive use) or in this job."""
    path = os.environ.get("PAI_METRICS_FILE")
    if path:
        return read_metrics_file(path)
    return list(_metrics)


def read_metrics_file(path: str) -> list[dict]:
    """Parse a metrics JSON-lines file, skipping a torn last line."""
    out: list[dict] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "name" in rec and "value" in rec:
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


def current_job() -> dict | None:
    """The job this code runs in (id, workspace, attempt, dirs, rank...), or None."""
    job_id = os.environ.get("PAI_JOB_ID")
    if not job_id:
        return None
    env = os.environ

    def _int(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    return {
        "id": job_id,
        "workspace": env.get("PAI_WORKSPACE"),
        "attempt": _int("PAI_ATTEMPT", 1),
        "output_dir": env.get("PAI_OUTPUT_DIR"),
        "checkpoint_dir": env.get("PAI_CHECKPOINT_DIR"),
        "rank": _int("RANK", 0),
        "world_size": _int("WORLD_SIZE", 1),
        "url": env.get("PAI_LAB_URL"),
    }


def checkpoint_dir() -> str:
    """A local directory for checkpoints that survives retries of the same job.

    Inside a job it is ``$PAI_CHECKPOINT_DIR``: the runner fills it with the previous
    attempt's checkpoints (from ``jobs/<id>/checkpoints/`` in the store) before the code
    starts, and uploads it periodically and when the attempt ends. Interactively it is
    ``./checkpoints``.
    """
    path = os.environ.get("PAI_CHECKPOINT_DIR") or os.path.abspath("checkpoints")
    os.makedirs(path, exist_ok=True)
    return path


__all__ = ["log_metric", "metrics", "current_job", "checkpoint_dir", "read_metrics_file"]
