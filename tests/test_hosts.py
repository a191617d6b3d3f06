"""The Host allow-list: only the developer's own pages reach the dev server."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fh_utils.serve.hosts import host_allowed
from tests.conftest import write

APP = """
from starlette.responses import PlainTextResponse

async def app(scope, receive, send):
    await PlainTextResponse("{text}")(scope, receive, send)
"""


@pytest.mark.parametrize(("host", "allowed", "bound", "expected"), [
    ("localhost:5001", [], "127.0.0.1", True),
    ("app.localhost", [], "127.0.0.1", True),
    ("127.0.0.1:5001", [], "127.0.0.1", True),
    ("[::1]:5001", [], "127.0.0.1", True),
    ("192.168.1.20:5001", [], "0.0.0.0", True),  # an address is not a rebinding attack
    ("attacker.example", [], "127.0.0.1", False),
    ("attacker.example:5001", [], "127.0.0.1", False),
    ("devbox.lan:5001", [], "devbox.lan", True),  # the name it was bound to
    ("tunnel.example.com", ["tunnel.example.com"], "127.0.0.1", True),
    ("a.example.com", [".example.com"], "127.0.0.1", True),
    ("example.com", [".example.com"], "127.0.0.1", True),
    ("badexample.com", [".example.com"], "127.0.0.1", False),
    ("anything.example", ["*"], "127.0.0.1", True),
    (None, [], "127.0.0.1", True),  # HTTP/1.0, no Host: not a browser
])
def test_host_allowed(host, allowed, bound, expected):
    assert host_allowed(host, allowed, bound) is expected


def test_unknown_host_is_refused_with_403_and_one_log_line(tmp_path, serve):
    write(tmp_path / "app.py", "raise RuntimeError('secret source line')\n")
    server = serve("app.py", "--live")
    assert "secret source line" in server.get().text  # the error page, for localhost
    for _ in range(2):
        response = server.client.get("/", headers={"Host": "attacker.example"})
        assert response.status_code == 403
        assert "secret" not in response.text
        assert "--allowed-host attacker.example" in response.text
    with pytest.raises(InvalidStatus) as refused:  # the live socket too
        connect(f"ws://127.0.0.1:{server.port}/__fh_utils_live__",
                additional_headers={"Host": "attacker.example",
                                    "Origin": "http://attacker.example"}, open_timeout=5)
    assert refused.value.response.status_code == 403
    assert server.log.count("Refused a request for host 'attacker.example'") == 1


def test_allowed_host_option_and_environment_variable(tmp_path, serve):
    write(tmp_path / "app.py", APP.format(text="hello"))
    server = serve("app.py", "--allowed-host", ".example.com",
                   env={"FH_UTILS_ALLOWED_HOST": "ignored.test"})  # the flag wins
    assert server.client.get("/", headers={"Host": "dev.example.com"}).text == "hello"
    assert server.client.get("/", headers={"Host": "ignored.test"}).status_code == 403
    other = serve("app.py", env={"FH_UTILS_ALLOWED_HOST": "tunnel.test"})
    assert other.client.get("/", headers={"Host": "tunnel.test:443"}).text == "hello"
    assert httpx.get(other.url, headers={"Host": "nope.test"}).status_code == 403
