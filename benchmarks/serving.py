"""Serving benchmark: pai-lab's model server vs MLServer vs a minimal tornado handler.

One run, side by side, on loopback: the same iris LogisticRegression (joblib) served by

- ``pai-lab``       our OIP V2 server (adaptive batching on, the default),
- ``pai-lab-nobatch`` the same with ``max_batch_size=1`` (to show what batching buys),
- ``pai-lab-nobatch-thread`` no batching and every predict on the executor thread (the
  strict never-block-the-loop design without our inline fast path),
- ``mlserver``      MLServer + mlserver-sklearn, default settings bound to 127.0.0.1,
- ``minimal``       a bare tornado handler: json -> numpy -> predict -> json,

driven by the same bounded closed-loop load generator (a separate process: raw asyncio
protocol over HTTP/1.1 keep-alive sockets, one per simulated client, so it costs a
few tens of microseconds per request) at concurrency 1 and 16 for a fixed duration,
with single-row and 100-row payloads; plus in-process ``predict`` as the upper limit.
Prints req/s, p50 and p99 per cell and the ratios the serving issue targets.

    python benchmarks/serving.py [--duration 5] [--mlserver /path/to/mlserver]

MLServer is looked up as ``--mlserver``, ``$MLSERVER``, ``mlserver`` on PATH, then
``/tmp/mlserver-venv/bin/mlserver``; install it with
``pip install mlserver mlserver-sklearn 'uvloop<0.22'`` (a separate venv is fine: it only
needs the same scikit-learn version to load the joblib file). Without it the MLServer
rows are skipped and said so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# load generator (runs in its own process: ``serving.py --loadgen <json>``)


def run_loadgen(
    port: int,
    path: str,
    body: bytes,
    headers: dict,
    concurrency: int,
    duration: float,
    warmup: float = 0.5,
) -> dict:
    """Closed loop: each client sends its next request as soon as the last answer is in."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    latencies: list[float] = []
    errors = [0]
    state = {"measuring": False, "stop": False}
    perf = time.perf_counter

    class Client(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.buf = bytearray()
            self.need = -1
            self.send()

        def send(self):
            self.t0 = perf()
            self.t.write(request)

        def data_received(self, data):
            buf = self.buf
            buf += data
            while True:
                if self.need < 0:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    header = bytes(buf[:end]).lower()
                    i = header.find(b"content-length:")
                    if i < 0:
                        raise RuntimeError("response without Content-Length")
                    j = header.find(b"\r\n", i)
                    n = int(header[i + 15 : j if j > 0 else None])
                    self.status = int(header[9:12])
                    self.need = end + 4 + n
                if len(buf) < self.need:
                    return
                del buf[: self.need]
                self.need = -1
                if state["measuring"]:
                    latencies.append(perf() - self.t0)
                    if self.status != 200:
                        errors[0] += 1
                if state["stop"]:
                    return
                self.send()

        def connection_lost(self, exc):
            if not state["stop"]:
                errors[0] += 1

    async def main():
        loop = asyncio.get_running_loop()
        transports = []
        for _ in range(concurrency):
            t, _ = await loop.create_connection(Client, "127.0.0.1", port)
            t.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transports.append(t)
        await asyncio.sleep(warmup)
        state["measuring"] = True
        t0 = perf()
        await asyncio.sleep(duration)
        state["measuring"] = False
        elapsed = perf() - t0
        state["stop"] = True
        await asyncio.sleep(0.2)
        for t in transports:
            t.close()
        return elapsed

    elapsed = asyncio.run(main())
    lat = sorted(latencies)
    n = len(lat)
    return {
        "requests": n,
        "errors": errors[0],
        "elapsed": elapsed,
        "latencies_ms": [round(v * 1000, 3) for v in lat],
    }


def loadgen_subprocess(
    port: int, path: str, body: bytes, headers: dict, concurrency: int, duration: float
) -> dict:
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        spec = json.dumps(
            {
                "port": port,
                "path": path,
                "body_file": f.name,
                "headers": headers,
                "concurrency": concurrency,
                "duration": duration,
            }
        )
        out = subprocess.run(
            [sys.executable, __file__, "--loadgen", spec],
            check=True,
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(f.name)


# --------------------------------------------------------------------------------------
# the minimal tornado handler (``serving.py --minimal PORT MODEL``)


def run_minimal(port: int, model_path: str) -> None:
    import joblib
    import numpy as np
    import tornado.ioloop
    import tornado.web

    model = joblib.load(model_path)

    class Infer(tornado.web.RequestHandler):
        def post(self, name):
            req = json.loads(self.request.body)
            t = req["inputs"][0]
            x = np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
            y = model.predict(x)
            self.set_header("Content-Type", "application/json")
            self.finish(
                json.dumps(
                    {
                        "model_name": name,
                        "outputs": [
                            {
                                "name": "predict",
                                "datatype": "INT64",
                                "shape": [len(y)],
                                "data": y.tolist(),
                            }
                        ],
                    }
                )
            )

    class Ready(tornado.web.RequestHandler):
        def get(self):
            self.finish({"ready": True})

    app = tornado.web.Application(
        [(r"/v2/models/([^/]+)/infer", Infer), (r"/v2/health/ready", Ready)],
        log_function=lambda h: None,
    )
    app.listen(port, "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


# --------------------------------------------------------------------------------------
# servers under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def find_mlserver(arg: str | None) -> str | None:
    for cand in (
        arg,
        os.environ.get("MLSERVER"),
        shutil.which("mlserver"),
        "/tmp/mlserver-venv/bin/mlserver",
    ):
        if cand and os.path.exists(cand):
            return cand
    return None


def start_server(
    kind: str, model_path: Path, workdir: Path, mlserver: str | None, log
) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if kind.startswith("pai-lab"):
        workers = 2 if kind.endswith("-w2") else 1
        batch = 1 if "nobatch" in kind else 32
        cmd = [
            sys.executable,
            "-m",
            "pai_lab.serving.server",
            "--model-path",
            str(model_path),
            "--name",
            "iris",
            "--port",
            str(port),
            f"--workers={workers}",
            f"--max-batch-size={batch}",
            "--log-level=WARN",
        ]
        if "thread" in kind:  # predict always on the executor thread, never inline
            cmd.append("--ModelServer.inline_predict_max_ms=0")
    elif kind == "minimal":
        cmd = [sys.executable, __file__, "--minimal", str(port), str(model_path)]
    elif kind == "mlserver":
        d = workdir / "mlserver"
        d.mkdir(exist_ok=True)
        shutil.copy(model_path, d / "model.joblib")
        (d / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                }
            )
        )
        (d / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": "iris",
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib", "version": "1"},
                }
            )
        )
        cmd = [mlserver, "start", str(d)]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    wait_ready(port, proc)
    # warm up: a few requests so lazy imports and first-call costs are out of the way
    body = payload(1)
    for _ in range(20):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/iris/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()
    return proc, port, "/v2/models/iris/infer"


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def payload(rows: int) -> bytes:
    from sklearn.datasets import load_iris

    x = load_iris().data
    data = [x[i % len(x)].tolist() for i in range(rows)]
    return json.dumps(
        {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, 4], "data": data}]}
    ).encode()


