"""Batch scoring inside a job: ``python -m pai_lab.control.scoring``.

``pai-lab model score iris@production --input pai://datasets/x.csv --output
pai://scores/x.csv`` resolves the reference to a version and submits a normal job whose
command is::

    python -m pai_lab.control.scoring --model iris --version 3 \\
        --input pai://datasets/x.csv --output pai://scores/x.csv [--proba] [--columns a,b]

Running as a job gives scoring what training has: its own process and resources, the
queue and quotas, logs, cancel, and an audit trail. The job reads the model version from
the workspace's registry folder (``models/<name>/<version>/``, through ``pai://`` with the
job's own token: only its workspace), never from anything else, and writes the input
rows with a ``prediction`` column (plus ``proba_<class>`` columns with ``--proba``).
Features are ``--columns``, else the columns the model was fitted on (sklearn's
``feature_names_in_``), else all numeric columns; when their number does not match the
model's signature the job fails with a message asking for ``--columns`` (guessing
which column is an id would silently score garbage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def _log_metric(name: str, value: float) -> None:
    try:
        import pai_lab

        pai_lab.log_metric(name, value)
    except Exception:  # scoring works outside jobs too
        pass


def load_model(name: str, version: str, fs_open) -> tuple[object, dict]:
    """Fetch ``models/<name>/<version>/`` via ``pai://`` and load it (sklearn/torch)."""
    base = f"pai://models/{name}/{version}"
    with fs_open(f"{base}/model.json", "rb") as f:
        meta = json.load(f)
    fname = meta.get("file")
    if not fname or "/" in fname:
        raise SystemExit(f"{base}/model.json names no model file")
    tmp = tempfile.mkdtemp(prefix="pai-score-")
    local = os.path.join(tmp, fname)
    with fs_open(f"{base}/{fname}", "rb") as src, open(local, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    if meta.get("framework") == "torch":
        import torch

        model = torch.jit.load(local, map_location="cpu")
        model.eval()
    else:
        import joblib

        model = joblib.load(local)
    return model, meta


def infer_signature(path: str) -> dict:
    """The V2 signature of a scikit-learn model file (run in a throwaway subprocess).

    ``n_features_in_`` gives the input shape ``[-1, n]`` (FP32 if the fitted coefficients
    are float32, else FP64); ``classes_`` the ``predict`` datatype and the
    ``predict_proba`` width — the names the model server's sklearn runtime uses.
    """
    import joblib
    import numpy as np

    model = joblib.load(path)
    if not hasattr(model, "predict"):
        return {"error": f"{type(model).__name__} has no predict() method"}
    n = getattr(model, "n_features_in_", None)
    coef = getattr(model, "coef_", None)
    dtype = "FP32" if getattr(coef, "dtype", None) == np.float32 else "FP64"
    outputs = []
    classes = getattr(model, "classes_", None)
    pred = "FP64"
    if classes is not None:
        arr = np.asarray(classes)
        if arr.dtype.kind in "USO":
            pred = "BYTES"
        elif arr.dtype.kind == "b":
            pred = "BOOL"
        elif arr.dtype.kind in "iu":
            pred = f"{'U' if arr.dtype.kind == 'u' else ''}INT{arr.dtype.itemsize * 8}"
        else:
            pred = f"FP{arr.dtype.itemsize * 8}"
    outputs.append({"name": "predict", "datatype": pred, "shape": [-1]})
    if hasattr(model, "predict_proba") and classes is not None:
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(classes)]})
    return {
        "signature": {
            "inputs": [{"name": "input-0", "datatype": dtype, "shape": [-1, int(n) if n else -1]}],
            "outputs": outputs,
        },
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--infer-signature":
        print(json.dumps(infer_signature(argv[1])))
        return 0
    p = argparse.ArgumentParser(prog="python -m pai_lab.control.scoring")
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--input", required=True, help="CSV (pai://... or a local path)")
    p.add_argument("--output", required=True, help="CSV to write (pai://... or a local path)")
    p.add_argument("--proba", action="store_true", help="add predict_proba columns")
    p.add_argument("--columns", help="comma-separated feature columns (default: all)")
    p.add_argument("--chunk-rows", type=int, default=100_000)
    args = p.parse_args(argv)

    import fsspec

    import pai_lab.storage.paifs  # noqa: F401  (registers pai://)

    t0 = time.monotonic()
    model, meta = load_model(args.model, args.version, fsspec.open)
    print(
        f"scoring with {args.model}:{args.version} ({meta.get('framework')}) "
        f"from {args.input} to {args.output}",
        flush=True,
    )
    sig_inputs = (meta.get("signature") or {}).get("inputs") or []
    n_features = None
    if sig_inputs and len(sig_inputs[0].get("shape", [])) == 2 and sig_inputs[0]["shape"][1] > 0:
        n_features = sig_inputs[0]["shape"][1]
    # Score into a local temp file and upload only a complete result: a failed job
    # leaves no half-written output behind.
    with fsspec.open(args.input, "rb") as fin, tempfile.TemporaryFile() as tmp:
        rows = score_csv(model, meta, fin, tmp, args, n_features)
        if rows is None:
            return 2
        tmp.seek(0)
        with fsspec.open(args.output, "wb") as fout:
            shutil.copyfileobj(tmp, fout, 1 << 20)
    secs = time.monotonic() - t0
    print(f"scored {rows} rows in {secs:.2f}s -> {args.output}", flush=True)
    _log_metric("rows_scored", rows)
    return 0


def _error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def _numeric(values: list[str]) -> bool:
    try:
        for v in values:
            float(v)
    except ValueError:
        return False
    return True


def score_csv(model, meta: dict, fin, fout, args, n_features: int | None) -> int | None:
    """Stream the CSV in chunks of rows: read, predict, append columns, write.

    The csv module (not pandas) keeps the job's dependencies to what serving needs, and
    every input value is written back exactly as it was read.
    """
    import csv
    import io

    text_in = io.TextIOWrapper(fin, encoding="utf-8", newline="")
    text_out = io.TextIOWrapper(fout, encoding="utf-8", newline="")
    try:
        return _score_rows(model, meta, csv.reader(text_in), csv.writer(text_out), args, n_features)
    finally:
        text_out.flush()
        text_out.detach()  # the caller owns (and closes) both files
        text_in.detach()


def _score_rows(model, meta: dict, reader, writer, args, n_features: int | None) -> int | None:
    import itertools

    import numpy as np

    header = next(reader, None)
    if not header:
        _error(f"{args.input} is empty (no header row)")
        return None
    first = list(itertools.islice(reader, args.chunk_rows))
    if args.columns:
        cols = [c.strip() for c in args.columns.split(",") if c.strip()]
    elif getattr(model, "feature_names_in_", None) is not None:
        cols = [str(c) for c in model.feature_names_in_]
    else:
        cols = [h for i, h in enumerate(header) if _numeric([r[i] for r in first if i < len(r)])]
    missing = [c for c in cols if c not in header]
    if missing:
        _error(f"feature columns {missing} are not in the input's header {header}")
        return None
    if n_features is not None and len(cols) != n_features:
        _error(
            f"the model takes {n_features} features; the input has {len(cols)} numeric "
            f"columns {cols}: name the features with --columns"
        )
        return None
    idx = [header.index(c) for c in cols]
    torch_model = meta.get("framework") == "torch"
    classes = [str(c) for c in getattr(model, "classes_", [])]
    proba = args.proba and not torch_model and hasattr(model, "predict_proba")
    writer.writerow(header + ["prediction"] + ([f"proba_{c}" for c in classes] if proba else []))
    rows = 0
    chunk = first
    line = 2
    while chunk:
        try:
            x = np.array([[float(r[i]) for i in idx] for r in chunk], dtype=np.float64)
        except (ValueError, IndexError):
            for n, r in enumerate(chunk):
                try:
                    [float(r[i]) for i in idx]
                except (ValueError, IndexError):
                    _error(f"line {line + n}: feature values {r} are not all numbers")
                    return None
        if torch_model:
            import torch

            with torch.inference_mode():
                y = model(torch.from_numpy(x.astype(np.float32))).numpy()
            preds = [json.dumps(v) if isinstance(v, list) else v for v in y.tolist()]
            probs = None
        else:
            preds = model.predict(x).tolist()
            probs = model.predict_proba(x).tolist() if proba else None
        for n, r in enumerate(chunk):
            writer.writerow(r + [preds[n]] + (probs[n] if probs is not None else []))
        rows += len(chunk)
        line += len(chunk)
        chunk = list(itertools.islice(reader, args.chunk_rows))
    return rows


if __name__ == "__main__":
    sys.exit(main())
