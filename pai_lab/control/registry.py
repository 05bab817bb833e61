"""The model registry: models per workspace, immutable versions, aliases behind a gate.

Why it looks like this:

- **A version is a copy.** Registering copies the artifact (a job output, or any file or
  folder of the workspace) into ``models/<name>/<version>/`` in the store and writes
  ``model.json`` beside it (signature, metrics, lineage, environment). Deleting or
  re-running the job later cannot change what version 3 *is*; there is no update route
  for versions.
- **Metrics come from the source job** (the last value logged for each name), never from
  the request body, so a gate such as ``accuracy >= 0.9`` checks what training actually
  measured. A version registered from a bare artifact has no metrics, and a gate that
  reads one fails.
- **Signatures are inferred out of process.** Loading a pickle runs code from the file,
  so only files that are already in this workspace's store are loaded (never a request
  body), in a short-lived subprocess (``python -m pai_lab.control.scoring
  --infer-signature FILE``, a module that imports little) off the event loop, with a timeout. sklearn's
  ``n_features_in_`` gives the input shape ``[-1, n]``; ``classes_`` the outputs.
- **Aliases** (``staging``, ``production``, any name) map to versions. Every move is
  checked against the model's gate (:mod:`.gates`) and audited by the REST handler,
  refusals included. Who may move which alias is the handler's business
  (:data:`PRODUCTION` needs an operator).

References used by deployments and batch scoring: ``iris@production`` (an alias),
``iris:3`` (a version), ``iris`` (the latest version).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ..errors import BackendUnavailable, BadRequest, GateFailed, NotFound
from ..storage import safe_path
from .db import Model, ModelVersion, iso
from .gates import GateResult, evaluate, parse_gate

PRODUCTION = "production"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "sklearn": (".joblib", ".pkl", ".pickle"),
    "torch": (".pt", ".pth", ".torchscript"),
}
DATATYPES = "BOOL INT8 INT16 INT32 INT64 UINT8 UINT16 UINT32 UINT64 FP16 FP32 FP64 BYTES".split()
REGISTER_FIELDS = {
    "name",
    "from_job",
    "path",
    "artifact",
    "framework",
    "signature",
    "tags",
    "description",
}
INFER_TIMEOUT = 120.0


class GateRefused(GateFailed):
    """422 whose JSON body also carries the gate verdict (``error.gate``)."""

    def __init__(self, message: str, result: GateResult):
        super().__init__(message)
        self.result = result

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["error"]["gate"] = self.result.to_dict()
        return d


def check_model_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(
            f"{what}: model names are 1-63 letters, digits, '_', '.' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name


def check_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise BadRequest(
            f"alias: 1-63 letters, digits, '_' or '-' starting with a letter, got {alias!r}"
        )
    return alias


def as_version(v: Any, what: str = "version") -> int:
    """A version number from 3 or "3"."""
    if isinstance(v, bool):
        raise BadRequest(f"{what}: expected a version number, got {v!r}")
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if not isinstance(v, int) or v < 1:
        raise BadRequest(f"{what}: expected a version number (1, 2, ...), got {v!r}")
    return v


def parse_ref(ref: Any, what: str = "model") -> tuple[str, str | None, int | None]:
    """``iris@production`` -> (iris, production, None); ``iris:3`` -> (iris, None, 3);
    ``iris`` -> (iris, None, None) meaning the latest version."""
    if not isinstance(ref, str) or not ref:
        raise BadRequest(f"{what}: expected 'NAME@ALIAS', 'NAME:VERSION' or 'NAME', got {ref!r}")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return check_model_name(name, what), check_alias(alias), None
    if ":" in ref:
        name, ver = ref.split(":", 1)
        return check_model_name(name, what), None, as_version(ver, what)
    return check_model_name(ref, what), None, None


def _check_signature(sig: Any) -> dict:
    if not isinstance(sig, dict):
        raise BadRequest("signature: expected {'inputs': [...], 'outputs': [...]}")
    unknown = set(sig) - {"inputs", "outputs"}
    if unknown:
        raise BadRequest(f"signature: unknown field(s): {', '.join(sorted(unknown))}")
    out: dict[str, list] = {}
    for key in ("inputs", "outputs"):
        specs = sig.get(key, [])
        if not isinstance(specs, list):
            raise BadRequest(f"signature.{key}: expected a list")
        norm = []
        for i, s in enumerate(specs):
            where = f"signature.{key}[{i}]"
            if not isinstance(s, dict):
                raise BadRequest(f"{where}: expected {{'name', 'datatype', 'shape'}}")
            name, dtype, shape = s.get("name"), s.get("datatype"), s.get("shape")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{where}.name: expected a non-empty string")
            if not isinstance(dtype, str) or dtype.upper() not in DATATYPES:
                raise BadRequest(f"{where}.datatype: expected one of {', '.join(DATATYPES)}")
            if (
                not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                or any(d < -1 for d in shape)
            ):
                raise BadRequest(f"{where}.shape: expected a list of integers (-1 = any)")
            norm.append({"name": name, "datatype": dtype.upper(), "shape": shape})
        out[key] = norm
    return out


def _check_tags(tags: Any) -> dict:
    if tags is None:
        return {}
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        return {t: "" for t in tags}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in tags.items()
    ):
        raise BadRequest("tags: expected an object of string keys and scalar values")
    if len(tags) > 100:
        raise BadRequest("tags: at most 100")
    return {k: str(v) for k, v in tags.items()}


def last_metrics(metrics: list[dict]) -> dict[str, float]:
    """The last logged value of every metric of a job (what gates compare)."""
    out: dict[str, float] = {}
    for m in metrics or []:
        name, value = m.get("name"), m.get("value")
        if (
            isinstance(name, str)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            out[name] = value
    return out


def version_dict(v: ModelVersion, aliases: dict | None = None) -> dict:
    return {
        "workspace": v.workspace,
        "model": v.model,
        "version": v.version,
        "artifact_uri": v.artifact_uri,
        "path": f"models/{v.model}/{v.version}/",
        "file": (v.lineage or {}).get("file"),
        "framework": v.framework,
        "signature": v.signature or {},
        "metrics": v.metrics or {},
        "lineage": v.lineage or {},
        "source_job": (v.lineage or {}).get("source_job"),
        "tags": v.tags or {},
        "description": v.description,
        "aliases": sorted(a for a, n in (aliases or {}).items() if n == v.version),
        "created_at": iso(v.created_at),
        "created_by": v.created_by,
    }


# ---- signature inference (runs in a subprocess) -------------------------------------------
def infer_signature_sync(local_file: str, timeout: float = INFER_TIMEOUT) -> dict:
    """Load ``local_file`` (a store copy) in a subprocess; returns {signature, class}."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pai_lab.control.scoring", "--infer-signature", local_file],
            capture_output=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BadRequest(
            f"artifact: loading the model to infer its signature took over {timeout:g}s; "
            "pass 'signature' explicitly"
        ) from None
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not out:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else f"exit code {proc.returncode}"
        raise BadRequest(f"artifact: cannot load it as a scikit-learn model ({last})")
    res = json.loads(out[-1])
    if "error" in res:
        raise BadRequest(f"artifact: {res['error']}")
    return res


