"""GPU check for pai-lab's torch path: one short prepared script for a machine with a GPU.

It needs no control plane and finishes in well under 3 minutes (a watchdog stops it at
170 s with a clear message). In order, it

1. prints the torch / CUDA / cuDNN / NCCL versions and every visible device's name;
2. checks that pai-lab's ``GpuPool`` discovers the devices through ``nvidia-smi -L`` (with
   ``PAI_LAB_GPUS`` unset) and hands one out and back;
3. trains the digits example's model (``examples/torch_digits.ipynb``: the same data, MLP,
   SGD and per-batch host-to-device copies) for a fixed number of epochs on ``cuda`` and on
   ``cpu`` side by side, at the example's batch size and at a large one, printing
   samples/s and the cuda/cpu ratio (the tiny MLP at batch 64 is launch-bound, so a GPU
   may not beat the CPU there: the large batch shows the device's headroom);
4. with 2 or more GPUs, runs a 2-rank ``nccl`` DDP step (all_reduce + one DDP epoch) and
   checks that both ranks end with identical weights; with one GPU it says it skipped this;
5. serves the trained TorchScript model through the model server's ``TorchRuntime`` on
   ``cuda`` (and on ``cpu`` for comparison), timing N predictions at batch 1 and 64, and
   once over HTTP with ``pai-lab serve --device cuda``, checking the answers match torch.

``--allow-cpu`` runs all of it on the CPU (DDP with gloo) to test the script itself.

Exit status: 0 when every check passed, 1 when a check failed (each says which and why),
2 when there is no usable GPU (the message says what was looked for).

    python benchmarks/gpu_check.py [--epochs 10] [--inferences 500]
    python benchmarks/gpu_check.py --allow-cpu   # smoke-test the script without a GPU
"""

from __future__ import annotations

import argparse
import datetime
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
sys.path.insert(0, str(REPO))
WATCHDOG_S = 170
FAILURES: list[str] = []


def check(ok: bool, what: str) -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
    if not ok:
        FAILURES.append(what)
    return ok


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _watchdog(signum, frame):  # noqa: ARG001
    print("\nFAIL: gpu_check did not finish within its --time-limit; stopped", flush=True)
    os._exit(1)


# ---- the example's data and training loop ------------------------------------------------
def load_data():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (
        torch.from_numpy(xtr),
        torch.from_numpy(ytr).long(),
        torch.from_numpy(xte),
        torch.from_numpy(yte).long(),
    )


def make_net(seed: int = 0):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train(device: str, epochs: int, batch_size: int, data, rank: int = 0, world: int = 1):
    """The example notebook's loop: returns (net, accuracy, samples/s over timed epochs).

    Epoch 0 is a warm-up (CUDA context, kernels, allocator) and is not timed.
    """
    import torch
    import torch.nn as nn

    xtr, ytr, xte, yte = data
    dev = torch.device(device)
    net = make_net().to(dev)
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    per_rank = max(1, batch_size // world)
    xte_d, yte_d = xte.to(dev), yte.to(dev)
    t0 = None
    for epoch in range(epochs + 1):
        if epoch == 1:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(epoch))
        model.train()
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size][rank::world][:per_rank]
            xb, yb = xtr[idx].to(dev), ytr[idx].to(dev)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (net(xte_d).argmax(1) == yte_d).float().mean().item()
    return net, acc, epochs * len(xtr) / elapsed


# ---- checks ----------------------------------------------------------------------------------
def versions() -> int:
    import torch

    section("versions and devices")
    print(f"  python {sys.version.split()[0]}  torch {torch.__version__}", flush=True)
    print(f"  torch built for CUDA {torch.version.cuda or '-'}", flush=True)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n:
        print(f"  cuDNN {torch.backends.cudnn.version()}", flush=True)
        try:
            print(f"  NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  NCCL: unavailable ({e})", flush=True)
        for i in range(n):
            p = torch.cuda.get_device_properties(i)
            print(
                f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, "
                f"compute capability {p.major}.{p.minor}",
                flush=True,
            )
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
        print("  nvidia-smi -L:", flush=True)
        for line in (out.stdout or out.stderr).strip().splitlines():
            print(f"    {line}", flush=True)
    else:
        print("  nvidia-smi: not on PATH", flush=True)
    return n


