"""Client methods for the model registry, deployments and batch scoring.

``PaiClient`` inherits :class:`RegistryClientMixin`, so every method below is available
on ``pai_lab.client.PaiClient`` (CLI, ``%pai`` magics, server extension). ``workspace``
defaults to the client's workspace everywhere. Errors are the typed
``pai_lab.errors`` classes; a refused promotion raises ``GateFailed`` whose ``gate``
attribute holds the verdict dict (``{"gate", "passed", "checks", "summary"}``).

Models::

    c.register_model("iris", from_job=job_id, path="outputs/model.joblib",
                     framework="sklearn")               # -> version dict (version, metrics, ...)
    c.register_model("iris", artifact="uploads/model.joblib")   # any workspace file
    c.list_models(); c.get_model("iris")                # model: aliases, gate, versions
    c.get_version("iris", 3); c.list_versions("iris")
    c.set_gate("iris", "accuracy >= 0.9")               # operators
    c.set_alias("iris", "production", 3)                # -> model + "gate_result"
    c.promote("iris", 3)                                # same, alias="production"
    c.delete_alias("iris", "staging")
    c.resolve_model("iris@production")                  # -> version dict

Deployments (URL, token and traffic for ``%pai deploy / predict``)::

    d = c.create_deployment("iris-svc", "iris@production", replicas=2)
    d["url"], d["token"]                                # token only in this answer
    c.get_deployment("iris-svc")                        # state, health, variants, traffic
    c.set_canary("iris-svc", "iris:4", 10)              # 10% to version 4; 0 removes it
    c.update_deployment("iris-svc", replicas=3)         # or variants=[...], model="iris:5"
    c.delete_deployment("iris-svc")
    c.predict(d["url"], [[5.1, 3.5, 1.4, 0.2]], token=d["token"], model="iris")

Batch scoring (a job running ``python -m pai_lab.control.scoring``)::

    job = c.score("iris@production", "datasets/x.csv", "scores/x.csv")
    c.wait_job(job["id"])
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import BackendUnavailable, BadRequest, GateFailed


def _q(s: str | int) -> str:
    return quote(str(s), safe="")


def _pai(path: str) -> str:
    return path[len("pai://") :] if path.startswith("pai://") else path


class RegistryClientMixin:
    """Registry, deployment and scoring calls; mixed into ``PaiClient``."""

    if TYPE_CHECKING:  # provided by PaiClient; declared here for type checkers only

        def _json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any: ...
        def _ws(self, workspace: str | None) -> str: ...

    def _models(self, workspace: str | None, *parts: str | int) -> str:
        tail = "".join("/" + _q(p) for p in parts)
        return f"/workspaces/{self._ws(workspace)}/models{tail}"

    def _deps(self, workspace: str | None, name: str | None = None) -> str:
        tail = f"/{_q(name)}" if name else ""
        return f"/workspaces/{self._ws(workspace)}/deployments{tail}"

    # ---- models ----------------------------------------------------------------------
    def list_models(self, workspace: str | None = None) -> list[dict]:
        return self._json("GET", self._models(workspace))["models"]

    def get_model(self, name: str, workspace: str | None = None) -> dict:
        return self._json("GET", self._models(workspace, name))

    def update_model(self, name: str, workspace: str | None = None, **fields: Any) -> dict:
        """PATCH ``description`` and/or ``gate`` ('' clears the gate)."""
        return self._json("PATCH", self._models(workspace, name), fields)

    def set_gate(self, name: str, gate: str, workspace: str | None = None) -> dict:
        return self.update_model(name, workspace, gate=gate)

    def list_versions(self, name: str, workspace: str | None = None) -> list[dict]:
        return self._json("GET", self._models(workspace, name, "versions"))["versions"]

    def get_version(self, name: str, version: int | str, workspace: str | None = None) -> dict:
        return self._json("GET", self._models(workspace, name, "versions", version))

    def register_model(
        self,
        name: str,
        *,
        from_job: str | None = None,
        path: str | None = None,
        artifact: str | None = None,
        framework: str | None = None,
        signature: dict | None = None,
        tags: dict | None = None,
        description: str | None = None,
        workspace: str | None = None,
    ) -> dict:
        """A new immutable version from a job output (``from_job`` + ``path``, relative to
        ``jobs/<id>/``) or a workspace file/folder (``artifact``)."""
        body: dict[str, Any] = {"name": name}
        for k, v in (
            ("from_job", from_job),
            ("path", path),
            ("artifact", _pai(artifact) if artifact else None),
            ("framework", framework),
            ("signature", signature),
            ("tags", tags),
            ("description", description),
        ):
            if v is not None:
                body[k] = v
        return self._json("POST", self._models(workspace), body)

    def set_alias(
        self, name: str, alias: str, version: int | str, workspace: str | None = None
    ) -> dict:
        """Move ``alias`` to ``version`` through the model's gate.

        Returns the model with ``gate_result``; raises ``GateFailed`` (with ``.gate``, the
        verdict) when the gate refuses.
        """
        import requests

        url = self.api + self._models(workspace, name, "aliases", alias)  # type: ignore[attr-defined]
        try:
            r = self.session.request(  # type: ignore[attr-defined]
                "PUT",
                url,
                data=json.dumps({"version": version}),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,  # type: ignore[attr-defined]
            )
        except requests.RequestException as e:
            raise BackendUnavailable(f"cannot reach the control plane: {e}") from None
        if r.status_code >= 400:
            err = self._error(r)  # type: ignore[attr-defined]
            if isinstance(err, GateFailed):
                try:
                    err.gate = r.json()["error"].get("gate")  # type: ignore[attr-defined]
                except (ValueError, KeyError, AttributeError):
                    err.gate = None  # type: ignore[attr-defined]
            raise err
        return r.json()

    def promote(
        self,
        name: str,
        version: int | str,
        alias: str = "production",
        workspace: str | None = None,
    ) -> dict:
        return self.set_alias(name, alias, version, workspace)

    def delete_alias(self, name: str, alias: str, workspace: str | None = None) -> dict:
        return self._json("DELETE", self._models(workspace, name, "aliases", alias))

    def resolve_model(self, ref: str, workspace: str | None = None) -> dict:
        """The version ``NAME@ALIAS`` / ``NAME:VERSION`` / ``NAME`` (latest) points at."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            model = self.get_model(name, workspace)
            if alias not in model["aliases"]:
                raise BadRequest(f"model {name!r} has no alias {alias!r}")
            return self.get_version(name, model["aliases"][alias], workspace)
        if ":" in ref:
            name, version = ref.split(":", 1)
            return self.get_version(name, version, workspace)
        model = self.get_model(ref, workspace)
        if model["latest_version"] is None:
            raise BadRequest(f"model {ref!r} has no versions yet")
        return self.get_version(ref, model["latest_version"], workspace)

    # ---- batch scoring ---------------------------------------------------------------
    def score(
        self,
        ref: str,
        input: str,
        output: str,
        *,
        proba: bool = False,
        columns: list[str] | None = None,
        workspace: str | None = None,
        **spec: Any,
    ) -> dict:
        """Submit a job that scores the CSV ``input`` with model ``ref`` into ``output``.

        Both are workspace paths (``pai://`` optional). The reference is resolved now, so
        the job scores exactly that version even if the alias moves meanwhile.
        """
        v = self.resolve_model(ref, workspace)
        cmd = [
            "python",
            "-m",
            "pai_lab.control.scoring",
            "--model",
            v["model"],
            "--version",
            str(v["version"]),
            "--input",
            "pai://" + _pai(input).lstrip("/"),
            "--output",
            "pai://" + _pai(output).lstrip("/"),
        ]
        if proba:
            cmd.append("--proba")
        if columns:
            cmd += ["--columns", ",".join(columns)]
        body = {"name": f"score-{v['model']}-v{v['version']}", "source": {"command": cmd}, **spec}
        return self._json("POST", f"/workspaces/{self._ws(workspace)}/jobs", body)

    # ---- deployments -------------------------------------------------------------------
    def list_deployments(self, workspace: str | None = None) -> list[dict]:
        return self._json("GET", self._deps(workspace))["deployments"]

    def get_deployment(self, name: str, workspace: str | None = None) -> dict:
        return self._json("GET", self._deps(workspace, name))

    def create_deployment(
        self,
        name: str,
        model: str | None = None,
        replicas: int | None = None,
        *,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        variants: list[dict] | None = None,
        workspace: str | None = None,
    ) -> dict:
        """Deploy ``model`` (``iris@production``, ``iris:3``) or explicit ``variants``.

        The answer holds the endpoint ``url`` and the bearer ``token`` (shown only here).
        """
        body: dict[str, Any] = {"name": name}
        for k, v in (
            ("model", model),
            ("replicas", replicas),
            ("min_replicas", min_replicas),
            ("max_replicas", max_replicas),
            ("variants", variants),
        ):
            if v is not None:
                body[k] = v
        return self._json("POST", self._deps(workspace), body, timeout=600)

    def update_deployment(self, name: str, workspace: str | None = None, **patch: Any) -> dict:
        """PATCH: ``canary={...}|None``, ``variants=[...]``, ``model=...``, replica counts."""
        return self._json("PATCH", self._deps(workspace, name), patch, timeout=600)

    def set_canary(
        self, name: str, model: str | None, traffic: float = 0, workspace: str | None = None
    ) -> dict:
        """Send ``traffic`` % to ``model`` (``iris:4``); ``model=None`` or 0 removes it."""
        canary = None if model is None or not traffic else {"model": model, "traffic": traffic}
        return self.update_deployment(name, workspace, canary=canary)

    def delete_deployment(self, name: str, workspace: str | None = None) -> None:
        self._json("DELETE", self._deps(workspace, name), timeout=120)

    def predict(
        self,
        url: str,
        data: Any,
        *,
        token: str | None = None,
        model: str | None = None,
        version: str | int | None = None,
        outputs: list[str] | None = None,
        timeout: float = 30.0,
    ) -> dict:
        """One V2 ``infer`` call against a deployment URL; ``data`` is a 2-D list/array.

        ``model`` defaults to the last path segment convention ``/v2/models/<model>``; the
        router also accepts the deployment's own name. Returns the V2 response dict.
        """
        import requests

        try:
            import numpy as np

            arr = np.asarray(data)
            rows = arr.tolist()
            shape = list(arr.shape)
            kind = arr.dtype.kind
        except ImportError:  # pragma: no cover
            rows = data
            shape = [len(data), len(data[0])]
            kind = "f"
        dtype = {"i": "INT64", "u": "UINT64", "b": "BOOL"}.get(kind, "FP64")
        flat = [x for r in rows for x in (r if isinstance(r, list) else [r])]
        body: dict[str, Any] = {
            "inputs": [{"name": "input-0", "shape": shape, "datatype": dtype, "data": flat}]
        }
        if outputs:
            body["outputs"] = [{"name": o} for o in outputs]
        m = _q(model or "model")
        path = f"/v2/models/{m}" + (f"/versions/{_q(version)}" if version is not None else "")
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            r = requests.post(
                url.rstrip("/") + path + "/infer",
                data=json.dumps(body),
                headers=headers,
                timeout=timeout,
            )
        except requests.RequestException as e:
            raise BackendUnavailable(f"cannot reach the endpoint {url}: {e}") from None
        if r.status_code >= 400:
            from .errors import error_for_status

            try:
                msg = r.json().get("error")
            except ValueError:
                msg = None
            raise error_for_status(r.status_code, f"{url}: {msg or r.reason}")
        return r.json()


__all__ = ["RegistryClientMixin"]
