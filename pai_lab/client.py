"""The one Python client of the control-plane REST API.

The CLI, the ``%pai`` magics, the ``pai://`` filesystem and the server extension all go
through ``PaiClient``; nobody else builds control-plane URLs. Errors come back as the
typed ``pai_lab.errors`` classes carrying the server's own message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import requests

from .errors import BackendUnavailable, BadRequest, PaiError, Unauthorized, error_for_status
from .jobs.spec import TERMINAL_STATES
from .registry_client import RegistryClientMixin

DEFAULT_URL = "http://127.0.0.1:8585/"


def _quote_path(path: str) -> str:
    """Quote a workspace path, refusing escapes before anything is sent: HTTP libraries
    normalise ``..`` in URLs, which would otherwise turn ``../../team-b/files/x`` into a
    request for another workspace."""
    from .storage.paths import safe_path

    return quote(safe_path(path.lstrip("/")), safe="/")


class PaiClient(RegistryClientMixin):
    """Synchronous client; one ``requests.Session`` per instance."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        workspace: str | None = None,
        timeout: float = 60.0,
    ):
        url = url or os.environ.get("PAI_LAB_URL") or DEFAULT_URL
        url = url.rstrip("/")
        if url.endswith("/api/v1"):
            url = url[: -len("/api/v1")]
        self.url = url + "/"
        self.api = url + "/api/v1"
        self.token = token if token is not None else os.environ.get("PAI_LAB_TOKEN", "")
        self.workspace = workspace or os.environ.get("PAI_LAB_WORKSPACE") or "default"
        self.timeout = timeout
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.session.headers["User-Agent"] = "pai-lab-client"

    # ---- plumbing ------------------------------------------------------------------
    def _ws(self, workspace: str | None) -> str:
        return quote(workspace or self.workspace, safe="")

    def request(
        self, method: str, path: str, *, stream: bool = False, timeout: float | None = None, **kw
    ) -> requests.Response:
        """Send one request; raise the typed error for any non-2xx answer."""
        url = self.api + path
        try:
            r = self.session.request(
                method, url, stream=stream, timeout=timeout or self.timeout, **kw
            )
        except requests.ConnectionError:
            raise BackendUnavailable(
                f"cannot reach the pai-lab control plane at {self.url} "
                "(is it running? set PAI_LAB_URL to its address)"
            ) from None
        except requests.Timeout:
            raise BackendUnavailable(
                f"the control plane at {self.url} did not answer in time"
            ) from None
        if r.status_code >= 400:
            raise self._error(r)
        return r

    @staticmethod
    def _error(r: requests.Response) -> PaiError:
        message, code = None, None
        try:
            err = r.json().get("error")
            if isinstance(err, dict):
                message, code = err.get("message"), err.get("code")
            elif isinstance(err, str):
                message = err
        except ValueError:
            pass
        if message is None:
            message = f"{r.status_code} {r.reason} from {r.url}"
        if r.status_code == 401 and not r.request.headers.get("Authorization"):
            message += " (no token: set PAI_LAB_TOKEN)"
        return error_for_status(r.status_code, message, code)

    def _json(self, method: str, path: str, body: Any = None, **kw) -> Any:
        if body is not None:
            kw["data"] = json.dumps(body)
            kw.setdefault("headers", {})["Content-Type"] = "application/json"
        r = self.request(method, path, **kw)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    # ---- identity, workspaces ------------------------------------------------------
    def me(self) -> dict:
        return self._json("GET", "/me")

    def profiles(self) -> list[dict]:
        return self._json("GET", "/profiles")["profiles"]

    def workspaces(self) -> list[dict]:
        return self._json("GET", "/workspaces")["workspaces"]

    def create_workspace(
        self, name: str, description: str = "", quotas: dict | None = None
    ) -> dict:
        body: dict[str, Any] = {"name": name, "description": description}
        if quotas:
            body["quotas"] = quotas
        return self._json("POST", "/workspaces", body)

    def get_workspace(self, workspace: str | None = None) -> dict:
        return self._json("GET", f"/workspaces/{self._ws(workspace)}")

    def update_workspace(self, workspace: str | None = None, **fields) -> dict:
        return self._json("PATCH", f"/workspaces/{self._ws(workspace)}", fields)

    def members(self, workspace: str | None = None) -> list[dict]:
        return self._json("GET", f"/workspaces/{self._ws(workspace)}/members")["members"]

    def set_member(self, user: str, role: str, workspace: str | None = None) -> dict:
        return self._json(
            "PUT",
            f"/workspaces/{self._ws(workspace)}/members/{quote(user, safe='')}",
            {"role": role},
        )

    def remove_member(self, user: str, workspace: str | None = None) -> None:
        self._json("DELETE", f"/workspaces/{self._ws(workspace)}/members/{quote(user, safe='')}")

    def create_user_token(self, user: str, note: str = "") -> str:
        return self._json("POST", f"/users/{quote(user, safe='')}/tokens", {"note": note})["token"]

    def audit(self, workspace: str | None = None, limit: int = 100, **filters) -> dict:
        params = {"limit": limit, **{k: v for k, v in filters.items() if v}}
        return self._json("GET", f"/workspaces/{self._ws(workspace)}/audit", params=params)

    # ---- jobs ----------------------------------------------------------------------
    def submit_job(self, spec: dict, workspace: str | None = None) -> dict:
        return self._json("POST", f"/workspaces/{self._ws(workspace)}/jobs", spec)

    def submit_file(
        self, path: str | os.PathLike, workspace: str | None = None, **spec_fields
    ) -> dict:
        """Submit a local notebook (``.ipynb``) or script (``.py``) with its content."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadRequest(f"{path}: no such file") from None
        except (UnicodeDecodeError, IsADirectoryError) as e:
            raise BadRequest(f"{path}: cannot read ({e})") from None
        if p.suffix == ".ipynb":
            try:
                content: Any = json.loads(text)
            except ValueError as e:
                raise BadRequest(f"{path}: not a notebook (invalid JSON: {e})") from None
            source = {"notebook": p.name, "content": content}
        elif p.suffix == ".py":
            source = {"script": p.name, "content": text}
        else:
            raise BadRequest(f"{path}: expected a .ipynb notebook or a .py script")
        return self.submit_job({"source": source, **spec_fields}, workspace)

    submit_notebook = submit_file

    def list_jobs(
        self,
        workspace: str | None = None,
        owner: str | None = None,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict:
        params = {"limit": limit, "offset": offset}
        if owner:
            params["owner"] = owner
        if state:
            params["state"] = state
        return self._json("GET", f"/workspaces/{self._ws(workspace)}/jobs", params=params)

    def get_job(self, job_id: str, workspace: str | None = None) -> dict:
        return self._json("GET", f"/workspaces/{self._ws(workspace)}/jobs/{quote(job_id, safe='')}")

    def cancel_job(self, job_id: str, workspace: str | None = None) -> dict:
        return self._json(
            "POST", f"/workspaces/{self._ws(workspace)}/jobs/{quote(job_id, safe='')}/cancel"
        )

    def iter_logs(
        self, job_id: str, follow: bool = False, offset: int = 0, workspace: str | None = None
    ) -> Iterator[str]:
        """Log text as it arrives; with ``follow`` until the job ends."""
        params = {"offset": offset, "follow": "1" if follow else "0"}
        r = self.request(
            "GET",
            f"/workspaces/{self._ws(workspace)}/jobs/{quote(job_id, safe='')}/logs",
            params=params,
            stream=True,
            timeout=None if follow else self.timeout,
        )
        with r:
            for chunk in r.iter_content(chunk_size=None):
                if chunk:
                    yield chunk.decode("utf-8", errors="replace")

    def wait_job(
        self,
        job_id: str,
        workspace: str | None = None,
        on_update: Callable[[dict], None] | None = None,
        poll: float = 0.1,
        max_poll: float = 0.5,
    ) -> dict:
        """Block until the job ends; ``on_update`` sees every state change."""
        last = None
        delay = poll
        while True:
            job = self.get_job(job_id, workspace)
            key = (job["state"], job.get("attempt"), job.get("wait_reason"))
            if key != last:
                last = key
                delay = poll
                if on_update:
                    on_update(job)
            if job["state"] in TERMINAL_STATES:
                return job
            time.sleep(delay)
            delay = min(max_poll, delay * 1.5)

    # ---- files ---------------------------------------------------------------------
    def _files(self, path: str, workspace: str | None) -> str:
        return f"/workspaces/{self._ws(workspace)}/files/{_quote_path(path)}"

    def list_files(self, path: str = "", workspace: str | None = None) -> list[dict]:
        r = self.request("GET", self._files(path, workspace), stream=True)
        with r:
            if r.headers.get("Content-Disposition"):
                raise BadRequest(f"{path!r} is a file, not a folder")
            return r.json()["entries"]

    def file_info(self, path: str, workspace: str | None = None) -> dict:
        """Entry for ``path`` (file or folder), from its parent's listing."""
        path = path.strip("/")
        if not path:
            return {"name": "", "path": "", "type": "directory", "size": None, "modified": None}
        parent, _, name = path.rpartition("/")
        from .errors import NotFound

        for e in self.list_files(parent, workspace):
            if e["name"] == name:
                return e
        raise NotFound(f"{path!r} does not exist")

    def iter_download(
        self, path: str, workspace: str | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        r = self.request("GET", self._files(path, workspace), stream=True)
        if not r.headers.get("Content-Disposition"):
            r.close()
            raise BadRequest(f"{path!r} is a folder, not a file")
        with r:
            yield from r.iter_content(chunk_size=chunk_size)

    def read_file(self, path: str, workspace: str | None = None) -> bytes:
        return b"".join(self.iter_download(path, workspace))

    def download(self, path: str, local: str | os.PathLike, workspace: str | None = None) -> int:
        """Download to ``local`` atomically (temp file then rename); returns bytes written."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.part")
        n = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in self.iter_download(path, workspace):
                    f.write(chunk)
                    n += len(chunk)
            os.replace(tmp, local)
        finally:
            if tmp.exists():
                tmp.unlink()
        return n

    def upload(
        self, path: str, data: bytes | IO[bytes] | str | os.PathLike, workspace: str | None = None
    ) -> dict:
        """Upload bytes, a binary file object, or a local file path."""
        if isinstance(data, (str, os.PathLike)):
            with open(data, "rb") as f:
                return self.upload(path, f, workspace)
        return self._json(
            "PUT",
            self._files(path, workspace),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=None,
        )

    def delete_file(self, path: str, recursive: bool = False, workspace: str | None = None) -> None:
        self._json(
            "DELETE", self._files(path, workspace), params={"recursive": "1" if recursive else "0"}
        )

    # ---- misc ----------------------------------------------------------------------
    def check(self) -> dict:
        """Who am I, and can I reach the server? Raises Unauthorized/BackendUnavailable."""
        me = self.me()
        if not me:
            raise Unauthorized("no identity")
        return me