# ---- the service ---------------------------------------------------------------------------
class Registry:
    """Models and versions of all workspaces (one per control plane)."""

    def __init__(self, control):
        self.control = control
        self.db = control.db
        self.store = control.store
        self.log = control.log
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ---- reads ---------------------------------------------------------------------------
    @staticmethod
    def _model_dict(m: Model, versions: list[ModelVersion] | None, count: int, latest) -> dict:
        d = {
            "workspace": m.workspace,
            "name": m.name,
            "description": m.description,
            "gate": m.gate or "",
            "aliases": dict(m.aliases or {}),
            "latest_version": latest,
            "version_count": count,
            "created_at": iso(m.created_at),
            "created_by": m.created_by,
        }
        if versions is not None:
            d["versions"] = [version_dict(v, m.aliases) for v in versions]
        return d

    @staticmethod
    def _get_model(s, ws: str, name: str) -> Model:
        m = s.get(Model, (ws, name))
        if m is None:
            raise NotFound(f"model {name!r} not found in workspace {ws!r}")
        return m

    async def list_models(self, ws: str) -> list[dict]:
        def f(s):
            stats = {
                name: (count, latest)
                for name, count, latest in s.execute(
                    select(
                        ModelVersion.model,
                        func.count(ModelVersion.version),
                        func.max(ModelVersion.version),
                    )
                    .where(ModelVersion.workspace == ws)
                    .group_by(ModelVersion.model)
                )
            }
            rows = s.scalars(select(Model).where(Model.workspace == ws).order_by(Model.name))
            return [self._model_dict(m, None, *stats.get(m.name, (0, None))) for m in rows]

        return await self.db.run(f)

    async def get_model(self, ws: str, name: str) -> dict:
        def f(s):
            m = self._get_model(s, ws, name)
            vs = s.scalars(
                select(ModelVersion)
                .where(ModelVersion.workspace == ws, ModelVersion.model == name)
                .order_by(ModelVersion.version.desc())
            ).all()
            return self._model_dict(m, vs, len(vs), vs[0].version if vs else None)

        return await self.db.run(f)

    async def list_versions(self, ws: str, name: str) -> list[dict]:
        return (await self.get_model(ws, name))["versions"]

    async def get_version(self, ws: str, name: str, version: Any) -> dict:
        version = as_version(version)

        def f(s):
            m = self._get_model(s, ws, name)
            v = s.get(ModelVersion, (ws, name, version))
            if v is None:
                raise NotFound(f"model {name!r} has no version {version}")
            return version_dict(v, m.aliases)

        return await self.db.run(f)

    async def resolve(self, ws: str, ref: str, what: str = "model") -> dict:
        """The version a reference points at, plus ``ref`` and ``alias`` (or None)."""
        name, alias, version = parse_ref(ref, what)

        def f(s):
            m = s.get(Model, (ws, name))
            if m is None:
                raise BadRequest(f"{what}: model {name!r} not found in workspace {ws!r}")
            nonlocal version
            if alias is not None:
                version = (m.aliases or {}).get(alias)
                if version is None:
                    raise BadRequest(f"{what}: model {name!r} has no alias {alias!r}")
            elif version is None:
                version = s.scalar(
                    select(func.max(ModelVersion.version)).where(
                        ModelVersion.workspace == ws, ModelVersion.model == name
                    )
                )
                if version is None:
                    raise BadRequest(f"{what}: model {name!r} has no versions yet")
            v = s.get(ModelVersion, (ws, name, version))
            if v is None:
                raise BadRequest(f"{what}: model {name!r} has no version {version}")
            return version_dict(v, m.aliases)

        d = await self.db.run(f)
        d["ref"] = ref
        d["alias"] = alias
        return d

    # ---- model settings ---------------------------------------------------------------------
    async def update_model(self, ws: str, name: str, body: Any) -> tuple[dict, dict]:
        """PATCH description/gate; returns (model, {field: [old, new]})."""
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        unknown = set(body) - {"description", "gate"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "description" in body and not isinstance(body["description"], str):
            raise BadRequest("description: expected a string")
        if "gate" in body:
            if body["gate"] is None:
                body["gate"] = ""
            parse_gate(body["gate"])  # raises BadRequest naming the problem

        def f(s):
            m = self._get_model(s, ws, name)
            changes = {}
            for k in ("description", "gate"):
                if k in body:
                    new = body[k].strip() if k == "gate" else body[k]
                    if getattr(m, k) != new:
                        changes[k] = [getattr(m, k), new]
                        setattr(m, k, new)
            return changes

        changes = await self.db.run(f)
        return await self.get_model(ws, name), changes

    # ---- aliases -----------------------------------------------------------------------------
    async def set_alias(
        self, ws: str, name: str, alias: str, version: Any
    ) -> tuple[dict, GateResult, int | None]:
        """Point ``alias`` at ``version`` if the gate passes; returns (model, verdict, old).

        Raises :class:`GateRefused` (422) with the verdict when the gate fails; the
        alias is then unchanged.
        """
        check_alias(alias)
        version = as_version(version)

        def f(s):
            m = self._get_model(s, ws, name)
            v = s.get(ModelVersion, (ws, name, version))
            if v is None:
                raise NotFound(f"model {name!r} has no version {version}")
            result = evaluate(m.gate, v.metrics or {})
            old = (m.aliases or {}).get(alias)
            if result.passed:
                aliases = dict(m.aliases or {})
                aliases[alias] = version
                m.aliases = aliases  # reassign: JSON columns do not track mutation
            return result, old

        result, old = await self.db.run(f)
        if not result.passed:
            raise GateRefused(
                f"cannot move {name}@{alias} to version {version}: {result.summary}", result
            )
        return await self.get_model(ws, name), result, old

    async def delete_alias(self, ws: str, name: str, alias: str) -> tuple[dict, int]:
        check_alias(alias)

        def f(s):
            m = self._get_model(s, ws, name)
            aliases = dict(m.aliases or {})
            if alias not in aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            old = aliases.pop(alias)
            m.aliases = aliases
            return old

        old = await self.db.run(f)
        return await self.get_model(ws, name), old

    async def alias_of(self, ws: str, name: str, alias: str) -> int | None:
        def f(s):
            m = self._get_model(s, ws, name)
            return (m.aliases or {}).get(alias)

        return await self.db.run(f)

    # ---- register ----------------------------------------------------------------------------
    async def register(self, ident, ws: str, name: str, body: Any) -> dict:
        """Copy an artifact into a new immutable version; returns the version dict."""
        if not isinstance(body, dict):
            raise BadRequest("request body: expected a JSON object")
        unknown = set(body) - REGISTER_FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        check_model_name(name)
        description = body.get("description", "")
        if not isinstance(description, str):
            raise BadRequest("description: expected a string")
        tags = _check_tags(body.get("tags"))
        signature = _check_signature(body["signature"]) if body.get("signature") else None
        framework = body.get("framework")
        if framework is not None and framework not in FRAMEWORKS:
            raise BadRequest(
                f"framework: expected one of {', '.join(FRAMEWORKS)}, got {framework!r}"
            )

        wstore = self.store.workspace(ws)
        metrics: dict = {}
        lineage: dict = {}
        environment: dict = {}
        if ("from_job" in body) == ("artifact" in body):
            raise BadRequest(
                "give either 'from_job' (with 'path' inside the job folder) or 'artifact' "
                "(a workspace path)"
            )
        if "from_job" in body:
            job_id = body["from_job"]
            if not isinstance(job_id, str) or not job_id:
                raise BadRequest("from_job: expected a job id")
            try:
                job = await self.control.scheduler.get(ws, job_id)
            except NotFound:
                raise BadRequest(
                    f"from_job: job {job_id!r} not found in workspace {ws!r}"
                ) from None
            if job["state"] != "succeeded":
                raise BadRequest(
                    f"from_job: job {job_id} is {job['state']}; only a succeeded job's "
                    "outputs can be registered"
                )
            rel = body.get("path", "outputs/model.joblib")
            if not isinstance(rel, str) or not rel.strip("/"):
                raise BadRequest("path: expected a path inside the job folder")
            src = safe_path(f"jobs/{job_id}/{safe_path(rel, allow_root=False)}", allow_root=False)
            metrics = last_metrics(job.get("metrics") or [])
            environment = job.get("environment") or {}
            lineage = {
                "source_job": job_id,
                "job_name": job.get("name"),
                "job_owner": job.get("owner"),
                "job_finished_at": job.get("finished_at"),
                "parameters": (job.get("spec") or {}).get("parameters") or {},
                "notebook_sha256": environment.get("notebook_sha256"),
                "script_sha256": environment.get("script_sha256"),
                "source": src,
            }
        else:
            if "path" in body:
                raise BadRequest("path: only used with 'from_job'; give 'artifact' alone")
            art = body["artifact"]
            if not isinstance(art, str) or not art.strip("/"):
                raise BadRequest("artifact: expected a workspace path such as 'models-in/x.joblib'")
            src = safe_path(art[6:] if art.startswith("pai://") else art, allow_root=False)
            lineage = {"source_job": None, "source": src}
        field = "path" if "from_job" in body else "artifact"
        try:
            info = await wstore.info(src)
        except NotFound:
            raise BadRequest(f"{field}: {src!r} does not exist in workspace {ws!r}") from None
        is_dir = info.get("type") == "directory"
        if is_dir:
            entries = [e for e in await wstore.list(src) if e["type"] == "file"]
            suffixes = FRAMEWORKS.get(framework or "", sum(FRAMEWORKS.values(), ()))
            found = [e for e in entries if os.path.splitext(e["name"])[1] in suffixes]
            if len(found) != 1:
                raise BadRequest(
                    f"{field}: folder {src!r} must hold exactly one model file "
                    f"({', '.join(suffixes)}); found {[e['name'] for e in found]}"
                )
            model_file = found[0]["name"]
        else:
            model_file = src.rsplit("/", 1)[-1]
        suffix = os.path.splitext(model_file)[1]
        guessed = next((fw for fw, sfx in FRAMEWORKS.items() if suffix in sfx), None)
        if framework is None:
            if guessed is None:
                raise BadRequest(
                    f"framework: cannot tell it from {model_file!r}; give 'sklearn' or 'torch'"
                )
            framework = guessed
        elif guessed != framework:
            raise BadRequest(
                f"framework: a {framework} model file ends with "
                f"{' / '.join(FRAMEWORKS[framework])}, got {model_file!r}"
            )

        key = (ws, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:

            def next_version(s):
                cur = s.scalar(
                    select(func.max(ModelVersion.version)).where(
                        ModelVersion.workspace == ws, ModelVersion.model == name
                    )
                )
                return (cur or 0) + 1

            version = await self.db.run(next_version)
            dest = f"models/{name}/{version}"
            try:
                if await wstore.exists(dest):  # left over from a crash mid-registration
                    await wstore.delete(dest, recursive=True)
                if is_dir:
                    await wstore.copy(src, dest)
                else:
                    await wstore.copy(src, f"{dest}/{model_file}")
                inferred: dict = {}
                if signature is None and framework == "sklearn":
                    inferred = await self._infer(wstore, f"{dest}/{model_file}")
                    signature = inferred.get("signature") or {}
                created = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                lineage["file"] = model_file
                if inferred.get("class"):
                    lineage["class"] = inferred["class"]
                meta = {
                    "name": name,
                    "version": version,
                    "workspace": ws,
                    "framework": framework,
                    "file": model_file,
                    "signature": signature or {},
                    "metrics": metrics,
                    "lineage": lineage,
                    "env": environment,
                    "tags": tags,
                    "description": description,
                    "created_at": iso(created),
                    "created_by": ident.name,
                }
                await wstore.write_bytes(
                    f"{dest}/model.json", json.dumps(meta, indent=1, sort_keys=True).encode()
                )
                artifact_uri = wstore.url(dest)

                def insert(s):
                    m = s.get(Model, (ws, name))
                    if m is None:
                        m = Model(
                            workspace=ws,
                            name=name,
                            description="",
                            gate="",
                            aliases={},
                            created_by=ident.name,
                        )
                        s.add(m)
                    v = ModelVersion(
                        workspace=ws,
                        model=name,
                        version=version,
                        artifact_uri=artifact_uri,
                        framework=framework,
                        signature=signature or {},
                        metrics=metrics,
                        lineage={**lineage, "environment": environment},
                        tags=tags,
                        description=description,
                        created_at=created,
                        created_by=ident.name,
                    )
                    s.add(v)
                    s.flush()
                    return version_dict(v, m.aliases)

                return await self.db.run(insert)
            except BaseException:
                try:
                    if await wstore.exists(dest):
                        await wstore.delete(dest, recursive=True)
                except Exception:
                    self.log.exception("could not clean up %s/%s after a failed register", ws, dest)
                raise

    async def _infer(self, wstore, rel: str) -> dict:
        """Copy the stored file to a private temp dir and load it in a subprocess."""
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory(prefix="pai-sig-") as tmp:
            local = os.path.join(tmp, rel.rsplit("/", 1)[-1])
            await wstore.get_file(rel, local)
            try:
                return await loop.run_in_executor(None, infer_signature_sync, local)
            except OSError as e:
                raise BackendUnavailable(f"could not start signature inference: {e}") from None

    # ---- files for serving ------------------------------------------------------------------
    def local_dir(self, ws: str, name: str, version: int) -> str:
        """A local directory holding the version's files (what a model server loads).

        Blocking (downloads on object stores): call it in an executor.

        For a ``file://`` store this is the store folder itself; other stores are copied
        once into ``<data_dir>/model-cache/`` (versions are immutable, so a cached copy
        never goes stale).
        """
        wstore = self.store.workspace(ws)
        rel = f"models/{name}/{version}"
        if self.store.is_local:
            return wstore.url(rel)[len("file://") :]
        cache = Path(self.control.data_dir) / "model-cache" / ws / name / str(version)
        if not (cache / "model.json").exists():
            import shutil

            tmp = cache.with_name(f".{version}.part")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            wstore.get_dir_sync(rel, tmp)
            os.replace(tmp, cache)
        return str(cache)
