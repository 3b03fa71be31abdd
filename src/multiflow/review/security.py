"""Who may talk to the review app, and how: host names, origins and the session token.

A server on a local port is reachable by every page open in the user's browser and by every local
user. Three rules keep them out (each checked by :class:`Guard`):

1. **Host** (every request): the ``Host`` header must name this server as it was bound
   (:func:`allowed_hosts`): a DNS-rebinding page that resolves its own name to 127.0.0.1 sends its
   own name and is refused, so it can neither read pages nor post.
2. **Origin** (every request that changes state, i.e. not ``GET``/``HEAD``/``OPTIONS``): an
   ``Origin`` header, or without one a ``Referer``, must be this server (``http://<allowed host>``);
   a request that carries neither (a script, not a browser) still needs the token.
3. **Token** (every request that changes state): a random token made when the app starts
   (:func:`secrets.token_urlsafe`), embedded in the served pages (``<meta name="review-token">``)
   and sent back by the page's script in the ``X-Review-Token`` header (the "try a part" form,
   a plain HTML form, sends it as the hidden field ``token``); compared with
   :func:`hmac.compare_digest`. Another origin cannot read the pages, so it cannot learn the token.

JSON endpoints also take only ``Content-Type: application/json`` (:func:`require_json`): a
cross-site ``<form>`` can send ``text/plain``, ``application/x-www-form-urlencoded`` or
``multipart/form-data`` without a CORS preflight, never ``application/json``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TOKEN_HEADER = "X-Review-Token"
TOKEN_FIELD = "token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("0.0.0.0", "::", "")


class Refused(Exception):
    """A request refused by the guard: ``status`` (400, 403 or 415) and a message saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _host_form(name: str) -> str:
    """A host as it appears in a ``Host`` header: IPv6 addresses in brackets, names lower-case."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        return name
    try:
        if ipaddress.ip_address(name).version == 6:
            return f"[{name}]"
    except ValueError:
        pass
    return name


def allowed_hosts(host: str, port: int, extra: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """The ``Host`` header values (``name:port``) under which a server bound to ``host:port`` is reached.

    The bind address itself; for a loopback bind also ``localhost``, ``127.0.0.1`` and ``[::1]``;
    for a wildcard bind (``0.0.0.0``, ``::``) the loopback names, this machine's host name and its
    fully qualified name. ``extra``: further names (``multiflow review --allow-host``), e.g. the
    name other machines use to reach a wildcard bind.
    """
    names = {_host_form(host)} if host not in WILDCARD else set()
    loopback = host in WILDCARD or host.lower() == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            pass
    if loopback:
        names |= set(LOOPBACK_NAMES)
    if host in WILDCARD:
        names |= {_host_form(socket.gethostname()), _host_form(socket.getfqdn())}
    names |= {_host_form(n) for n in extra if n.strip()}
    return frozenset(f"{n}:{int(port)}" for n in names if n)


@dataclass(frozen=True)
class Guard:
    """The request checks of one running review app (module docstring).

    ``hosts``: the allowed ``Host`` values (:func:`allowed_hosts`); ``token``: the session token
    (a fresh random one by default).
    """

    hosts: frozenset[str]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{h}" for h in self.hosts)

    def check_host(self, host: str | None) -> None:
        """:class:`Refused` (400) unless ``host`` is one of :attr:`hosts`."""
        if host is None or host.strip().lower() not in self.hosts:
            raise Refused(400, f"Host header {host!r} is not this review server (allowed: "
                               f"{', '.join(sorted(self.hosts))}; `multiflow review --allow-host` adds names)")

    def check_origin(self, origin: str | None, referer: str | None) -> None:
        """:class:`Refused` (403) when ``Origin`` (or, without one, ``Referer``) names another site."""
        if origin is not None:
            if origin.strip().lower() not in self.origins:
                raise Refused(403, f"cross-origin request refused (Origin {origin!r} is not this review server)")
            return
        if referer is not None:
            parts = urlsplit(referer.strip())
            if f"{parts.scheme}://{parts.netloc}".lower() not in self.origins:
                raise Refused(403, "cross-origin request refused (Referer is not this review server)")

    def check_token(self, sent: str | None) -> None:
        """:class:`Refused` (403) unless ``sent`` is the session token (constant-time comparison)."""
        if not sent:
            raise Refused(403, f"missing review token (the page sends it in the {TOKEN_HEADER} header; "
                               "reload the page)")
        if not hmac.compare_digest(sent.encode("utf-8", "replace"), self.token.encode("ascii")):
            raise Refused(403, "wrong review token (the server was restarted? reload the page)")

    def check_request(self, method: str, headers) -> None:
        """Host for every request; origin for every state-changing one (token: see the routes)."""
        self.check_host(headers.get("host"))
        if method.upper() not in SAFE_METHODS:
            self.check_origin(headers.get("origin"), headers.get("referer"))


def require_json(content_type: str | None) -> None:
    """:class:`Refused` (415) unless the media type is ``application/json`` (parameters such as a
    charset are allowed)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Refused(415, f"send JSON with Content-Type: application/json (got {content_type or 'none'!r})")
