"""Local accounts: NativeAuthenticator with a safe first start.

Why a subclass: a fresh hub must be usable and safe at once. On first start we create the
admin account with a generated password, print it once, and keep it in
``<data_dir>/admin-password`` (mode 0600) until the admin changes it; sign-up stays open
but every new account waits for an admin's approval, and there is no password-less login.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Unicode, default

PASSWORD_FILE = "admin-password"


class PaiLoginHandler(NativeLoginHandler):
    """NativeAuthenticator 1.3's login form, fixed for JupyterHub 6.

    JupyterHub 6 dropped ``handler.statsd`` (native's ``post`` crashes with a 500 on every
    login) and renders error pages with ``sync=True`` (native's ``_render`` rejects it).
    Same behaviour otherwise; a failed login answers 403 like JupyterHub's own form.
    """

    def _render(self, login_error=None, username=None, sync=False, **_ignored):
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
        )

    async def post(self):
        data = {
            arg: self.get_argument(arg, strip=arg == "username")
            for arg in self.request.body_arguments
            if arg != "_xsrf"
        }
        data.setdefault("username", "")
        data.setdefault("password", "")
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        error = "Invalid username or password."
        username = data["username"]
        info = self.authenticator.get_user(username) if username else None
        if info is not None and data["password"]:
            if info.is_valid_password(data["password"]) and not info.is_authorized:
                error = f"User {username} has not been authorized by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username[:64]))


class PaiNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator that bootstraps the first admin account (see module docstring)."""

    admin_password_file = Unicode(
        help="Where the generated first admin password is kept (0600) until it is changed.",
    ).tag(config=True)

    @default("admin_password_file")
    def _default_password_file(self) -> str:
        data_dir = os.environ.get("PAI_LAB_DATA_DIR") or str(Path("~/.pai-lab").expanduser())
        return str(Path(data_dir) / PASSWORD_FILE)

    first_admin = Unicode(
        "admin",
        help="Name of the admin account created with a generated password on first start.",
    ).tag(config=True)

    # Approval *is* the allow list: authenticate() only returns approved accounts.
    @default("allow_all")
    def _default_allow_all(self) -> bool:
        return True

    @default("open_signup")
    def _default_open_signup(self) -> bool:
        return False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self.bootstrap_admins()
        except Exception:  # never stop the hub for this; say what went wrong
            self.log.exception("could not create the first admin account")

    def bootstrap_admins(self) -> str | None:
        """Create the first admin account if it has no local password yet.

        Returns the generated password (None when nothing was created). The password is
        printed once and written to ``admin_password_file`` with mode 0600.
        """
        name = self.first_admin
        if not name or self.user_exists(name):
            return None
        password = secrets.token_urlsafe(15)
        name = self.normalize_username(name)
        if not self.validate_username(name):
            self.log.error("cannot create admin account %r: invalid user name", name)
            return None
        # Not create_user(): that refuses when sign-up is disabled.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
        self.db.commit()
        path = Path(self.admin_password_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chmod(path, 0o600)
        banner = (
            f"\n{'=' * 72}\n  pai-lab: created hub account {name!r} with password:\n\n"
            f"      {password}\n\n  (kept in {path} until you change it at /hub/change-password)\n"
            f"{'=' * 72}\n"
        )
        print(banner, flush=True)
        self.log.info("created admin account %r; password in %s", name, path)
        return password

    def get_handlers(self, app):
        return [
            (path, PaiLoginHandler if handler is NativeLoginHandler else handler)
            for path, handler in super().get_handlers(app)
        ]

    def change_password(self, username: str, new_password: str):
        ok = super().change_password(username, new_password)
        if ok and username in self.admin_users:
            # The generated password is no longer valid: don't leave a stale copy around.
            try:
                Path(self.admin_password_file).unlink()
            except FileNotFoundError:
                pass
        return ok