def in_process(model_path: Path, rows: int, duration: float) -> dict:
    import joblib
    import numpy as np
    from sklearn.datasets import load_iris

    model = joblib.load(model_path)
    x = np.asarray(load_iris().data[:rows], dtype=np.float64)
    if rows > len(x):
        x = np.resize(x, (rows, 4))
    lat = []
    t_end = time.perf_counter() + duration
    while True:
        t0 = time.perf_counter()
        model.predict(x)
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 > t_end:
            break
    lat.sort()
    return {
        "requests": len(lat),
        "errors": 0,
        "rps": len(lat) / sum(lat),
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
    }


# --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and all its descendants (MLServer forks workers)."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo.extend(c for c, pp in parents.items() if pp == p and c not in tree)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def batch_stats(port: int) -> tuple[float, float]:
    """(predict calls, rows) so far, from the server's batch-size histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    calls = rows = 0.0
    for line in text.splitlines():
        if line.startswith("pai_serving_batch_size_count"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("pai_serving_batch_size_sum"):
            rows += float(line.rsplit(" ", 1)[1])
    return calls, rows


def summarize(parts: list[dict]) -> dict:
    lat = sorted(v for p in parts for v in p["latencies_ms"])
    n = len(lat)
    elapsed = sum(p["elapsed"] for p in parts)
    cpu = sum(p.get("cpu", 0.0) for p in parts)
    return {
        "requests": n,
        "errors": sum(p["errors"] for p in parts),
        "rps": n / elapsed if elapsed else 0.0,
        "p50_ms": lat[n // 2] if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "server_cpu_us_per_req": cpu / n * 1e6 if n else float("nan"),
        "rows_per_predict": (
            sum(p["batch_rows"] for p in parts) / max(1.0, sum(p["batch_calls"] for p in parts))
            if "batch_calls" in parts[0]
            else None
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per cell and server")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="each cell is measured in this many interleaved slices per server, so "
        "a burst of background load hits every server alike",
    )
    ap.add_argument("--mlserver", help="path to the mlserver executable")
    ap.add_argument(
        "--servers",
        default="pai-lab,pai-lab-nobatch,pai-lab-nobatch-thread,mlserver,minimal",
        help="comma list among pai-lab, pai-lab-nobatch, pai-lab-nobatch-thread, pai-lab-w2, "
        "mlserver, minimal",
    )
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--rows", default="1,100")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    ap.add_argument("--minimal", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.loadgen:
        spec = json.loads(args.loadgen)
        body = Path(spec["body_file"]).read_bytes()
        print(
            json.dumps(
                run_loadgen(
                    spec["port"],
                    spec["path"],
                    body,
                    spec["headers"],
                    spec["concurrency"],
                    spec["duration"],
                )
            )
        )
        return 0
    if args.minimal:
        run_minimal(int(args.minimal[0]), args.minimal[1])
        return 0

    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    servers = args.servers.split(",")
    concs = [int(c) for c in args.concurrency.split(",")]
    rows_list = [int(r) for r in args.rows.split(",")]
    mlserver = find_mlserver(args.mlserver)
    if "mlserver" in servers and not mlserver:
        print(
            "MLServer not found (pip install mlserver mlserver-sklearn 'uvloop<0.22'); "
            "skipping its rows",
            file=sys.stderr,
        )
        servers.remove("mlserver")
    print(f"load average at start: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="pai-bench-") as tmp:
        work = Path(tmp)
        x, y = load_iris(return_X_y=True)
        model_path = work / "model.joblib"
        joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), model_path)
        for rows in rows_list:
            r = in_process(model_path, rows, min(args.duration, 2))
            r["server_cpu_us_per_req"] = 1e6 / r["rps"]
            results[("in-process", rows, 1)] = r
        log = open(work / "servers.log", "ab")
        running = {}
        try:
            for kind in servers:
                running[kind] = start_server(kind, model_path, work, mlserver, log)
            slice_s = args.duration / args.rounds
            for rows in rows_list:
                body = payload(rows)
                for c in concs:
                    parts: dict = {k: [] for k in servers}
                    for _ in range(args.rounds):
                        for kind in servers:
                            proc, port, path = running[kind]
                            cpu0 = cpu_seconds(proc.pid)
                            b0 = batch_stats(port) if kind.startswith("pai-lab") else None
                            part = loadgen_subprocess(port, path, body, {}, c, slice_s)
                            if b0 is not None:
                                b1 = batch_stats(port)
                                part["batch_calls"] = b1[0] - b0[0]
                                part["batch_rows"] = b1[1] - b0[1]
                            # the loadgen warms up 0.5 s and drains 0.2 s outside its window
                            part["cpu"] = (cpu_seconds(proc.pid) - cpu0) * (
                                part["elapsed"] / (part["elapsed"] + 0.7)
                            )
                            parts[kind].append(part)
                    for kind in servers:
                        r = results[(kind, rows, c)] = summarize(parts[kind])
                        print(
                            f"{kind:16s} rows={rows:<4d} c={c:<3d} {r['rps']:9.1f} req/s  "
                            f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                            f"cpu {r['server_cpu_us_per_req']:7.0f} us/req  "
                            + (
                                f"rows/predict {r['rows_per_predict']:5.1f}  "
                                if r["rows_per_predict"]
                                else ""
                            )
                            + f"errors {r['errors']}",
                            flush=True,
                        )
        finally:
            for proc, _, _ in running.values():
                stop_server(proc)
            log.close()
        if any(r["errors"] for r in results.values()):
            print((work / "servers.log").read_text()[-3000:], file=sys.stderr)

    print("\n| server | rows | conc | req/s | p50 ms | p99 ms | server CPU us/req |")
    print("|---|---|---|---|---|---|---|")
    for (kind, rows, c), r in results.items():
        print(
            f"| {kind} | {rows} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['server_cpu_us_per_req']:.0f} |"
        )

    def ratio(a, b, key="rps"):
        if a in results and b in results and results[b][key]:
            return results[a][key] / results[b][key]
        return None

    print(f"\nratios (targets from the serving issue); load average now {os.getloadavg()}:")
    for rows in rows_list:
        lines = [
            (
                f"rows={rows} c=16 pai-lab / mlserver req/s (target >= 3)",
                ratio(("pai-lab", rows, 16), ("mlserver", rows, 16)),
            ),
            (
                f"rows={rows} c=16 pai-lab / mlserver p99 (target < 1)",
                ratio(("pai-lab", rows, 16), ("mlserver", rows, 16), "p99_ms"),
            ),
            (
                f"rows={rows} c=1 pai-lab / minimal req/s (target >= 0.9)",
                ratio(("pai-lab", rows, 1), ("minimal", rows, 1)),
            ),
            (
                f"rows={rows} c=1 minimal / pai-lab server CPU per request (>= 0.9 is 'within 10%')",
                ratio(("minimal", rows, 1), ("pai-lab", rows, 1), "server_cpu_us_per_req"),
            ),
            (
                f"rows={rows} c=16 pai-lab / pai-lab-nobatch req/s (target >= 2)",
                ratio(("pai-lab", rows, 16), ("pai-lab-nobatch", rows, 16)),
            ),
            (
                f"rows={rows} c=16 pai-lab / pai-lab-nobatch-thread req/s",
                ratio(("pai-lab", rows, 16), ("pai-lab-nobatch-thread", rows, 16)),
            ),
            (
                f"rows={rows} c=16 pai-lab / minimal req/s",
                ratio(("pai-lab", rows, 16), ("minimal", rows, 16)),
            ),
        ]
        for label, v in lines:
            print(f"  {label}: " + (f"{v:.2f}" if v is not None else "n/a"))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {"server": k[0], "rows": k[1], "concurrency": k[2], **v}
                    for k, v in results.items()
                ],
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
