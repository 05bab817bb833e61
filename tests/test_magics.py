"""``%pai`` in real kernels: started by a real jupyter server through its sessions API (so
notebook-path detection is the real thing), executed with nbclient, against the server's
embedded control plane running real local jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from tests.support.jupyter import isolated_env, write_notebook

pytestmark = pytest.mark.timeout(300)
WS = "pai/api/v1/workspaces/default"
LIMIT = 180  # hang guard only


class _AttachedKernelManager(AsyncKernelManager):
    """Lets nbclient drive a kernel that the Jupyter server started (and owns)."""

    @property
    def has_kernel(self) -> bool:
        return True

    async def _async_is_alive(self) -> bool:
        return True

    is_alive = _async_is_alive

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """The server owns the kernel: the test deletes it through the server's API."""

    shutdown_kernel = _async_shutdown_kernel


def start_session(server, path: str) -> str:
    """Open ``path`` like JupyterLab does: a session (and kernel) via the server's API."""
    r = server.request(
        "POST",
        "api/sessions",
        json={
            "path": path,
            "name": Path(path).name,
            "type": "notebook",
            "kernel": {"name": "python3"},
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["kernel"]["id"]


def run_in_server_kernel(server, nb_path: str, cells: list[str]) -> nbformat.NotebookNode:
    """Execute ``cells`` in a kernel the server started for ``nb_path`` (errors allowed)."""
    kid = start_session(server, nb_path)
    km = _AttachedKernelManager(
        connection_file=str(Path(server.env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kid}.json")
    )
    km.load_connection_file()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = NotebookClient(
        nb, km=km, timeout=LIMIT, allow_errors=True, store_widget_state=True, startup_timeout=LIMIT
    )
    try:
        client.execute(cleanup_kc=True)
    finally:
        server.request("DELETE", f"api/kernels/{kid}")
    return nb


def text_of(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] in ("display_data", "execute_result"):
            parts.append(o["data"].get("text/plain", "") + "\n")
    return "".join(parts)


def html_of(cell) -> str:
    return "".join(
        o["data"].get("text/html", "")
        for o in cell.get("outputs", [])
        if o["output_type"] in ("display_data", "execute_result")
    )


def error_of(cell) -> dict | None:
    return next((o for o in cell.get("outputs", []) if o["output_type"] == "error"), None)


def assert_one_line_error(cell, *words: str) -> str:
    e = error_of(cell)
    assert e is not None, f"cell did not fail: {cell.source!r}: {text_of(cell)!r}"
    assert e["ename"] == "PaiMagicError"
    assert len(e["traceback"]) == 1, e["traceback"]  # no Python traceback
    line = re.sub(r"\x1b\[[0-9;]*m", "", e["traceback"][0])
    assert line.startswith("pai: ") and "Traceback" not in line and 'File "' not in line
    for w in words:
        assert w.lower() in line.lower(), line
    return line


TRAIN_CELLS = [
    "%load_ext pai_lab",
    "C = 1.0",
    "import pai_lab\nacc = 0.5 + C / 10\npai_lab.log_metric('accuracy', acc)\n"
    "print('trained', acc, 'job:', (pai_lab.current_job() or {}).get('id'))",
    "%pai train --wait --param C=2.0 --name magic-train",
]


def test_pai_train_wait_runs_this_notebook_as_a_job(standalone_server):
    server = standalone_server
    write_notebook(server.root_dir / "exp" / "train.ipynb", TRAIN_CELLS, tags={1: ["parameters"]})
    nb = run_in_server_kernel(server, "exp/train.ipynb", TRAIN_CELLS)
    assert "trained 0.6 job: None" in text_of(nb.cells[2])  # interactive: no job context
    cell = nb.cells[3]
    assert error_of(cell) is None, error_of(cell)
    out = text_of(cell)
    assert "warning" not in out  # everything run is in the saved file
    m = re.search(
        r"submitted train\.ipynb \(saved [0-9:]+\) as job (\S+) in workspace default", out
    )
    assert m, out
    job_id = m.group(1)
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"job {job_id} succeeded after ")
    assert "accuracy=0.7" in summary
    link = f"/jp/{WS}/files/jobs/{job_id}/output.ipynb"
    assert summary.endswith(f"output notebook: {link}")
    # the live panel: a widget, whose final state shows the outcome and the link
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs
    )
    states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = " ".join(str(s["state"].get("value", "")) for s in states.values())
    assert "class='pai-state'>succeeded<" in values and "accuracy=<b>0.7</b>" in values
    assert link in values
    # the job ran the saved notebook with the parameter; inside it %pai train did not resubmit
    job = server.get(f"{WS}/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["name"] == "magic-train"
    assert [m["value"] for m in job["metrics"] if m["name"] == "accuracy"] == [0.7]
    executed = json.dumps(server.get(link.removeprefix("/jp/")).json())
    assert f"already running as job {job_id}" in executed
    assert f"trained 0.7 job: {job_id}" in executed
    total = server.get(f"{WS}/jobs?limit=200").json()["jobs"]
    assert [j["id"] for j in total if j["name"] == "magic-train"] == [job_id]


def test_commands_errors_files_and_unsaved_warning(standalone_server):
    server = standalone_server
    saved = ["%load_ext pai_lab", "x = 1"]
    write_notebook(server.root_dir / "tools.ipynb", saved)
    cells = (
        saved
        + [
            "%pai logs no-such-job",  # 2
            "%pai frobnicate",  # 3
            "%pai train --param 1bad=3",  # 4
            "%pai workspace nope",  # 5
            "%pai workspace",  # 6
            "open('local.txt', 'wb').write(b'abc\\x00def')\n%pai cp local.txt pai://datasets/magic/",  # 7
            "%pai ls datasets/magic",  # 8
            "%pai cp pai://datasets/magic/local.txt copy.txt\nprint(open('copy.txt', 'rb').read())",  # 9
            "import pai_lab\nprint(pai_lab.fs.cat('datasets/magic/local.txt'))\n"
            "pai_lab.log_metric('m', 1.5)\nprint(pai_lab.current_job())",  # 10
            "%pai jobs --all",  # 11
            "%pai help",  # 12
            "%pai train --help",  # 13
            "%pai cp a.txt b.txt",  # 14
            "%pai train --name unsaved-check --max-runtime 5m",  # 15
            "from pai_lab.magics import STATE\n"
            "j = [j for j in STATE.client.list_jobs()['jobs'] if j['name'] == 'unsaved-check'][0]\n"
            "get_ipython().run_line_magic('pai', 'cancel ' + j['id'])",  # 16
            "%pai jobs --state cancelled",  # 17
            "%pai train --wait --no-widgets --notebook quick.ipynb --name quick",  # 18
        ]
    )
    write_notebook(server.root_dir / "quick.ipynb", ["print('quick one')"])
    nb = run_in_server_kernel(server, "tools.ipynb", cells)
    c = nb.cells
    assert_one_line_error(c[2], "no-such-job")
    assert_one_line_error(c[3], "invalid choice", "frobnicate")
    assert_one_line_error(c[4], "1bad")
    assert_one_line_error(c[5], "nope")
    assert "current workspace: default" in text_of(c[6])
    assert "uploaded local.txt -> pai://datasets/magic/local.txt (7 bytes)" in text_of(c[7])
    assert "local.txt" in html_of(c[8]) and "<table" in html_of(c[8])
    assert "b'abc\\x00def'" in text_of(c[9])
    assert "b'abc\\x00def'\nNone" in text_of(c[10])
    assert "<table" in html_of(c[11]) or "no jobs in workspace default (all owners)" in html_of(
        c[11]
    )
    assert "train" in text_of(c[12]) and "workspace" in text_of(c[12])
    assert "--max-runtime" in text_of(c[13]) and "--param" in text_of(c[13])
    assert_one_line_error(c[14], "pai://")
    out = text_of(c[15])
    assert error_of(c[15]) is None, error_of(c[15])
    assert "warning: 14 cell(s) run in this kernel are not in the saved tools.ipynb" in out
    job_id = re.search(r"as job (\S+)", out).group(1)
    assert f"%pai logs {job_id} --follow" in out
    assert f"job {job_id}: cancelled" in text_of(c[16])
    assert job_id in html_of(c[17]) and "<table" in html_of(c[17])
    # text progress (no widgets): state changes as lines, then the summary
    out = text_of(c[18])
    assert error_of(c[18]) is None, error_of(c[18])
    assert not any("widget-view" in k for o in c[18].outputs for k in o.get("data", {}))
    quick = re.search(r"as job (\S+)", out).group(1)
    assert re.search(rf"^\[\S*\] {quick}: (queued|starting|running)$", out, re.M), out
    assert out.strip().splitlines()[-1].startswith(f"job {quick} succeeded after ")


def test_outside_a_server_and_inside_a_job(tmp_path):
    """A kernel nobody can place (no session, no server) and one inside a job."""
    env = isolated_env(tmp_path)
    env["PAI_LAB_URL"] = "http://127.0.0.1:9/"  # nothing listens on the discard port
    cells = [
        "%load_ext pai_lab",
        "%pai train",
        "%pai jobs",
        "import os\nos.environ['PAI_JOB_ID'] = 'j-inside'\n%pai train --wait",
        "print('continued')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in cells])
    client = NotebookClient(nb, timeout=LIMIT, allow_errors=True, kernel_name="python3")
    client.execute(cwd=str(tmp_path), env=env)
    assert_one_line_error(nb.cells[1], "cannot tell which notebook", "--notebook")
    assert_one_line_error(nb.cells[2], "cannot reach", "127.0.0.1:9")
    assert error_of(nb.cells[3]) is None
    assert "already running as job j-inside" in text_of(nb.cells[3])
    assert "continued" in text_of(nb.cells[4])


def test_notebook_path_detection_falls_back_to_the_sessions_api(standalone_server):
    """JPY_SESSION_NAME stale (the notebook was renamed): the server's sessions API answers."""
    server = standalone_server
    write_notebook(server.root_dir / "old.ipynb", ["1"])
    kid = start_session(server, "old.ipynb")
    try:
        (server.root_dir / "old.ipynb").rename(server.root_dir / "new.ipynb")
        sid = [s for s in server.get("api/sessions").json() if s["kernel"]["id"] == kid][0]["id"]
        r = server.request("PATCH", f"api/sessions/{sid}", json={"path": "new.ipynb"})
        assert r.status_code == 200
        km = _AttachedKernelManager(
            connection_file=str(Path(server.env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kid}.json")
        )
        km.load_connection_file()
        nb = nbformat.v4.new_notebook(
            cells=[
                nbformat.v4.new_code_cell(
                    "import os\nfrom pai_lab.magics import find_notebook_path\n"
                    "print(os.environ['JPY_SESSION_NAME'].endswith('old.ipynb'), find_notebook_path())"
                )
            ]
        )
        NotebookClient(nb, km=km, timeout=LIMIT, startup_timeout=LIMIT).execute()
        assert text_of(nb.cells[0]).strip() == f"True {(server.root_dir / 'new.ipynb').resolve()}"
    finally:
        server.request("DELETE", f"api/kernels/{kid}")
