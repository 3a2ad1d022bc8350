"""Who is streaming: credentials, principals, short-lived tokens and the Origin policy (pure, no I/O).

Credentials a request may carry, first found wins:
1. ``Authorization: Bearer T`` (devices, scripts, OpenAI-style SDKs);
2. a WebSocket subprotocol ``voxserve.auth.T`` offered beside ``voxserve.v1.msgpack``/``json``
   (browsers cannot set headers; the server never echoes this one back);
3. a ``token`` query parameter (fallback; never logged: the server logs no URLs).

``T`` is an API key (``--api-key``, compared in constant time) or a JWT (``--jwt-secret`` HS256, or
``--jwt-public-key`` RS256/ES256; ``exp`` required, ``aud`` checked, ``sub`` is the principal).
Optional JWT claims narrow what the principal may do:

- ``pipelines``: list of pipeline names the token may use;
- ``max_stream_s``: longest stream in seconds;
- ``max_streams``: concurrent streams for this principal;
- ``audio_rate``: seconds of audio accepted per wall-clock second (raises or lowers the server default).

Tokens minted by ``POST /v1/tokens`` carry those claims, signed with ``--jwt-secret`` or, when none is
configured, with a random per-process key (then only this process accepts them).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .protocol.errors import ErrorCode, ProtocolError

AUTH_SUBPROTOCOL_PREFIX = "voxserve.auth."
MINT_ISSUER = "voxserve"


@dataclass(frozen=True)
class Principal:
    """The identity a stream runs as, with the limits its credential carries (None = server default).

    ``name`` is safe to log: an API key is named by a fingerprint, never by its value."""

    name: str
    kind: str                                   # "api_key", "jwt" or "anonymous"
    pipelines: frozenset[str] | None = None     # None: every loaded pipeline
    max_stream_s: float | None = None
    max_streams: int | None = None
    audio_rate: float | None = None             # audio seconds per wall second
    expires_at: float | None = None             # unix time (JWT exp)

    def allows(self, pipeline: str) -> bool:
        return self.pipelines is None or pipeline in self.pipelines


ANONYMOUS = Principal("anonymous", "anonymous")


def unauthorized(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAUTHORIZED, message)


def forbidden(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, message)


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for an API key (safe for logs and metrics)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credential:
    token: str
    source: str           # "header", "subprotocol" or "query"


def find_credential(headers: Mapping[str, str], subprotocols: Iterable[str], query: Mapping[str, str]) \
        -> Credential | None:
    """The credential a request carries (see the module docstring for the order)."""
    auth = headers.get("authorization", "")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return Credential(value.strip(), "header")
    for name in subprotocols:
        if name.startswith(AUTH_SUBPROTOCOL_PREFIX) and len(name) > len(AUTH_SUBPROTOCOL_PREFIX):
            return Credential(name[len(AUTH_SUBPROTOCOL_PREFIX):], "subprotocol")
    token = query.get("token")
    if token:
        return Credential(token, "query")
    return None


def _claim_number(claims: dict, name: str, integer: bool = False) -> float | int | None:
    v = claims.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or v != v:
        raise unauthorized(f"token claim {name!r} must be a positive number")
    return int(v) if integer else float(v)


@dataclass
class Authenticator:
    """Checks credentials and mints browser tokens. ``required`` is False only when no credential of any
    kind is configured (the server then binds loopback only, or was told ``--insecure-no-auth``)."""

    api_keys: tuple[str, ...] = ()
    jwt_secret: str | None = None
    jwt_public_key: str | None = None        # PEM text
    audience: str = "voxserve"
    leeway_s: float = 5.0
    _mint_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def __post_init__(self) -> None:
        self._key_digests = [hashlib.sha256(k.encode()).digest() for k in self.api_keys]

    @property
    def required(self) -> bool:
        return bool(self.api_keys or self.jwt_secret or self.jwt_public_key)

    def authenticate(self, credential: Credential | None, *, now: float | None = None) -> Principal:
        """The principal for ``credential``; raises ``unauthorized`` (typed) when it is missing or invalid."""
        if not self.required:
            return ANONYMOUS
        if credential is None:
            raise unauthorized("this server requires a credential: an API key or token as "
                               "'Authorization: Bearer ...', subprotocol 'voxserve.auth.<token>' or ?token=")
        key = self.api_key_principal(credential.token)
        if key is not None:
            return key
        if credential.token.count(".") == 2:
            return self._jwt(credential.token, now)
        raise unauthorized("invalid credential (unknown API key)")

    def api_key_principal(self, token: str) -> Principal | None:
        """The principal of a configured API key, or None. Constant time in the key's content."""
        digest = hashlib.sha256(token.encode()).digest()
        match = False
        for d in self._key_digests:
            match |= hmac.compare_digest(d, digest)
        return Principal(key_fingerprint(token), "api_key") if match else None

    def _jwt(self, token: str, now: float | None) -> Principal:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("invalid credential (malformed token)") from None
        alg = header.get("alg")
        if alg == "HS256":
            keys = [k for k in (self.jwt_secret, self._mint_secret) if k]
        elif alg in ("RS256", "ES256") and self.jwt_public_key:
            keys = [self.jwt_public_key]
        else:
            raise unauthorized(f"invalid credential (token algorithm {alg!r} not accepted)")
        last: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, leeway=self.leeway_s,
                                    options={"require": ["exp", "sub"]})
                break
            except jwt.ExpiredSignatureError:
                raise unauthorized("token expired") from None
            except jwt.ImmatureSignatureError:
                raise unauthorized("token not valid yet (nbf)") from None
            except jwt.InvalidAudienceError:
                raise unauthorized(f"token audience is not {self.audience!r}") from None
            except jwt.MissingRequiredClaimError as exc:
                raise unauthorized(f"token lacks the required claim {exc.claim!r}") from None
            except jwt.PyJWTError as exc:
                last = exc
        else:
            raise unauthorized(f"invalid credential (token rejected: {type(last).__name__})")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise unauthorized("token claim 'sub' must be a non-empty string")
        pipes = claims.get("pipelines")
        if pipes is not None and (not isinstance(pipes, list) or not all(isinstance(p, str) for p in pipes)):
            raise unauthorized("token claim 'pipelines' must be a list of names")
        return Principal(sub[:128], "jwt", frozenset(pipes) if pipes is not None else None,
                         _claim_number(claims, "max_stream_s"), _claim_number(claims, "max_streams", True),
                         _claim_number(claims, "audio_rate"), float(claims["exp"]))

    def mint(self, principal: Principal, ttl_s: float, pipelines: list[str] | None = None,
             *, now: float | None = None) -> str:
        """A short-lived HS256 token for ``principal`` (a browser page), narrowed to ``pipelines``."""
        import jwt

        now = time.time() if now is None else now
        claims: dict = {"sub": principal.name, "aud": self.audience, "iss": MINT_ISSUER, "iat": int(now),
                        "nbf": int(now) - 1, "exp": int(now + ttl_s), "jti": secrets.token_hex(8)}
        if pipelines is not None:
            claims["pipelines"] = sorted(pipelines)
        elif principal.pipelines is not None:
            claims["pipelines"] = sorted(principal.pipelines)
        for name in ("max_stream_s", "max_streams", "audio_rate"):
            if getattr(principal, name) is not None:
                claims[name] = getattr(principal, name)
        return jwt.encode(claims, self.jwt_secret or self._mint_secret, algorithm="HS256")


LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$")


@dataclass(frozen=True)
class OriginPolicy:
    """Which web pages may open streams and call the HTTP API.

    ``allowed``: exact origins (``https://app.example``) or ``*``. By default (empty list) the server's
    own origin and pages served from this machine (localhost, 127.x, [::1], any port) are allowed. A request
    without an Origin header is not from a browser page and is allowed (it still needs its credential)."""

    allowed: tuple[str, ...] = ()

    def permits(self, origin: str | None, host_header: str | None, scheme: str = "http") -> bool:
        if not origin:
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed or origin in self.allowed:
            return True
        if host_header:
            web = "https" if scheme in ("https", "wss") else "http"
            if origin == f"{web}://{host_header.lower()}":
                return True
        return not self.allowed and bool(LOCAL_ORIGIN.match(origin))

    def cors_origin(self, origin: str | None) -> bool:
        """Whether a cross-origin HTTP request from ``origin`` gets CORS headers."""
        return bool(origin) and self.permits(origin, None)


def parse_origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())
