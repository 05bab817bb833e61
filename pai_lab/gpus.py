"""One GPU pool shared by notebook servers and training jobs on one machine.

The hub's local spawner (in the hub process) and the local job backend (in the
control-plane process) both hand out GPUs; the pool lives in a small JSON file under the
data directory guarded by ``fcntl.flock`` so two processes never give the same GPU to two
owners. Owners are free-form strings, by convention ``"job:<id>:<attempt>"`` and
``"server:<user>[:<name>]"``.

Devices come from ``PAI_LAB_GPUS="0,1"`` when set (tests, or to reserve a subset of a
machine's GPUs for pai-lab), else from ``nvidia-smi -L``, else there are none.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POOL_FILE = "gpus.json"
LOCK_FILE = "gpus.lock"
_SMI_RE = re.compile(r"^GPU\s+(\d+):", re.M)


def discover_devices() -> list[int]:
    """GPU indices visible on this machine: ``PAI_LAB_GPUS`` first, then ``nvidia-smi -L``."""
    env = os.environ.get("PAI_LAB_GPUS")
    if env is not None:
        return parse_device_list(env)
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({int(m) for m in _SMI_RE.findall(out)})


def parse_device_list(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; empty text means no GPUs. A bad entry is a clear ValueError."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"PAI_LAB_GPUS: {part!r} is not a GPU index (expected e.g. '0,1')")
        out.append(int(part))
    return sorted(set(out))


class GpuPool:
    """GPU accounting in ``<data_dir>/gpus.json``; every call is one locked transaction."""

    def __init__(self, data_dir: str | os.PathLike, devices: list[int] | None = None):
        self.dir = Path(data_dir)
        self._devices = None if devices is None else sorted(set(int(d) for d in devices))

    # -- helpers -------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.dir / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = self.dir / POOL_FILE
            try:
                state = json.loads(path.read_text())
                if not isinstance(state.get("owners"), dict):
                    raise ValueError
            except (OSError, ValueError, AttributeError):
                state = {"owners": {}}
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, sort_keys=True))
                os.replace(tmp, path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- API -----------------------------------------------------------------------
    def devices(self) -> list[int]:
        """All GPU indices the pool hands out."""
        if self._devices is None:
            self._devices = discover_devices()
        return list(self._devices)

    def acquire(self, owner: str, count: int) -> list[int] | None:
        """Give ``owner`` ``count`` free GPUs, or None when not enough are free.

        Idempotent: an owner that already holds GPUs gets the same ones back, so a
        control plane that restarts and re-acquires for a running job changes nothing.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        devices = self.devices()
        with self._locked() as state:
            owners = state["owners"]
            if owner in owners:
                return list(owners[owner])
            if count == 0:
                return []
            used = {d for ids in owners.values() for d in ids}
            free = [d for d in devices if d not in used]
            if len(free) < count:
                return None
            owners[owner] = free[:count]
            return list(free[:count])

    def release(self, owner: str) -> list[int]:
        """Return ``owner``'s GPUs to the pool (no-op when it holds none)."""
        with self._locked() as state:
            return list(state["owners"].pop(owner, []))

    def release_where(self, predicate: Callable[[str], bool]) -> list[str]:
        """Release every owner for which ``predicate(owner)`` is true (stale owners)."""
        with self._locked() as state:
            gone = [o for o in state["owners"] if predicate(o)]
            for o in gone:
                del state["owners"][o]
            return gone

    def free(self) -> list[int]:
        """GPU indices nobody holds right now."""
        devices = self.devices()
        with self._locked() as state:
            used = {d for ids in state["owners"].values() for d in ids}
        return [d for d in devices if d not in used]

    def owners(self) -> dict[str, list[int]]:
        """``{owner: [gpu indices]}`` for every current holder."""
        with self._locked() as state:
            return {k: list(v) for k, v in state["owners"].items()}

    def describe_shortage(self, count: int) -> str | None:
        """A sentence for people when ``count`` GPUs cannot be had right now, else None."""
        devices = self.devices()
        if count <= 0:
            return None
        if not devices:
            return f"this machine has no GPUs ({count} requested)"
        if count > len(devices):
            return f"{count} GPUs requested but this machine has only {len(devices)}"
        free = self.free()
        if len(free) >= count:
            return None
        noun = "a free GPU" if count == 1 else f"{count} free GPUs"
        return f"waiting for {noun} ({len(free)} of {len(devices)} free)"
