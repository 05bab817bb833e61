"""The control plane on PostgreSQL: schema created at start, jobs survive a restart."""

from __future__ import annotations


def test_control_plane_on_postgres(control_factory, postgres_url, tmp_path):
    cp = control_factory(args=[f"--db-url={postgres_url}"])
    c = cp.client()
    job = c.wait_job(c.submit_job({"source": {"script": "pg.py", "content": "print('on postgres')"}})["id"])
    assert job["state"] == "succeeded"
    c.create_workspace("pg-team")
    cp.stop()
    cp.start()  # the schema exists now: start must migrate/accept it, not fail
    names = {w["name"] for w in c.workspaces()}
    assert {"default", "pg-team"} <= names
    assert c.get_job(job["id"])["state"] == "succeeded"
