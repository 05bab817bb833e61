"""A person's first visit, in a real headless Chromium: log in, pick a profile, get a lab.

Screenshots land in docs/images/ (hub-login.png, hub-spawn.png, hub-lab.png) for the docs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.hub]

CHROMIUM = os.environ.get("PAI_LAB_CHROMIUM", "/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
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


@pytest.fixture
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_login_pick_profile_land_in_jupyterlab(pai_hub, browser):
    hub = pai_hub
    IMAGES.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(120_000)  # a hang guard on a busy 2-core machine

    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", hub.admin_password())
    page.screenshot(path=str(IMAGES / "hub-login.png"))
    page.click("input[type=submit], button[type=submit]")

    # The profile form: CPU small / CPU large / GPU with their idle times.
    page.wait_for_selector("#spawn_form")
    assert page.locator(".pai-profile").count() >= 3
    assert "Stopped after 20 min idle." in page.inner_text("#spawn_form")
    page.check("#profile-cpu-small")
    page.screenshot(path=str(IMAGES / "hub-spawn.png"), full_page=True)
    page.click("#spawn_form button[type=submit]")

    # Spawn progress, then JupyterLab itself.
    page.wait_for_url("**/user/admin/lab**")
    page.wait_for_selector(".jp-LabShell")
    page.wait_for_selector(".jp-Launcher, .jp-DirListing", state="visible")
    page.wait_for_timeout(3000)  # let the launcher finish painting for the screenshot
    # pai-lab seeds the user's settings: no "fetch Jupyter news?" question.
    assert page.locator(".jp-toast-button", has_text="No").count() == 0
    page.screenshot(path=str(IMAGES / "hub-lab.png"))
    assert "/user/admin/lab" in page.url

    hub.stop_server("admin")
