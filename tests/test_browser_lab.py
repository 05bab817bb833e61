"""The JupyterLab extension end to end, in a real headless Chromium.

A standalone ``jupyter lab`` subprocess (the pai-lab server extension hosts the control
plane in-process, jobs run as real papermill kernels) on a free loopback port with a
token; the browser edits a notebook without saving, presses "Submit as job", fills the
dialog, watches the job reach ``succeeded`` in the PAI sidebar, reads its live log and
metrics, opens the executed output notebook in Lab, finds ``model.joblib`` in Artifacts
and downloads it, uploads a file and deletes it again.

Screenshots go to ``$PAI_LAB_SCREENSHOT_DIR`` when set (``docs/images`` for the README),
else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.common import free_port
from tests.support.jupyter import isolated_env

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PAI_LAB_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPO = Path(__file__).resolve().parents[1]
LABEXT = REPO / "pai_lab" / "labextension" / "package.json"

TRAIN_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": 'C = 1.0\nepochs = 3\nlabel = "iris"',
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "metadata": {},
            "source": (
                "import warnings\n"
                "import joblib\n"
                "import pai_lab\n"
                "from sklearn.datasets import load_iris\n"
                "from sklearn.linear_model import LogisticRegression\n"
                "warnings.filterwarnings('ignore')\n"
                "X, y = load_iris(return_X_y=True)\n"
                "for epoch in range(epochs):\n"
                "    model = LogisticRegression(C=C, max_iter=10 * (epoch + 1)).fit(X, y)\n"
                "    acc = model.score(X, y)\n"
                "    pai_lab.log_metric('accuracy', acc, step=epoch)\n"
                "    pai_lab.log_metric('loss', 1 - acc + 0.01 * (epochs - epoch), step=epoch)\n"
                "    print(f'epoch {epoch} accuracy={acc:.3f}', flush=True)\n"
                "joblib.dump(model, 'model.joblib')\n"
                "print(f'trained {label} with C={C}')\n"
            ),
            "outputs": [],
            "execution_count": None,
        },
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


class Lab:
    def __init__(self, url: str, token: str, root: Path, proc: subprocess.Popen, log: Path):
        self.url = url
        self.token = token
        self.root = root
        self.proc = proc
        self.log_path = log

    def api(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 60)
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not LABEXT.exists():
        pytest.fail(
            "the labextension is not built (pai_lab/labextension/package.json missing): "
            "run `pip install -e .` or `cd labextension && jlpm install && jlpm build:prod`"
        )
    base = tmp_path_factory.mktemp("lab")
    env = isolated_env(base)
    # No "get notified about Jupyter news" toast over the screenshots.
    labconfig = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    root = base / "root"
    root.mkdir()
    (root / "train.ipynb").write_text(json.dumps(TRAIN_NOTEBOOK))
    port = free_port()
    token = secrets.token_hex(16)
    log = base / "jupyter-lab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True",
        "--ServerApp.reraise_server_extension_failures=True",
        f"--PaiLabExtension.data_dir={base / 'pai-data'}",
        "--PaiLabExtension.standalone_user=alice",
    ]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(root),
            start_new_session=True,
        )
    server = Lab(f"http://127.0.0.1:{port}/", token, root, proc, log)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            r = server.api("GET", "pai/api/status", timeout=5)
            if r.status_code == 200 and r.json().get("ready"):
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"jupyter lab did not become ready:\n{server.log()[-4000:]}")
        time.sleep(0.5)
    yield server
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    where = os.environ.get("PAI_LAB_SCREENSHOT_DIR")
    path = Path(where) if where else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_sidebar(page) -> None:
    tab = page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="pai-lab-sidebar"]')
    tab.wait_for(timeout=60_000)
    if not page.locator("#pai-lab-sidebar .pai-App").is_visible():
        page.evaluate("() => window.jupyterapp.commands.execute('pai-lab:open')")
    page.locator("#pai-lab-sidebar .pai-App").wait_for(timeout=30_000)


def widen_sidebar(page, pixels: int = 130) -> None:
    """Drag the left panel's edge so the screenshots show the panel at a usable width."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    if box:
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + pixels, y, steps=5)
        page.mouse.up()