def gpu_pool(n_torch: int) -> None:
    from pai_lab.gpus import GpuPool

    section("GpuPool discovery (nvidia-smi -L, PAI_LAB_GPUS unset)")
    saved = os.environ.pop("PAI_LAB_GPUS", None)
    try:
        with tempfile.TemporaryDirectory() as d:
            pool = GpuPool(d)
            devices = pool.devices()
            print(f"  pool devices: {devices}", flush=True)
            if shutil.which("nvidia-smi") is None:
                if n_torch:
                    check(False, "torch sees GPUs but GpuPool has no nvidia-smi to find them")
                else:
                    check(devices == [], "no nvidia-smi: the pool offers no GPU (skipped the rest)")
                return
            cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
            if cvd is None:
                check(
                    len(devices) == n_torch,
                    f"GpuPool sees {len(devices)} GPU(s), torch sees {n_torch}",
                )
            else:
                check(len(devices) >= n_torch, f"GpuPool sees {len(devices)} GPU(s) (CVD={cvd})")
            got = pool.acquire("gpu-check", 1)
            check(got == devices[:1], f"acquire 1 -> {got}")
            check(pool.acquire("other", len(devices)) is None, "all GPUs but one: refused")
            pool.release("gpu-check")
            check(pool.free() == devices, "released: every GPU free again")
    finally:
        if saved is not None:
            os.environ["PAI_LAB_GPUS"] = saved


def training(devices: list[str], epochs: int, data) -> object:
    section(f"training the digits MLP, {epochs} timed epochs after one warm-up")
    net = None
    for batch_size in (64, 1024):
        rates = {}
        for dev in devices:
            net_d, acc, rate = train(dev, epochs, batch_size, data)
            rates[dev] = rate
            print(
                f"  batch {batch_size:5d} on {dev:5s}: {rate:12.0f} samples/s, "
                f"test accuracy {acc:.4f}",
                flush=True,
            )
            if batch_size == 64:
                check(acc > 0.9, f"converged on {dev} (accuracy {acc:.4f} > 0.9)")
                net = net_d.cpu()
        if "cuda" in rates and "cpu" in rates:
            print(f"  batch {batch_size:5d} cuda/cpu ratio: {rates['cuda'] / rates['cpu']:.2f}x")
    return net


