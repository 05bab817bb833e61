"""jupyter_server extension: ``<base_url>pai/api/...`` (see ``app.py``).

Enabled by ``jupyter-config/jupyter_server_config.d/pai_lab.json`` as ``pai_lab.server``.
The module-level hooks also make ``jpserver_extensions = {"pai_lab": True}`` work, whose
extension point names this module without the app class.
"""

from __future__ import annotations

from .app import PaiLabExtension, hub_service_url

__all__ = ["PaiLabExtension", "hub_service_url"]


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "pai_lab.server", "app": PaiLabExtension}]


def _find(serverapp) -> PaiLabExtension | None:
    ext = serverapp.web_app.settings.get(PaiLabExtension.name)
    return ext if isinstance(ext, PaiLabExtension) else None


def _load_jupyter_server_extension(serverapp) -> PaiLabExtension:
    """Module-style loading (no app in the extension point): build the app ourselves.

    jupyter_server only calls ``stop_extension`` on apps it knows about, so here the
    embedded control plane's shutdown is chained onto the server's extension cleanup.
    """
    existing = _find(serverapp)
    if existing is not None:
        return existing
    ext = PaiLabExtension()
    ext._link_jupyter_server_extension(serverapp)
    ext.initialize()
    cleanup = serverapp.cleanup_extensions

    async def _cleanup_extensions() -> None:
        await ext.stop_extension()
        await cleanup()

    serverapp.cleanup_extensions = _cleanup_extensions
    return ext


async def _start_jupyter_server_extension(serverapp) -> None:
    ext = _find(serverapp)
    if ext is not None:
        await ext._start_jupyter_server_extension(serverapp)
