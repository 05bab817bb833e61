"""The job spec: one validator used by the REST API, the client and the CLI.

Validation is strict (unknown fields are refused) because a typo such as ``max_runtme``
silently ignored would let a job run forever; every message names the field.
"""

from __future__ import annotations

import base64
import json
import keyword
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadRequest

# Job states, exactly as in ARCHITECTURE.md.
QUEUED = "queued"
STARTING = "starting"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
LOST = "lost"
STATES = (QUEUED, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, LOST)
ACTIVE_STATES = (QUEUED, STARTING, RUNNING)
TERMINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, LOST)

MAX_SOURCE_BYTES = 32 * 1024 * 1024
MAX_FILES_BYTES = 64 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.I)
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}

SPEC_FIELDS = {  # every field a submission may carry
    "name",
    "source",
    "parameters",
    "profile",
    "resources",
    "workers",
    "max_runtime",
    "retries",
    "env",
    "outputs",
    "idempotency_key",
    "files",
}


def parse_duration(value: Any, field_name: str = "max_runtime") -> int | None:
    """Seconds from ``3600``, ``"90s"``, ``"30m"``, ``"1h"``; ``None`` means no limit."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"{field_name}: expected seconds or a duration like '1h', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise BadRequest(
                f"{field_name}: {value!r} is not a duration (use seconds, or e.g. '90s', '30m', '2h')"
            )
        seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower() if m.group(2) else None]
    else:
        raise BadRequest(
            f"{field_name}: expected seconds or a duration, got {type(value).__name__}"
        )
    if seconds <= 0:
        raise BadRequest(f"{field_name}: must be positive, got {value!r}")
    return int(round(seconds))


def parse_param(text: str) -> tuple[str, Any]:
    """``"C=0.5"`` -> ``("C", 0.5)``. Values are JSON when they parse as JSON, else strings."""
    if "=" not in text:
        raise BadRequest(f"parameter {text!r}: expected NAME=VALUE")
    name, raw = text.split("=", 1)
    name = name.strip()
    _check_param_name(name)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def _check_param_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise BadRequest(f"parameters: {name!r} is not a valid Python identifier")


@dataclass
class JobSpec:
    """A validated job spec; ``to_dict`` is what the database stores."""

    name: str
    source: dict
    parameters: dict = field(default_factory=dict)
    profile: str | None = None
    resources: dict = field(default_factory=dict)
    workers: int = 1
    max_runtime: int | None = None
    retries: int = 0
    env: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    idempotency_key: str | None = None

    @property
    def kind(self) -> str:
        return next(k for k in ("notebook", "script", "command") if k in self.source)

    @property
    def gpus(self) -> int:
        return int(self.resources.get("gpu", 0) or 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def comparable(self) -> dict:
        """What must match for an idempotent resubmission to be 'the same job'."""
        d = self.to_dict()
        d.pop("idempotency_key", None)
        return d


def _expect(value: Any, types: type | tuple, field_name: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BadRequest(f"{field_name}: expected {what}, got a boolean")
    if not isinstance(value, types):
        raise BadRequest(f"{field_name}: expected {what}, got {type(value).__name__}")
    return value


def _check_relpath(path: Any, field_name: str) -> str:
    _expect(path, str, field_name, "a relative path")
    if (
        not path
        or "\x00" in path
        or path.startswith(("/", "\\"))
        or any(part in ("..", "") for part in path.replace("\\", "/").split("/"))
    ):
        raise BadRequest(f"{field_name}: {path!r} must be a relative path inside the job directory")
    return path


def _nbformat():
    """nbformat, imported without jsonschema's optional ``rfc3987_syntax`` format checker:
    beside jupyter_server it builds a grammar at import and costs ~1.5 s, for a URI
    format check notebooks never need (see FIELD-NOTES)."""
    import sys

    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import nbformat

    return nbformat


def validate_notebook(content: Any, field_name: str = "source.content") -> dict:
    """Check that ``content`` is a valid nbformat v4 notebook (dict or JSON text)."""
    nbformat = _nbformat()

    if isinstance(content, (str, bytes)):
        try:
            content = json.loads(content)
        except ValueError as e:
            raise BadRequest(f"{field_name}: notebook is not JSON ({e})") from None
    _expect(content, dict, field_name, "a notebook (JSON object)")
    try:
        nb = nbformat.from_dict(content)
        if nb.get("nbformat") != 4:
            raise BadRequest(f"{field_name}: only nbformat 4 notebooks are supported")
        nbformat.validate(nb)
    except BadRequest:
        raise
    except Exception as e:  # nbformat raises ValidationError and friends
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadRequest(f"{field_name}: not a valid notebook: {msg}") from None
    return content


def parse_job_spec(body: Any, *, check_content: bool = True) -> tuple[JobSpec, dict[str, bytes]]:
    """Validate a submission body; returns the spec and the source/sibling files to store.

    The returned mapping holds the bytes of the job's input: ``input.ipynb``/``input.py``
    plus declared sibling files (``files`` in the body, base64-encoded), keyed by
    relative path.
    """
    _expect(body, dict, "body", "a JSON object")
    unknown = sorted(set(body) - SPEC_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    if "source" not in body:
        raise BadRequest(
            "source: missing (give {notebook, content}, {script, content} or {command})"
        )
    source = _expect(body["source"], dict, "source", "an object")
    kinds = [k for k in ("notebook", "script", "command") if k in source]
    if len(kinds) != 1:
        raise BadRequest("source: give exactly one of 'notebook', 'script' or 'command'")
    kind = kinds[0]
    extra = set(source) - {kind, "content"}
    if extra:
        raise BadRequest(f"source: unknown field(s): {', '.join(sorted(extra))}")
    files: dict[str, bytes] = {}
    clean_source: dict = {}
    if kind == "command":
        cmd = _expect(source["command"], list, "source.command", "a list of strings")
        if not cmd or not all(isinstance(a, str) for a in cmd):
            raise BadRequest("source.command: expected a non-empty list of strings")
        clean_source["command"] = list(cmd)
    else:
        path = _expect(source[kind], str, f"source.{kind}", "a file name")
        if not path.strip():
            raise BadRequest(f"source.{kind}: must not be empty")
        clean_source[kind] = path
        if "content" not in source:
            raise BadRequest(f"source.content: missing (the {kind}'s content must be sent)")
        content = source["content"]
        if kind == "notebook":
            nb = validate_notebook(content) if check_content else content
            data = json.dumps(nb).encode() if not isinstance(nb, (bytes, str)) else nb
            files["input.ipynb"] = data if isinstance(data, bytes) else data.encode()
        else:
            text = _expect(content, str, "source.content", "the script text")
            try:
                compile(text, path, "exec")
            except SyntaxError as e:
                raise BadRequest(f"source.content: script does not compile: {e}") from None
            files["input.py"] = text.encode()
        if len(files[next(iter(files))]) > MAX_SOURCE_BYTES:
            raise BadRequest(f"source.content: larger than {MAX_SOURCE_BYTES // 2**20} MiB")

    name = body.get("name")
    if name is None:
        base = clean_source.get("notebook") or clean_source.get("script") or "command"
        name = re.sub(r"[^A-Za-z0-9._-]", "-", base.rsplit("/", 1)[-1].rsplit(".", 1)[0])[:100]
        name = name.lstrip("._-") or "job"
    _expect(name, str, "name", "a string")
    if not _NAME_RE.match(name):
        raise BadRequest(f"name: {name!r} must be 1-100 letters, digits, '.', '_' or '-'")

    params = body.get("parameters") or {}
    _expect(params, dict, "parameters", "an object")
    for k in params:
        _check_param_name(k)
    try:
        json.dumps(params)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"parameters: not JSON-serialisable ({e})") from None

    profile = body.get("profile")
    if profile is not None:
        _expect(profile, str, "profile", "a profile name")
    resources = body.get("resources") or {}
    _expect(resources, dict, "resources", "an object {cpu, memory, gpu}")
    bad = set(resources) - {"cpu", "memory", "gpu"}
    if bad:
        raise BadRequest(f"resources: unknown field(s): {', '.join(sorted(bad))}")
    if "cpu" in resources:
        _expect(resources["cpu"], (int, float), "resources.cpu", "a number of cores")
        if resources["cpu"] <= 0:
            raise BadRequest("resources.cpu: must be positive")
    if "memory" in resources:
        mem = resources["memory"]
        if not (isinstance(mem, str) and _MEMORY_RE.match(mem)):
            raise BadRequest(f"resources.memory: {mem!r} is not a size like '4Gi' or '512Mi'")
    if "gpu" in resources:
        _expect(resources["gpu"], int, "resources.gpu", "a whole number of GPUs")
        if resources["gpu"] < 0:
            raise BadRequest("resources.gpu: must not be negative")

    workers = body.get("workers", 1)
    _expect(workers, int, "workers", "an integer")
    if not 1 <= workers <= 64:
        raise BadRequest("workers: must be between 1 and 64")
    retries = body.get("retries", 0)
    _expect(retries, int, "retries", "an integer")
    if not 0 <= retries <= 10:
        raise BadRequest("retries: must be between 0 and 10")
    max_runtime = parse_duration(body.get("max_runtime"))

    env = body.get("env") or {}
    _expect(env, dict, "env", "an object of strings")
    for k, v in env.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise BadRequest(f"env: {k!r} is not a valid variable name")
        if not isinstance(v, str):
            raise BadRequest(f"env.{k}: expected a string, got {type(v).__name__}")
        if k.startswith("PAI_"):
            raise BadRequest(f"env.{k}: PAI_* variables are set by the platform")

    outputs = body.get("outputs") or []
    _expect(outputs, list, "outputs", "a list of relative paths")
    outputs = [_check_relpath(o, "outputs[]") for o in outputs]

    key = body.get("idempotency_key")
    if key is not None:
        _expect(key, str, "idempotency_key", "a string")
        if not 1 <= len(key) <= 200:
            raise BadRequest("idempotency_key: must be 1-200 characters")

    sib = body.get("files") or {}
    _expect(sib, dict, "files", "an object {relative path: base64 content}")
    total = 0
    for rel, b64 in sib.items():
        _check_relpath(rel, "files")
        if rel in ("input.ipynb", "input.py"):
            raise BadRequest(f"files: {rel!r} is reserved")
        _expect(b64, str, f"files[{rel!r}]", "base64 text")
        try:
            data = base64.b64decode(b64, validate=True)
        except ValueError:
            raise BadRequest(f"files[{rel!r}]: not valid base64") from None
        total += len(data)
        files[f"files/{rel}"] = data
    if total > MAX_FILES_BYTES:
        raise BadRequest(f"files: larger than {MAX_FILES_BYTES // 2**20} MiB in total")

    spec = JobSpec(
        name=name,
        source=clean_source,
        parameters=dict(params),
        profile=profile,
        resources=dict(resources),
        workers=workers,
        max_runtime=max_runtime,
        retries=retries,
        env=dict(env),
        outputs=outputs,
        idempotency_key=key,
    )
    return spec, files