def set_theme(page, theme: str) -> None:
    page.evaluate(
        "theme => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", theme
    )
    page.wait_for_function(
        "dark => document.body.dataset.jpThemeLight === (dark ? 'false' : 'true')",
        arg=theme.endswith("Dark"),
        timeout=30_000,
    )
    page.wait_for_timeout(300)


def test_submit_watch_logs_output_and_artifacts(lab, browser, shots, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{lab.url}lab/tree/train.ipynb?token={lab.token}")
        page.wait_for_function("() => !!window.jupyterapp", timeout=60_000)
        button = page.locator(".jp-NotebookPanel-toolbar .pai-SubmitButton")
        button.wait_for(timeout=90_000)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()

        # An unsaved edit: the job must run what the user sees, not what is on disk.
        edited = page.evaluate(
            """async () => {
              const panel = window.jupyterapp.shell.currentWidget;
              await panel.context.ready;
              const cell = panel.content.model.cells.get(0);
              cell.sharedModel.setSource('C = 0.25\\nepochs = 4\\nlabel = "iris"');
              return [panel.context.path, panel.context.model.dirty,
                      panel.context.model.toJSON().cells[0].source];
            }"""
        )
        assert edited[0] == "train.ipynb" and edited[1] is True, edited
        assert "C = 1.0" in (lab.root / "train.ipynb").read_text()

        open_sidebar(page)
        widen_sidebar(page)
        page.locator("#pai-lab-sidebar .pai-WorkspacePicker").wait_for()
        assert page.locator("#pai-lab-sidebar .pai-WorkspacePicker").input_value() == "default"

        button.click()
        dialog = page.locator(".jp-Dialog .pai-Form")
        dialog.wait_for(timeout=30_000)
        params = dialog.locator("textarea[name=parameters]")
        assert params.input_value() == 'C=0.25\nepochs=4\nlabel="iris"'
        assert "Unsaved edits are included" in dialog.inner_text()
        assert dialog.locator("select[name=profile] option").count() >= 1
        dialog.locator("input[name=outputs]").fill("model.joblib")
        params.fill('C=0.5\nepochs=4\nlabel="iris-browser"')
        page.screenshot(path=str(shots / "lab-submit-dialog.png"))

        # A bad value is refused in the dialog, which re-opens with the message.
        # (workers=0 is stopped by the browser's own validation: Submit is disabled)
        dialog.locator("input[name=workers]").fill("0")
        assert page.locator(".jp-Dialog .jp-mod-accept").is_disabled()
        dialog.locator("input[name=workers]").fill("1")
        dialog.locator("input[name=max_runtime]").fill("soon")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.locator(".jp-Dialog .pai-Form .pai-Error").wait_for()
        assert "Max runtime" in page.locator(".jp-Dialog .pai-Error").inner_text()
        assert page.locator(".jp-Dialog input[name=outputs]").input_value() == "model.joblib"
        page.locator(".jp-Dialog input[name=max_runtime]").fill("10m")
        page.locator(".jp-Dialog .jp-mod-accept").click()

        toast = page.locator(".Toastify__toast", has_text="Submitted job")
        toast.wait_for(timeout=30_000)
        job_id = re.search(r"Submitted job (\S+)", toast.inner_text()).group(1)

        # The control plane got the unsaved snapshot and the dialog's values.
        job = lab.api("GET", f"pai/api/v1/workspaces/default/jobs/{job_id}").json()
        assert job["spec"]["parameters"] == {"C": 0.5, "epochs": 4, "label": "iris-browser"}
        assert job["spec"]["outputs"] == ["model.joblib"]
        assert job["spec"]["max_runtime"] == 600
        snapshot = lab.api(
            "GET", f"pai/api/v1/workspaces/default/files/jobs/{job_id}/input.ipynb"
        ).json()
        assert "C = 0.25" in "".join(snapshot["cells"][0]["source"])

        # The Jobs list shows it, and its badge follows the state live.
        item = page.locator(f'#pai-lab-sidebar .pai-JobItem[data-job-id="{job_id}"]')
        item.wait_for(timeout=30_000)
        page.locator(
            f'#pai-lab-sidebar .pai-JobItem[data-job-id="{job_id}"][data-state="succeeded"]'
        ).wait_for(timeout=240_000)
        assert "succeeded" in item.locator(".pai-Badge").inner_text()
        page.screenshot(path=str(shots / "lab-jobs.png"))

        # Job detail: log, metrics chart, parameters.
        item.click()
        detail = page.locator(f'#pai-lab-sidebar .pai-JobDetail[data-job-id="{job_id}"]')
        detail.wait_for()
        logs = detail.locator(".pai-Logs")
        page.wait_for_function(
            "el => el.textContent.includes('trained iris-browser with C=0.5')",
            arg=logs.element_handle(),
            timeout=60_000,
        )
        assert "epoch 3 accuracy=" in logs.inner_text()
        page.screenshot(path=str(shots / "lab-job-detail.png"))
        detail.get_by_role("tab", name="Metrics").click()
        chart = detail.locator('.pai-Metric[data-metric="accuracy"]')
        chart.wait_for()
        points = chart.locator("polyline").get_attribute("points")
        assert len(points.split()) == 4, points
        assert detail.locator('.pai-Metric[data-metric="loss"]').count() == 1
        page.screenshot(path=str(shots / "lab-job-metrics.png"))
        detail.get_by_role("tab", name="Parameters").click()
        assert '"iris-browser"' in detail.locator(".pai-KeyValues").last.inner_text()

        # Register the job's model, then promote it through the evaluation gate.
        detail.get_by_role("tab", name="Logs").click()
        detail.get_by_role("button", name="Register model").click()
        form = page.locator(".jp-Dialog .pai-Form")
        form.wait_for()
        assert form.locator("input[name=path]").input_value() == "outputs/model.joblib"
        form.locator("input[name=name]").fill("iris-lab")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.locator(".Toastify__toast", has_text="Registered iris-lab version 1").wait_for(
            timeout=60_000
        )
        gate = lab.api(
            "PATCH",
            "pai/api/v1/workspaces/default/models/iris-lab",
            json={"gate": "accuracy >= 0.99"},
        )
        assert gate.status_code == 200, gate.text
        page.locator("#pai-lab-sidebar .pai-SectionTabs button[data-section=models]").click()
        page.locator('#pai-lab-sidebar .pai-ListItem[data-model="iris-lab"]').click()
        version = page.locator('#pai-lab-sidebar .pai-Version[data-version="1"]')
        version.wait_for()
        assert "accuracy=0.9667" in version.inner_text()
        assert job_id[:12] in version.inner_text()
        version.get_by_role("button", name="Promote").click()
        page.locator(".jp-Dialog select[name=alias]").select_option("production")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        refused = page.locator("#pai-lab-sidebar .pai-ModelDetail .pai-Error")
        refused.wait_for(timeout=30_000)
        assert "Refused by the evaluation gate" in refused.inner_text()
        assert "accuracy=0.96" in refused.inner_text() and "FAILED" in refused.inner_text()
        page.screenshot(path=str(shots / "lab-models.png"))
        lab.api(
            "PATCH",
            "pai/api/v1/workspaces/default/models/iris-lab",
            json={"gate": "accuracy >= 0.9"},
        ).raise_for_status()
        version.get_by_role("button", name="Promote").click()
        page.locator(".jp-Dialog select[name=alias]").select_option("production")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        promoted = page.locator("#pai-lab-sidebar .pai-ModelDetail .pai-Success")
        promoted.wait_for(timeout=30_000)
        assert "production now points at version 1" in promoted.inner_text()
        version.locator(".pai-Tag-alias", has_text="production").wait_for()
        model = lab.api("GET", "pai/api/v1/workspaces/default/models/iris-lab").json()
        assert model["aliases"] == {"production": 1}

        # Deploy the production alias; the endpoint URL and a curl example are shown.
        page.locator("#pai-lab-sidebar .pai-ModelDetail").get_by_role(
            "button", name="Deploy @production"
        ).click()
        page.locator(".jp-Dialog input[name=name]").fill("iris-lab-svc")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        created = page.locator(".Toastify__toast", has_text="Deployment iris-lab-svc created")
        created.wait_for(timeout=120_000)
        assert created.get_by_role("button", name="Copy token").count() == 1
        page.locator("#pai-lab-sidebar .pai-SectionTabs button[data-section=deployments]").click()
        page.locator('#pai-lab-sidebar .pai-ListItem[data-deployment="iris-lab-svc"]').click()
        dep_detail = page.locator(
            '#pai-lab-sidebar .pai-DeploymentDetail[data-deployment="iris-lab-svc"]'
        )
        curl = dep_detail.locator(".pai-CopyText pre")
        curl.wait_for(timeout=120_000)
        dep = lab.api("GET", "pai/api/v1/workspaces/default/deployments/iris-lab-svc").json()
        assert dep["url"] and dep["url"].rstrip("/") in curl.inner_text()
        assert "/v2/models/iris-lab/infer" in curl.inner_text()
        assert "Bearer $TOKEN" in curl.inner_text()
        page.screenshot(path=str(shots / "lab-deployments.png"))
        lab.api("DELETE", "pai/api/v1/workspaces/default/deployments/iris-lab-svc")

        # Back to the job for its output notebook.
        page.locator("#pai-lab-sidebar .pai-SectionTabs button[data-section=jobs]").click()
        page.locator(f'#pai-lab-sidebar .pai-JobItem[data-job-id="{job_id}"]').click()
        detail.wait_for()

        # Open the executed notebook in Lab: copied into the Lab folder and opened.
        detail.get_by_role("button", name="Output notebook").click()
        local = lab.root / "pai-artifacts" / "default" / "jobs" / job_id / "output.ipynb"
        page.locator(".jp-mod-current .lm-TabBar-tabLabel", has_text="output.ipynb").first.wait_for(
            timeout=60_000
        )
        executed = json.loads(local.read_text())
        outputs = "".join(
            "".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", [])
        )
        assert "trained iris-browser with C=0.5" in outputs

        # Outputs in Artifacts: breadcrumbs, model.joblib with its size; download it.
        open_sidebar(page)
        detail.get_by_role("button", name="Outputs").click()
        row = page.locator(
            f'#pai-lab-sidebar .pai-FileRow[data-path="jobs/{job_id}/outputs/model.joblib"]'
        )
        row.wait_for(timeout=30_000)
        crumbs = page.locator("#pai-lab-sidebar .pai-Breadcrumbs").inner_text()
        assert crumbs.split() == ["default", "/", "jobs", "/", job_id, "/", "outputs"]
        assert re.search(r"\d+(\.\d)? (B|KiB)", row.locator(".pai-FileTable-size").inner_text())
        page.screenshot(path=str(shots / "lab-artifacts.png"))
        with page.expect_download() as info:
            row.locator(".pai-Download").click()
        target = tmp_path / "model.joblib"
        info.value.save_as(target)
        import joblib

        model = joblib.load(target)
        assert model.C == 0.5
        stored = lab.api(
            "GET", f"pai/api/v1/workspaces/default/files/jobs/{job_id}/outputs/model.joblib"
        )
        assert stored.content == target.read_bytes()

        # Upload through the file input (same path as drag and drop), then delete it.
        page.locator("#pai-lab-sidebar .pai-Breadcrumbs-link", has_text="default").click()
        page.locator('#pai-lab-sidebar .pai-FileRow[data-path="jobs"]').wait_for()
        payload = os.urandom(300_000)
        page.locator("#pai-lab-sidebar .pai-UploadInput").set_input_files(
            files=[
                {"name": "upload.bin", "mimeType": "application/octet-stream", "buffer": payload}
            ]
        )
        uploaded = page.locator('#pai-lab-sidebar .pai-FileRow[data-path="upload.bin"]')
        uploaded.wait_for(timeout=30_000)
        got = lab.api("GET", "pai/api/v1/workspaces/default/files/upload.bin")
        assert got.content == payload
        # Drag and drop a file onto the panel: uploaded into the folder shown.
        data_transfer = page.evaluate_handle(
            """() => {
              const dt = new DataTransfer();
              dt.items.add(new File(['a,b\\n1,2\\n'], 'dropped.csv', {type: 'text/csv'}));
              return dt;
            }"""
        )
        artifacts = page.locator("#pai-lab-sidebar .pai-Artifacts")
        artifacts.dispatch_event("dragover", {"dataTransfer": data_transfer})
        artifacts.dispatch_event("drop", {"dataTransfer": data_transfer})
        page.locator('#pai-lab-sidebar .pai-FileRow[data-path="dropped.csv"]').wait_for(
            timeout=30_000
        )
        dropped = lab.api("GET", "pai/api/v1/workspaces/default/files/dropped.csv")
        assert dropped.content == b"a,b\n1,2\n"
        uploaded.get_by_role("button", name="Delete upload.bin").click()
        page.locator(".jp-Dialog .jp-mod-warn").click()
        uploaded.wait_for(state="detached", timeout=30_000)
        assert lab.api("GET", "pai/api/v1/workspaces/default/files/upload.bin").status_code == 404

        # Dark theme: the panel stays readable (screenshot for the README).
        page.locator("#pai-lab-sidebar .pai-SectionTabs button[data-section=jobs]").click()
        item.wait_for()
        set_theme(page, "JupyterLab Dark")
        page.screenshot(path=str(shots / "lab-jobs-dark.png"))
        set_theme(page, "JupyterLab Light")

        assert not [e for e in console_errors if "pai" in e.lower()], console_errors
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(lab.log()[-6000:])
        raise
    finally:
        context.close()


def test_sidebar_reports_errors_and_empty_states(lab, browser, tmp_path):
    """A missing folder and a failing request show messages in the panel, not silence."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"{lab.url}lab?token={lab.token}")
        page.wait_for_function("() => !!window.jupyterapp", timeout=60_000)
        open_sidebar(page)
        page.locator("#pai-lab-sidebar .pai-SectionTabs button[data-section=models]").click()
        # Models/deployments: either a list, an empty state, or the API's own error message.
        page.wait_for_function(
            """() => !!document.querySelector(
                 '#pai-lab-sidebar .pai-Models .pai-Empty, #pai-lab-sidebar .pai-Models .pai-Error,'
                 + ' #pai-lab-sidebar .pai-Models .pai-List')""",
            timeout=30_000,
        )
        err = page.locator("#pai-lab-sidebar .pai-Models .pai-Error")
        if err.count():
            assert err.inner_text().strip()
        # Keyboard: arrow keys move between the section tabs.
        page.locator("#pai-lab-sidebar .pai-SectionTabs button[data-section=models]").focus()
        page.keyboard.press("ArrowRight")
        assert (
            page.locator(
                "#pai-lab-sidebar .pai-SectionTabs button[aria-selected=true]"
            ).get_attribute("data-section")
            == "deployments"
        )
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        assert page.locator("#pai-lab-sidebar .pai-Artifacts").count() == 1
        # A folder that does not exist: the control plane's message is shown in the panel.
        page.evaluate(
            """() => window.jupyterapp.commands.execute('pai-lab:show-section',
                       {section: 'artifacts', target: 'no/such/folder'})"""
        )
        error = page.locator("#pai-lab-sidebar .pai-Artifacts .pai-Error")
        error.wait_for(timeout=30_000)
        message = error.inner_text()
        assert "no/such/folder" in message or "not found" in message.lower(), message
        assert "Traceback" not in message
        # Retry is offered and going back to the root clears the error.
        assert error.get_by_role("button", name="Retry").count() == 1
        page.locator("#pai-lab-sidebar .pai-Breadcrumbs-link", has_text="default").click()
        error.wait_for(state="detached", timeout=30_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        raise
    finally:
        context.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
