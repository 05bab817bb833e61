"""The model server: Open Inference Protocol (V2) REST over tornado.

Routes (all JSON; errors are ``{"error": "<message>"}``):

=======================================================  ====================================
``GET  /v2/health/live``                                 200 ``{"live": true}``
``GET  /v2/health/ready``                                200 ``{"ready": true}`` or 503
``GET  /v2``                                             server metadata
``GET  /v2/models/{m}[/versions/{v}]``                   model metadata (versions, signature)
``GET  /v2/models/{m}[/versions/{v}]/ready``             200 ``{"name","ready": true}`` / 503
``POST /v2/models/{m}[/versions/{v}]/infer``             inference
``GET  /metrics``                                        Prometheus exposition
=======================================================  ====================================

Status codes: 400 for a request we cannot use (not JSON, missing ``inputs``, wrong shape
or datatype, body over ``max_body_bytes``), 401 for a missing/wrong bearer token, 404 for
an unknown model/version/route, 503 when the model is not ready. The V2 spec says "4xx"
for not-ready health answers; we answer 503 like KServe, which probes treat the same way.

Auth: when ``token`` is set every route needs ``Authorization: Bearer <token>`` except the
two health routes, which stay open so Kubernetes/router probes need no secret; they
reveal nothing but liveness. ``/metrics`` needs the token unless
``metrics_requires_token`` is False (Prometheus can send a bearer token).

Workers: ``workers > 1`` binds the socket once and forks that many processes sharing it
(the kernel spreads connections); a small supervisor restarts a worker that dies and
stops them all on SIGTERM/SIGINT. Metrics then use prometheus_client's multiprocess mode
(see :mod:`.metrics`) so any worker's ``/metrics`` shows the whole server.

Model files come only from this configuration (``model_path`` / ``models``), never from
a request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default
from traitlets.config import Application

from .._version import __version__
from .batching import AdaptiveBatcher
from .metrics import ServingMetrics
from .protocol import (
    InferenceError,
    check_against_signature,
    dumps,
    encode_response,
    loads,
    parse_infer_request,
)
from .runtimes import ModelRuntime, load_runtime, resolve_model_file

log = logging.getLogger("pai_lab.serving")

_JSON = "application/json"


class LoadedModel:
    """One model version in this worker: runtime + batcher + bound metric children."""

    def __init__(self, name: str, version: str, runtime: ModelRuntime, server: ModelServer):
        self.name = name
        self.version = version
        self.runtime = runtime
        self.ready = True
        m = server.metrics
        self.latency = m.latency.labels(name)
        self._requests = m.requests
        self._codes: dict[int, Any] = {}
        batch_hist = m.batch_size.labels(name)
        self.batcher = AdaptiveBatcher(
            runtime.predict,
            max_batch_size=server.max_batch_size,
            max_latency_ms=server.max_latency_ms,
            on_batch=batch_hist.observe,
            inline_max_ms=server.inline_predict_max_ms,
        )

    def count(self, code: int) -> None:
        c = self._codes.get(code)
        if c is None:
            c = self._codes[code] = self._requests.labels(self.name, str(code))
        c.inc()

    def metadata(self, versions: list[str]) -> dict:
        return {
            "name": self.name,
            "versions": versions,
            "platform": self.runtime.platform,
            "inputs": [t.to_dict() for t in self.runtime.inputs],
            "outputs": [t.to_dict() for t in self.runtime.outputs],
        }


class BaseHandler(tornado.web.RequestHandler):
    """JSON errors, bearer-token auth, no tracebacks to clients."""

    open_route = False

    def initialize(self, server: ModelServer) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", _JSON)

    def prepare(self) -> None:
        token = self.server.token
        if token and not self.open_route:
            if not (self.request.path == "/metrics" and not self.server.metrics_requires_token):
                got = self.request.headers.get("Authorization", "")
                scheme, _, value = got.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    value.strip().encode(), token.encode()
                ):
                    self.set_header("WWW-Authenticate", 'Bearer realm="pai-lab"')
                    self.send_json_error(
                        401, "missing or wrong bearer token" if got else "missing bearer token"
                    )

    def send_json_error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", _JSON)
        self.finish(dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal server error"
        else:
            message = self._reason
        self.set_header("Content-Type", _JSON)
        self.finish(dumps({"error": message}))

    def find_model(self, name: str, version: str | None) -> LoadedModel:
        versions = self.server.models_loaded.get(name)
        if not versions:
            raise InferenceError(f"model '{name}' not found", 404)
        if version is None:
            return versions[self.server.default_versions[name]]
        m = versions.get(version)
        if m is None:
            raise InferenceError(
                f"model '{name}' has no version '{version}' (versions: {sorted(versions)})", 404
            )
        return m


class LiveHandler(BaseHandler):
    open_route = True

    def get(self) -> None:
        self.finish(b'{"live":true}')


class ReadyHandler(BaseHandler):
    open_route = True

    def get(self) -> None:
        ready = self.server.is_ready()
        self.set_status(200 if ready else 503)
        self.finish(dumps({"ready": ready}))


class ServerMetadataHandler(BaseHandler):
    def get(self) -> None:
        self.finish(dumps({"name": "pai-lab", "version": __version__, "extensions": []}))


class ModelMetadataHandler(BaseHandler):
    def get(self, name: str, version: str | None = None) -> None:
        try:
            m = self.find_model(name, version)
        except InferenceError as e:
            return self.send_json_error(e.status, e.message)
        versions = sorted(self.server.models_loaded[name])
        self.finish(dumps(m.metadata(versions)))


class ModelReadyHandler(BaseHandler):
    def get(self, name: str, version: str | None = None) -> None:
        try:
            m = self.find_model(name, version)
        except InferenceError as e:
            return self.send_json_error(e.status, e.message)
        self.set_status(200 if m.ready else 503)
        self.finish(dumps({"name": name, "ready": m.ready}))


@tornado.web.stream_request_body
class InferHandler(BaseHandler):
    """POST .../infer; the body is streamed so an oversized one is refused early with 400."""

    def prepare(self) -> None:
        self._t0 = time.perf_counter()
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_big = False
        super().prepare()
        if self._finished:
            return
        limit = self.server.max_body_bytes
        self.request.connection.set_max_body_size(max(limit * 2, limit + 65536))
        self._count_active(*self.path_args)
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.send_json_error(
                400, f"request body of {int(length)} bytes exceeds the limit of {limit} bytes"
            )

    _counted: AdaptiveBatcher | None = None

    def _count_active(self, name: str, version: str | None) -> None:
        # the batcher needs to know how many requests are arriving, not only queued:
        # that is what tells a lone request (run it now) from a burst (batch it)
        versions = self.server.models_loaded.get(name)
        if versions:
            m = versions.get(version or self.server.default_versions[name])
            if m is not None:
                self._counted = m.batcher
                m.batcher.active += 1

    def _uncount(self) -> None:
        if self._counted is not None:
            self._counted.active -= 1
            self._counted = None

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()

    def data_received(self, chunk: bytes) -> None:
        if self._too_big:
            return
        self._size += len(chunk)
        if self._size > self.server.max_body_bytes:
            self._too_big = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    async def post(self, name: str, version: str | None = None) -> None:
        model = None
        try:
            model = self.find_model(name, version)
            if self._too_big:
                raise InferenceError(
                    f"request body exceeds the limit of {self.server.max_body_bytes} bytes"
                )
            if not model.ready:
                raise InferenceError(f"model '{name}' is not ready", 503)
            body = b"".join(self._chunks)
            if not body:
                raise InferenceError("request body is empty; expected a JSON object with 'inputs'")
            req = parse_infer_request(loads(body))
            runtime = model.runtime
            check_against_signature(req, runtime.inputs)
            outputs = runtime.output_names(req)
            result = await model.batcher.submit(req, outputs)
            payload = encode_response(model.name, model.version, result, req.id)
        except InferenceError as e:
            if model is not None:
                model.count(e.status)
                model.latency.observe(time.perf_counter() - self._t0)
            return self.send_json_error(e.status, e.message)
        except Exception:
            log.exception("inference failed for model %s", name)
            if model is not None:
                model.count(500)
            return self.send_json_error(500, "inference failed; see the server log")
        # count before answering: with several workers a client's next scrape may reach
        # another process before this one would get to run the lines after finish()
        model.count(200)
        model.latency.observe(time.perf_counter() - self._t0)
        self.finish(payload)


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        body, ctype = self.server.metrics.render()
        self.set_header("Content-Type", ctype)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    open_route = True

    def prepare(self) -> None:
        self.send_json_error(404, f"no route {self.request.method} {self.request.path}")


_MODEL = r"/v2/models/([^/]+)(?:/versions/([^/]+))?"


class ModelServer(Application):
    """Serve one or more model files over the Open Inference Protocol (V2)."""

    name = "pai-lab-serve"
    description = "Serve a scikit-learn or TorchScript model over the Open Inference Protocol V2."

    model_path = Unicode(
        "", help="Model file or directory holding one (joblib/pickle or TorchScript .pt)."
    ).tag(config=True)
    model_name = Unicode("model", help="Name the model is served under (/v2/models/<name>).").tag(
        config=True
    )
    model_version = Unicode("1", help="Version string reported and accepted in URLs.").tag(
        config=True
    )
    framework = Unicode("", help="'sklearn' or 'torch'; empty guesses from the file suffix.").tag(
        config=True
    )
    models = List(
        Dict(),
        help="More models: a list of {'name', 'version', 'path', 'framework'} dicts. The last "
        "version listed for a name is its default (used when the URL names no version).",
    ).tag(config=True)
    host = Unicode("127.0.0.1", help="Interface to listen on (loopback by default).").tag(
        config=True
    )
    port = Integer(9000, help="TCP port; 0 picks a free one (see port_file).").tag(config=True)
    port_file = Unicode(
        "", help="If set, write {'port', 'pid'} JSON here once listening (for supervisors)."
    ).tag(config=True)
    token = Unicode(
        help="Bearer token required on every route but the health probes; empty disables "
        "auth. Defaults to $PAI_SERVING_TOKEN (keeps it out of the process list).",
    ).tag(config=True)
    parent_pid = Integer(
        0, help="Exit when this process (a supervisor such as the router) is gone; 0 = never."
    ).tag(config=True)

    @default("token")
    def _token_default(self) -> str:
        return os.environ.get("PAI_SERVING_TOKEN", "")

    metrics_requires_token = Bool(
        True, help="Require the bearer token on /metrics too (when a token is set)."
    ).tag(config=True)
    workers = Integer(1, help="Worker processes sharing the listening socket.").tag(config=True)
    max_batch_size = Integer(
        32, help="Most rows merged into one predict call; 1 disables batching."
    ).tag(config=True)
    max_latency_ms = Float(
        2.0,
        help="Longest a request waits for others to batch with, only spent under concurrency.",
    ).tag(config=True)
    inline_predict_max_ms = Float(
        2.0,
        help="Run predict on the event loop while its moving-average time is below this "
        "(a thread handoff costs more than a sub-ms sklearn predict); 0 = always a thread.",
    ).tag(config=True)
    max_body_bytes = Integer(
        16 * 1024 * 1024, help="Largest accepted request body; larger ones get 400."
    ).tag(config=True)
    device = Unicode("auto", help="torch device: 'auto' (cuda if available), 'cpu', 'cuda:0'.").tag(
        config=True
    )
    torch_threads = Integer(
        0, help="torch intra-op threads per worker; 0 = CPU cores / workers (at least 1)."
    ).tag(config=True)

    aliases = {
        "model-path": "ModelServer.model_path",
        "name": "ModelServer.model_name",
        "model-version": "ModelServer.model_version",
        "framework": "ModelServer.framework",
        "host": "ModelServer.host",
        "port": "ModelServer.port",
        "port-file": "ModelServer.port_file",
        "token": "ModelServer.token",
        "workers": "ModelServer.workers",
        "max-batch-size": "ModelServer.max_batch_size",
        "max-latency-ms": "ModelServer.max_latency_ms",
        "max-body-bytes": "ModelServer.max_body_bytes",
        "device": "ModelServer.device",
        "log-level": "Application.log_level",
    }

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.metrics: ServingMetrics | None = None
        self.models_loaded: dict[str, dict[str, LoadedModel]] = {}
        self.default_versions: dict[str, str] = {}
        self._multiproc_dir: str | None = None

    def model_specs(self) -> list[dict]:
        specs = []
        if self.model_path:
            specs.append(
                {
                    "name": self.model_name,
                    "version": self.model_version,
                    "path": self.model_path,
                    "framework": self.framework or None,
                }
            )
        for d in self.models:
            if "name" not in d or "path" not in d:
                raise ValueError(f"ModelServer.models entry needs 'name' and 'path': {d}")
            specs.append(
                {
                    "name": str(d["name"]),
                    "version": str(d.get("version", "1")),
                    "path": str(d["path"]),
                    "framework": d.get("framework") or None,
                }
            )
        if not specs:
            raise ValueError("no model to serve: give a model path")
        return specs

    def is_ready(self) -> bool:
        return bool(self.models_loaded) and all(
            m.ready for vs in self.models_loaded.values() for m in vs.values()
        )

    def load_models(self) -> None:
        threads = self.torch_threads or max(1, (os.cpu_count() or 1) // max(1, self.workers))
        for spec in self.model_specs():
            rt = load_runtime(
                spec["path"], spec["framework"], device=self.device, torch_threads=threads
            )
            lm = LoadedModel(spec["name"], spec["version"], rt, self)
            self.models_loaded.setdefault(spec["name"], {})[spec["version"]] = lm
            self.default_versions[spec["name"]] = spec["version"]
            self.log.info(
                "loaded %s model %s version %s from %s",
                rt.framework,
                spec["name"],
                spec["version"],
                rt.model_file,
            )

    def make_app(self) -> tornado.web.Application:
        s = {"server": self}
        return tornado.web.Application(
            [
                (r"/v2/health/live", LiveHandler, s),
                (r"/v2/health/ready", ReadyHandler, s),
                (r"/v2/?", ServerMetadataHandler, s),
                (_MODEL + r"/ready", ModelReadyHandler, s),
                (_MODEL + r"/infer", InferHandler, s),
                (_MODEL + r"/?", ModelMetadataHandler, s),
                (r"/metrics", MetricsHandler, s),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=s,
            log_function=lambda handler: None,  # access logs cost ~10% at high rates
        )

    # -- running -------------------------------------------------------------------------
    def start(self) -> int:
        """Validate, bind, fork workers if asked, load models and serve until signalled.

        Returns the exit code (3 when workers could not load their models)."""
        for spec in self.model_specs():  # fail fast in the parent with a clear message
            resolve_model_file(spec["path"], spec["framework"])
        sockets = tornado.netutil.bind_sockets(self.port, self.host, reuse_port=False)
        port = sockets[0].getsockname()[1]
        if self.workers > 1:
            self._multiproc_dir = tempfile.mkdtemp(prefix="pai-serving-metrics-")
            return self._supervise(sockets, port)
        self._serve(sockets, port)
        return 0

    def _write_port_file(self, port: int) -> None:
        if self.port_file:
            tmp = self.port_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"port": port, "pid": os.getpid()}, f)
            os.replace(tmp, self.port_file)

    def _serve(self, sockets: list, port: int, parent: int | None = None) -> None:
        async def main() -> None:
            self.metrics = ServingMetrics(self._multiproc_dir)
            self.load_models()
            http = tornado.httpserver.HTTPServer(
                self.make_app(), max_body_size=max(self.max_body_bytes * 2, 1 << 20)
            )
            http.add_sockets(sockets)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            if parent is None and self.parent_pid:
                asyncio.ensure_future(self._watch_parent(self.parent_pid, stop))
            if parent is None:
                self._write_port_file(port)
                print(f"pai-lab model server listening on http://{self.host}:{port}", flush=True)
            else:
                asyncio.ensure_future(self._watch_parent(parent, stop))
            await stop.wait()
            http.stop()
            for vs in self.models_loaded.values():
                for m in vs.values():
                    await m.batcher.close()

        asyncio.run(main())

    @staticmethod
    async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
        while not stop.is_set():  # a worker must not outlive its supervisor
            if os.getppid() != parent:
                stop.set()
                return
            await asyncio.sleep(1.0)

    def _supervise(self, sockets: list, port: int) -> int:
        parent = os.getpid()
        children: dict[int, int] = {}
        started: dict[int, float] = {}
        stopping = False

        def spawn(slot: int) -> None:
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    self._serve(sockets, port, parent=parent)
                except Exception:
                    log.exception("worker %d failed", slot)
                    code = 3
                finally:
                    os._exit(code)
            children[pid] = slot
            started[pid] = time.monotonic()

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for slot in range(self.workers):
            spawn(slot)
        self._write_port_file(port)
        print(
            f"pai-lab model server listening on http://{self.host}:{port} ({self.workers} workers)",
            flush=True,
        )
        exit_code = 0
        try:
            while children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                slot = children.pop(pid, None)
                if slot is None:
                    continue
                code = os.waitstatus_to_exitcode(status)
                if stopping:
                    continue
                if code == 3 and time.monotonic() - started.pop(pid, 0) < 30:
                    self.log.error("worker %d could not load its models; stopping", slot)
                    exit_code = 3
                    on_signal(signal.SIGTERM, None)
                    continue
                self.log.warning("worker %d (pid %d) exited with %s; restarting", slot, pid, code)
                spawn(slot)
        finally:
            if self._multiproc_dir:
                shutil.rmtree(self._multiproc_dir, ignore_errors=True)
        return exit_code


def main(argv: list[str] | None = None) -> None:
    """``python -m pai_lab.serving.server --model-path m.joblib --name iris --port 9000``."""
    app = ModelServer()
    app.initialize(argv)
    try:
        code = app.start()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"pai-lab serve: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
