"""Role rules of the control plane, on a real sqlite file (no server needed)."""

from __future__ import annotations

import pytest

from pai_lab.control.db import Database
from pai_lab.control.identity import Identity
from pai_lab.control.workspaces import Workspaces
from pai_lab.errors import BadRequest, Conflict, NotFound


@pytest.fixture
async def ws(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade()
    w = Workspaces(db, "developer")
    await w.ensure_default()
    yield w
    db.close()


async def test_hub_admin_user_creates_workspace_and_becomes_its_admin(ws):
    ann = Identity("ann", admin=True, kind="user")
    out = await ws.create(ann, {"name": "team-a", "quotas": {"max_gpus": 2}})
    assert out["quotas"]["max_gpus"] == 2
    assert await ws.members("team-a") == [
        {"user": "ann", "role": "admin", "added_at": (await ws.members("team-a"))[0]["added_at"]}
    ]
    with pytest.raises(Conflict):
        await ws.create(ann, {"name": "team-a"})


@pytest.mark.parametrize("name", ["Team", "-x", "a_b", "", "x" * 64, None])
async def test_bad_workspace_names(ws, name):
    with pytest.raises(BadRequest):
        await ws.create(Identity("root", admin=True, kind="service"), {"name": name})


async def test_roles_membership_and_job_tokens(ws):
    admin = Identity("root", admin=True, kind="service")
    await ws.create(admin, {"name": "team-b"})
    bob = Identity("bob")
    assert await ws.role_of(bob, "team-b") is None
    await ws.auto_join(bob)
    assert await ws.role_of(bob, "default") == "developer"
    await ws.set_member("team-b", "bob", "viewer")
    assert await ws.role_of(bob, "team-b") == "viewer"
    # A job acts as at least a developer in its own workspace, nowhere else.
    job = Identity("bob", kind="job", job_id="j1", workspace="team-b")
    assert await ws.role_of(job, "team-b") == "developer"
    assert await ws.role_of(job, "default") is None
    await ws.set_member("team-b", "bob", "operator")
    assert await ws.role_of(job, "team-b") == "operator"
    with pytest.raises(NotFound):
        await ws.role_of(bob, "nope")
    with pytest.raises(BadRequest):
        await ws.set_member("team-b", "bob", "owner")


async def test_last_admin_cannot_be_removed(ws):
    await ws.create(Identity("ann", admin=True, kind="user"), {"name": "solo"})
    with pytest.raises(Conflict, match="last admin"):
        await ws.remove_member("solo", "ann")
