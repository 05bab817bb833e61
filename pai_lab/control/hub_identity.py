"""Hub identity for the control plane running as the JupyterHub service ``pai``.

Who calls the control plane under a hub, and how they are recognised:

* browsers: the service's own OAuth cookie, obtained once through the hub
  (``/services/pai/login?next=...`` starts the round trip, ``/services/pai/oauth_callback``
  finishes it); cookie-authenticated writes need the ``X-XSRFToken`` header;
* user servers, the CLI, notebooks: ``Authorization: token|Bearer <hub API token>`` (the
  single-user server's own token carries ``access:services!service=pai``);
* training jobs: the control plane's own job tokens (``pjt_...``), user tokens (``put_...``)
  and its admin token keep working, looked up in its database as in stand-alone mode.

Token lookups are cached for ``cache_seconds`` (HubAuth's cache), so a busy sidebar does
not ask the hub on every request; the admin flag and groups come from the hub's user model
(read with the service's own ``read:users`` scope when the caller's token cannot see them).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.web import HTTPError, RequestHandler
from traitlets import Integer

from ..errors import BackendUnavailable
from .auth import JOB_TOKEN_PREFIX, USER_TOKEN_PREFIX, bearer_token, lookup_token
from .db import hash_token
from .identity import Identity, IdentityProvider

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


COOKIE_SECRET_FILE = "hub-service-cookie-secret"


def load_cookie_secret(data_dir: str | None) -> bytes:
    """The key that signs the service's OAuth cookie, kept (0600) so cookies survive restarts."""
    if not data_dir:
        return secrets.token_bytes(32)
    path = Path(data_dir) / COOKIE_SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    secret = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    return secret


class _CookieSecretMixin:
    """Signed cookies need ``cookie_secret`` in the tornado settings; the control plane's
    application is built elsewhere, so the provider supplies it on first use."""

    def prepare(self):
        provider = self.settings["pai_control"].identity_provider
        provider.ensure_cookie_secret(self)
        return super().prepare()


class HubCallbackHandler(_CookieSecretMixin, HubOAuthCallbackHandler):
    """``<prefix>/oauth_callback``: finish the OAuth round trip and set the service cookie."""


class HubLoginHandler(_CookieSecretMixin, HubOAuthenticated, RequestHandler):
    """``GET <prefix>/login?next=<path>``: log a browser in through the hub, then go on."""

    async def get(self) -> None:
        base = self.hub_auth.base_url
        next_url = self.get_argument("next", base)
        parsed = urlparse(next_url)
        if parsed.scheme or parsed.netloc or not parsed.path.startswith(base):
            next_url = base  # never redirect off-site or outside the service
        user = await self.hub_auth.get_user(self, sync=False)
        if user:
            self.redirect(next_url)
        else:
            self.redirect(self.get_login_url())


class HubIdentityProvider(IdentityProvider):
    """Identify callers with JupyterHub (see module docstring)."""

    cache_seconds = Integer(
        60,
        help="How long a hub token's identity is cached (seconds); revocations take this long to apply.",
    ).tag(config=True)

    def __init__(self, db=None, **kwargs):
        super().__init__(**kwargs)
        self.db = db
        # One HubOAuth per process: the OAuth callback handler uses the same instance.
        self.hub_auth = HubOAuth.instance(cache_max_age=self.cache_seconds)
        self._admin_token_hash = self._read_admin_token_hash()
        self._models: dict[str, tuple[float, dict]] = {}
        self._cookie_secret = load_cookie_secret(getattr(self.parent, "data_dir", None))

    def ensure_cookie_secret(self, handler: RequestHandler) -> None:
        handler.application.settings.setdefault("cookie_secret", self._cookie_secret)

    def _read_admin_token_hash(self) -> str | None:
        data_dir = getattr(self.parent, "data_dir", None)
        if not data_dir:
            return None
        try:
            token = (Path(data_dir) / "admin-token").read_text().strip()
        except OSError:
            return None
        return hash_token(token) if token else None

    # -- IdentityProvider API ---------------------------------------------------------
    async def identify(self, handler: RequestHandler) -> Identity | None:
        self.ensure_cookie_secret(handler)
        token = bearer_token(handler)
        if token and self.db is not None:
            own = await self._own_token(token)
            if own is not None:
                return own
        try:
            model = await self.hub_auth.get_user(handler, sync=False)
        except Exception as e:
            # Hub down or answering 5xx: not the caller's fault, so 503 rather than 401.
            self.log.error("cannot ask the hub who is calling: %s", e)
            raise BackendUnavailable(
                "cannot reach JupyterHub to check your credentials; try again shortly"
            ) from None
        if not model:
            return None
        cookie_auth = not getattr(handler, "_token_authenticated", False)
        if cookie_auth and handler.request.method not in SAFE_METHODS:
            try:
                self.hub_auth.check_xsrf_cookie(handler)
            except HTTPError as e:
                self.log.info("cookie request without a valid XSRF token: %s", e.log_message)
                return None
        scopes = self.hub_auth.access_scopes
        if scopes and not self.hub_auth.check_scopes(scopes, model):
            self.log.info("hub %s %s lacks %s", model.get("kind"), model.get("name"), scopes)
            return None
        if model.get("kind", "user") == "service":
            return Identity(name=f"service:{model['name']}", kind="service")
        full = await self._user_model(model)
        return Identity(
            name=model["name"],
            admin=bool(full.get("admin")),
            groups=sorted(full.get("groups") or []),
            kind="user",
        )

    def extra_handlers(self, base_url: str) -> list:
        return [
            (url_path_join(base_url, "oauth_callback"), HubCallbackHandler),
            (url_path_join(base_url, "login"), HubLoginHandler),
        ]

    def login_url(self, handler: RequestHandler) -> str | None:
        """Browsers that got a 401 start the hub OAuth round trip here."""
        return (
            url_path_join(self.hub_auth.base_url, "login")
            + "?next="
            + quote(handler.request.uri or self.hub_auth.base_url, safe="")
        )

    # -- helpers -------------------------------------------------------------------
    async def _own_token(self, token: str) -> Identity | None:
        """Control-plane tokens (job, user, admin) work under the hub too."""
        h = hash_token(token)
        if self._admin_token_hash and hmac.compare_digest(h, self._admin_token_hash):
            return Identity(name="admin", admin=True, kind="service")
        if token.startswith((JOB_TOKEN_PREFIX, USER_TOKEN_PREFIX)):
            return await lookup_token(self.db, h)
        return None

    async def _user_model(self, model: dict) -> dict:
        """The hub's full user model (admin flag, groups), cached like tokens are."""
        if "admin" in model and "groups" in model:
            return model
        name = model["name"]
        cached = self._models.get(name)
        now = time.monotonic()
        if cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        url = url_path_join(self.hub_auth.api_url, "users", quote(name, safe=""))
        try:
            resp = await AsyncHTTPClient().fetch(
                url,
                headers={"Authorization": f"token {self.hub_auth.api_token}"},
                request_timeout=10,
            )
            full = json.loads(resp.body)
        except (HTTPClientError, OSError, ValueError) as e:
            self.log.warning("could not read hub user %s: %s", name, e)
            full = {}
        merged = {**full, **{k: v for k, v in model.items() if v is not None}}
        self._models[name] = (now, merged)
        return merged
