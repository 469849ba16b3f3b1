"""The Host header must name this server (ALLOWED_HOSTS): a page a browser loaded from elsewhere can make it
send requests to 127.0.0.1 under a name its attacker controls (DNS rebinding), and a server without an API
key would answer them. Checked before anything else runs; refused with a 400 in OpenAI's shape. Pure ASGI."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from embedserver.api.error_handlers import send_error

# ALLOWED_HOSTS left empty with a loopback HOST: only names that mean this machine.
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]


def allowed_hosts(setting: list[str], bind_host: str) -> list[str]:
    """The names a request's Host may carry: the setting, else loopback names for a loopback bind address
    and any name for a public one (containers and load balancers send names of their own)."""
    if setting:
        return [name.lower() for name in setting]
    loopback = bind_host in ("127.0.0.1", "::1", "localhost") or bind_host.startswith("127.")
    return LOOPBACK_NAMES if loopback else ["*"]


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    value = header.decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AllowedHosts:
    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.any = "*" in hosts
        self.exact = {h for h in hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # "*.example.com" -> ".example.com"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((value for name, value in scope["headers"] if name == b"host"), b"")
        name = host_name(header)
        if name in self.exact or (self.suffixes and name.endswith(self.suffixes)):
            await self.app(scope, receive, send)
            return
        shown = name if len(name) <= 100 else name[:100] + "..."
        await send_error(send, 400, f"host {shown!r} is not served here (ALLOWED_HOSTS)", code="invalid_host")