def _ddp_rank(rank: int, world: int, port: int, epochs: int, result_dir: str, backend: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    t = torch.tensor([rank + 1.0], device=device)
    dist.all_reduce(t)
    net, acc, rate = train(device, epochs, 64, load_data(), rank=rank, world=world)
    weights = torch.cat([p.detach().flatten().cpu() for p in net.parameters()])
    dist.barrier()
    dist.destroy_process_group()
    Path(result_dir, f"rank{rank}.json").write_text(
        json.dumps(
            {"sum": t.item(), "acc": acc, "rate": rate, "wsum": weights.double().sum().item()}
        )
    )


def ddp(n_gpus: int, epochs: int, allow_cpu: bool) -> None:
    """2-rank DDP with nccl on 2 GPUs; with ``--allow-cpu`` and no GPU, gloo on the CPU."""
    backend = "nccl" if n_gpus >= 2 else "gloo"
    section(f"{backend}: 2-rank DDP")
    if n_gpus == 1 or (n_gpus == 0 and not allow_cpu):
        print(f"  skipped: {n_gpus} GPU visible; the nccl DDP check needs 2 or more", flush=True)
        return
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        try:
            mp.spawn(_ddp_rank, args=(2, port, epochs, d, backend), nprocs=2, join=True)
        except Exception as e:  # noqa: BLE001
            check(False, f"{backend} 2-rank run failed: {e}")
            return
        r = [json.loads(Path(d, f"rank{i}.json").read_text()) for i in range(2)]
    print(f"  2 ranks in {time.perf_counter() - t0:.1f} s (init + {epochs + 1} epochs)")
    check(r[0]["sum"] == r[1]["sum"] == 3.0, f"all_reduce sums {r[0]['sum']}, {r[1]['sum']}")
    check(abs(r[0]["wsum"] - r[1]["wsum"]) < 1e-6, "both ranks hold the same weights after DDP")
    check(r[0]["acc"] > 0.9, f"2-rank accuracy {r[0]['acc']:.4f} > 0.9")
    print(f"  per-rank samples/s: {r[0]['rate']:.0f}, {r[1]['rate']:.0f}")


def serving(net, devices: list[str], n: int) -> None:
    import numpy as np
    import torch

    from pai_lab.serving.runtimes import load_runtime

    section(f"serving the TorchScript model: TorchRuntime, {n} predictions per cell")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "model.pt")
        torch.jit.trace(net.eval(), torch.zeros(1, 64)).save(str(path))
        Path(d, "model.json").write_text(
            json.dumps(
                {
                    "signature": {
                        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
                    }
                }
            )
        )
        x = np.random.default_rng(0).random((64, 64), dtype=np.float32)
        with torch.inference_mode():
            expected = net(torch.from_numpy(x)).numpy()
        rates: dict[tuple[str, int], float] = {}
        for dev in devices:
            rt = load_runtime(path, "torch", device=dev)
            check(str(rt.device).startswith(dev), f"runtime placed the model on {rt.device}")
            out = rt.predict([x], ["logits"], {})["logits"]
            check(
                np.allclose(out, expected, rtol=1e-4, atol=1e-4),
                f"{dev} logits match torch on the host (max diff {abs(out - expected).max():.2e})",
            )
            for rows in (1, 64):
                xb = x[:rows]
                for _ in range(10):
                    rt.predict([xb], ["logits"], {})
                t0 = time.perf_counter()
                for _ in range(n):
                    rt.predict([xb], ["logits"], {})
                dt = time.perf_counter() - t0
                rates[(dev, rows)] = n / dt
                print(
                    f"  {dev:5s} batch {rows:3d}: {n / dt:9.0f} predictions/s, "
                    f"{dt / n * 1e6:8.1f} us each",
                    flush=True,
                )
        for rows in (1, 64):
            if ("cuda", rows) in rates and ("cpu", rows) in rates:
                print(
                    f"  batch {rows:3d} cuda/cpu ratio: {rates[('cuda', rows)] / rates[('cpu', rows)]:.2f}x"
                )
        http_serve(path, x, expected, max(1, n // 5), devices[0])


def http_serve(path: Path, x, expected, n: int, device: str) -> None:
    import numpy as np

    section(f"pai-lab serve --device {device} over HTTP, {n} sequential V2 requests")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pai_lab.cli", "serve", str(path), "--name", "digits",
         "--port", str(port), "--device", device],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                check(False, f"pai-lab serve exited with {proc.returncode}: {out[-2000:]}")
                return
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                check(False, "pai-lab serve was not ready within 60 s")
                return
            time.sleep(0.2)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "FP32",
                        "shape": [8, 64],
                        "data": x[:8].ravel().tolist(),
                    }
                ]
            }  # fmt: skip
        ).encode()

        def infer() -> dict:
            req = urllib.request.Request(
                url + "/v2/models/digits/infer",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        got = np.asarray(infer()["outputs"][0]["data"], dtype=np.float32).reshape(8, 10)
        check(np.allclose(got, expected[:8], rtol=1e-4, atol=1e-4), "HTTP answers match torch")
        t0 = time.perf_counter()
        for _ in range(n):
            infer()
        dt = time.perf_counter() - t0
        print(f"  {n / dt:.0f} requests/s, {dt / n * 1e3:.2f} ms each (8 rows)", flush=True)
    finally:
        with_suppress_killpg(proc)


def with_suppress_killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="timed training epochs per run")
    p.add_argument("--inferences", type=int, default=500, help="predictions per serving cell")
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="without a GPU, run the CPU half instead of exiting 2 (to test this script)",
    )
    p.add_argument(
        "--time-limit",
        type=int,
        default=WATCHDOG_S,
        help=f"stop with a failure after this many seconds (default {WATCHDOG_S})",
    )
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, _watchdog)
    signal.alarm(args.time_limit)
    try:
        import torch
    except ImportError:
        print("FAIL: torch is not installed (pip install torch==2.13.0, or a CUDA build)")
        return 1
    t0 = time.perf_counter()
    n_gpus = versions()
    if n_gpus == 0:
        why = (
            f"torch {torch.__version__} is a CPU-only build"
            if not torch.version.cuda
            else "torch.cuda.is_available() is False (no driver or no device)"
        )
        smi = "nvidia-smi is not on PATH" if not shutil.which("nvidia-smi") else "nvidia-smi found"
        msg = f"no GPU: {why}; {smi}."
        if not args.allow_cpu:
            print(f"\nFAIL: {msg} Run this on a GPU machine (or pass --allow-cpu).", flush=True)
            return 2
        print(f"\n  {msg} --allow-cpu: running the CPU half only", flush=True)
    devices = ["cuda", "cpu"] if n_gpus else ["cpu"]
    torch.set_num_threads(1)  # as the example does: the MLP is too small for more
    gpu_pool(n_gpus)
    data = load_data()
    net = training(devices, args.epochs, data)
    ddp(n_gpus, max(1, args.epochs // 2), args.allow_cpu)
    serving(net, devices, args.inferences)
    print(f"\ngpu_check finished in {time.perf_counter() - t0:.1f} s", flush=True)
    if FAILURES:
        print(f"FAIL: {len(FAILURES)} check(s) failed:", *FAILURES, sep="\n  ")
        return 1
    print("all checks passed" + ("" if n_gpus else " (CPU half only: no GPU)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
