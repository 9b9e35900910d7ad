"""Attacks on the daemon's HTTP layer by an outsider: slow and hostile clients, deep JSON, forged ids and hosts, logs.

Each test drives a real `exai serve` with raw sockets or raw requests, as an attacker would.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE

from exai.config import MAX_REQUEST_BODY_BYTES
from exai.observability.context import SAFE_ID
from exai.security.auth import issue_token
from exai.server.request_body import json_values
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import wait_until_sync
from tests.test_http_attacks import INITIALIZE, MCP_HEADERS, post, ready_session, sse_result

Daemon = Callable[..., Proc]
TEST_CEILING = 60  # seconds a socket waits for the daemon's answer; the old daemon never answered


def raw_connection(proc: Proc, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=TEST_CEILING)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the daemon writes until it closes the connection (a timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def trickles_until_closed(sock: socket.socket) -> bool:
    """Send a byte of body every 0.2 s, as a slowloris client does; True once the daemon closes the connection."""
    deadline = time.monotonic() + TEST_CEILING
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"x")
        except OSError:
            return True
        time.sleep(0.2)
    return False


def request_head(proc: Proc, method: str, path: str, *lines: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{proc.port}", *lines, "", ""]).encode()


def test_a_client_that_never_finishes_its_headers_is_cut_off(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_HTTP_HEADER_TIMEOUT_SECONDS="1")
    silent = raw_connection(proc)
    partial = raw_connection(proc, f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{proc.port}\r\nx-slow: 1".encode())
    for sock in (silent, partial):
        with sock:
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"EXAI_HTTP_HEADER_TIMEOUT_SECONDS" in answer
    kept_alive = raw_connection(proc, request_head(proc, "GET", "/healthz"))
    with kept_alive:
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200 ")
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request on the connection stalls too
        # (the first answer's body may still be on its way when the 408 follows it)
        assert b"HTTP/1.1 408 " in read_until_closed(kept_alive)
    assert httpx2.get(f"{proc.url}/healthz").status_code == 200


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and a body of `content-length` bytes) from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the daemon closed the connection instead of answering: {received[:200]!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the daemon closed the connection in the middle of an answer"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_idle_kept_alive_connection_outlives_the_clients_own_idle_limit(daemon: Daemon, sim: SimControl) -> None:
    """httpx (the MCP SDK's HTTP client) reuses a connection idle for less than its `keepalive_expiry` (5 s) by its
    own clock, which starts when it has read an answer. uvicorn's default closed idle connections after 5 s counted
    from when the daemon wrote the answer: on a busy machine the client then sent its next call on a connection the
    daemon was closing, and lost it to a connection reset (3 calls in the 2.5-hour soak). The daemon must keep an
    idle connection open past the client's limit; the header clock must not cut it either."""
    proc = daemon(EXAI_HTTP_HEADER_TIMEOUT_SECONDS="1")
    client_idle_limit = httpx2.Limits().keepalive_expiry
    assert client_idle_limit is not None
    with raw_connection(proc, request_head(proc, "GET", "/healthz")) as kept_alive:
        assert read_response(kept_alive).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        # the property is an interval: idle past the client's limit (and past the header timeout), then reused
        wait_until_sync(lambda: time.monotonic() > answered + client_idle_limit + 1, "the client's idle limit to pass")
        kept_alive.sendall(request_head(proc, "GET", "/healthz"))
        assert read_response(kept_alive).startswith(b"HTTP/1.1 200 ")


def test_a_body_that_never_arrives_is_answered_408_and_logged_in_one_line(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_HTTP_BODY_TIMEOUT_SECONDS="1")
    head = request_head(proc, "POST", "/mcp", *(f"{k}: {v}" for k, v in MCP_HEADERS.items()), "content-length: 1000")
    with raw_connection(proc, head + b'{"jsonrpc": "2.0", ') as stalled:
        answer = read_until_closed(stalled)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"EXAI_HTTP_BODY_TIMEOUT_SECONDS" in answer
    unread = request_head(proc, "POST", "/healthz", "content-length: 100000")  # answered 405, the body unread
    with raw_connection(proc, unread) as trickling:
        assert trickling.recv(65536).startswith(b"HTTP/1.1 405 ")
        assert trickles_until_closed(trickling), "a body trickling in after the answer holds the connection"
    raw_connection(proc, head + b'{"jsonrpc": "2.0", ').close()  # a client that goes away in the middle of its body
    wait_until_sync(lambda: proc.logs().count("request body incomplete") >= 2, "both incomplete bodies to be logged")
    logs = proc.logs()
    assert "Traceback" not in logs and "ClientDisconnect" not in logs, logs[-3000:]
    incomplete = [json.loads(line) for line in logs.splitlines() if "request body incomplete" in line]
    assert all(record["level"] == "info" for record in incomplete), incomplete
    answered = httpx2.post(f"{proc.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=MCP_HEADERS)
    assert answered.status_code != 408, "a prompt client is not affected"


def test_connections_beyond_the_cap_are_answered_503(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(
        EXAI_MAX_CONNECTIONS="4",
        EXAI_MAX_CONNECTIONS_PER_ADDRESS="4",  # the whole cap to one address: the global cap alone
        EXAI_MAX_CALLS_IN_FLIGHT="2",
        EXAI_MAX_CALLS_WAITING="1",
    )
    held = [raw_connection(proc) for _ in range(4)]
    try:
        wait_until_sync(lambda: httpx2.get(f"{proc.url}/healthz").status_code == 503, "the connection cap was reached")
        refused = httpx2.get(f"{proc.url}/healthz")
        assert "EXAI_MAX_CONNECTIONS" in refused.text and refused.headers["retry-after"]
    finally:
        for sock in held:
            sock.close()
    wait_until_sync(lambda: httpx2.get(f"{proc.url}/healthz").status_code == 200, "closed connections to free the cap")


def test_one_address_cannot_take_every_connection(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(
        EXAI_MAX_CONNECTIONS="12",
        EXAI_MAX_CONNECTIONS_PER_ADDRESS="6",
        EXAI_MAX_CALLS_IN_FLIGHT="4",
        EXAI_MAX_CALLS_WAITING="2",
    )
    stalled = f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{proc.port}\r\n".encode()  # never finished
    attacker = [
        socket.create_connection(("127.0.0.1", proc.port), timeout=TEST_CEILING, source_address=("127.0.0.2", 0))
        for _ in range(12)
    ]
    try:
        # The excess is answered at once, before the client sends a byte (written after that, a request the daemon
        # never reads would turn its close into a reset that swallows the answer).
        refused = [read_until_closed(sock) for sock in attacker[6:]]
        assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in refused), refused[0][:200]
        assert b"EXAI_MAX_CONNECTIONS_PER_ADDRESS" in refused[0]
        for sock in attacker[:6]:
            sock.sendall(stalled)  # the share is held with requests that never finish
        victim = httpx2.get(f"{proc.url}/healthz")  # from 127.0.0.1: the attacker left room for other addresses
        assert victim.status_code == 200, victim.text
        opened = post(proc, INITIALIZE)
        assert opened.status_code == 200, opened.text
    finally:
        for sock in attacker:
            sock.close()
    wait_until_sync(
        lambda: socket_answer(proc, ("127.0.0.2", 0)).startswith(b"HTTP/1.1 200 "), "the address's share to free up"
    )


def socket_answer(proc: Proc, source: tuple[str, int]) -> bytes:
    with socket.create_connection(("127.0.0.1", proc.port), timeout=TEST_CEILING, source_address=source) as sock:
        sock.sendall(request_head(proc, "GET", "/healthz", "connection: close"))
        return read_until_closed(sock)


def test_the_default_address_share_leaves_room_for_others_and_for_every_admitted_call() -> None:
    from exai.config import ADDRESS_RESERVE, Settings

    default = Settings()
    assert default.max_connections_per_address == default.max_connections - ADDRESS_RESERVE
    assert default.max_connections_per_address >= default.max_calls_in_flight + default.max_calls_waiting
    tight = Settings(max_calls_in_flight=8, max_calls_waiting=2, max_connections=20)
    assert tight.max_connections_per_address == 10, "never below what admission control takes (a proxy's share)"
    above_the_cap = Settings(
        max_calls_in_flight=8, max_calls_waiting=2, max_connections=20, max_connections_per_address=50
    )
    assert above_the_cap.max_connections_per_address == 20


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_parse_error_not_a_crash(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    session = ready_session(proc)
    in_arguments = (
        '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", '
        f'"params": {{"name": "chat", "arguments": {{"prompt": "hi", "files": {nested(50_000)}}}}}}}'
    )
    for body, status in ((nested(50_000), 413), (in_arguments, 413), (nested(1_500), 400)):
        for headers in ({**MCP_HEADERS, **session}, MCP_HEADERS):
            answer = httpx2.post(f"{proc.url}/mcp", content=body, headers=headers, timeout=60)
            assert answer.status_code == status, (answer.status_code, answer.text[:300])
            # 50,000 levels are 50,000 values: refused before any parser sees them; 1,500 levels: a parse error
            assert answer.json()["error"]["code"] == (-32600 if status == 413 else -32700), answer.text[:300]
    ping = post(proc, {"jsonrpc": "2.0", "id": 4, "method": "ping"}, session)
    assert ping.status_code == 200 and sse_result(ping)["id"] == 4
    logs = proc.logs()
    assert "RecursionError" not in logs and "Traceback" not in logs, logs[-3000:]


def test_an_unsafe_request_id_is_never_echoed(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    evil = "evil id [bold] <script>"
    probe = httpx2.get(f"{proc.url}/healthz", headers={"x-request-id": evil})
    assert SAFE_ID.fullmatch(probe.headers["x-request-id"]), probe.headers["x-request-id"]
    session = ready_session(proc)
    call = {"prompt": "which id?", "model": "sim-fast"}
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "chat", "arguments": call}}
    answered = post(proc, body, {**session, "x-request-id": evil})
    used = answered.headers["x-request-id"]
    assert SAFE_ID.fullmatch(used) and used != evil
    assert "error" not in sse_result(answered)
    assert sim.requests(1)[0]["headers"].get("x-request-id") == used, "the call used the id the response names"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = httpx2.get(f"{proc.url}/healthz", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert traced.headers["x-request-id"] == trace_id


def test_the_host_check_wants_an_exact_name_and_a_numeric_port(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_ALLOWED_HOSTS="team-host")
    for host in ("localhost:1.evil.example", f"127.0.0.1:{proc.port}.evil.example", "localhost:", "team-host:80x"):
        assert httpx2.get(f"{proc.url}/healthz", headers={"host": host}).status_code == 421, host
    for origin in ("http://localhost:1.evil.example", "http://team-host:8080@evil.example"):
        assert httpx2.get(f"{proc.url}/healthz", headers={"origin": origin}).status_code == 403, origin
    for host in (f"localhost:{proc.port}", "[::1]:8765", "team-host:443"):
        assert httpx2.get(f"{proc.url}/healthz", headers={"host": host}).status_code == 200, host
    assert httpx2.get(f"{proc.url}/healthz", headers={"origin": "https://team-host:8443"}).status_code == 200


def test_an_ipv6_address_the_daemon_answers_to_is_matched_in_brackets(daemon: Daemon, sim: SimControl) -> None:
    """A Host header carries an IPv6 address in brackets; the pattern was `fd00::7:*`, so a daemon on an IPv6
    address (or named one in EXAI_ALLOWED_HOSTS) refused requests to its own URL with 421 (a review's finding)."""
    proc = daemon(EXAI_ALLOWED_HOSTS="fd00::7,[fd00::8]")  # /dashboard: not a probe path, answered by address
    for host in ("[fd00::7]:8765", "[fd00::8]:80"):
        assert httpx2.get(f"{proc.url}/dashboard", headers={"host": host}).status_code == 200, host
    for host in ("[fd00::9]:8765", "fd00::7:8765"):
        assert httpx2.get(f"{proc.url}/dashboard", headers={"host": host}).status_code == 421, host


def test_debug_logs_hold_no_request_or_response_bodies(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_LOG_LEVEL="DEBUG")
    session = ready_session(proc)
    call = {"prompt": "the plan is marker-7d41c2", "model": "sim-fast"}
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "chat", "arguments": call}}
    answered = post(proc, body, session)
    assert "marker-7d41c2" in json.dumps(sse_result(answered))
    logs = proc.logs()
    assert "marker-7d41c2" not in logs, [line[:300] for line in logs.splitlines() if "marker-7d41c2" in line]


def test_one_tenant_cannot_fill_the_memory_with_large_request_bodies(daemon: Daemon, sim: SimControl) -> None:
    """A body's bytes count as they arrive and until its request is answered (a 4 MiB one held about 19 MB of
    memory, and no per-call limit counts a ping): one tenant's bytes in flight past its share are refused 429,
    another tenant is still served, and connections that only announce large bodies hold nothing."""
    share = 4 * 2**20
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_BODY_BYTES_PER_TENANT=str(share))
    mallory, alice = (issue_token(TEST_JWT_SECRET, who, ["exai:tools"], 600) for who in ("mallory", "alice"))
    large = {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"pad": "x" * (2 * 2**20)}}

    def refused(token: str) -> httpx2.Response | None:
        """The large body's answer when the share refused it (a made-up session: no new session is counted)."""
        answer = post(proc, large, {"authorization": f"Bearer {token}", "mcp-session-id": "none-such"})
        return answer if "EXAI_BODY_BYTES_PER_TENANT" in answer.text else None

    lines = [*(f"{k}: {v}" for k, v in MCP_HEADERS.items()), f"authorization: Bearer {mallory}"]
    announced = request_head(proc, "POST", "/mcp", *lines, f"content-length: {4 * 2**20}")
    idle = [raw_connection(proc, announced) for _ in range(4)]  # 16 MiB announced, nothing sent
    try:
        assert refused(mallory) is None, "announced bytes that never came hold nothing"
        sent = announced + b'{"jsonrpc": "2.0", "params": "' + b"x" * (3 * 2**20)
        with raw_connection(proc, sent) as held:  # 3 MiB of a body still arriving
            wait_until_sync(lambda: refused(mallory) is not None, "a second large body to be refused")
            answer = refused(mallory)
            assert answer is not None and answer.status_code == 429 and answer.headers["retry-after"] == "1", answer
            assert refused(alice) is None, "another tenant's share is its own"
            held.close()
            wait_until_sync(lambda: refused(mallory) is None, "the share to be given back once the request ended")
    finally:
        for sock in idle:
            sock.close()


def test_what_a_body_parses_into_is_bounded_before_it_is_parsed(daemon: Daemon, sim: SimControl) -> None:
    """4 MB of `[{},{},...]` parsed into 1.4 million objects (about 130 MB), and a request's `_meta` lives as long as
    its handler, after the client hung up: the first is refused unparsed (413), a `_meta` of data too (400), while a
    prompt of the same size whose text is full of braces and commas is one value, and passes both checks."""
    proc = daemon()
    absent = {"mcp-session-id": "none-such"}  # past the checks the SDK answers 404: no session is opened

    def ping(params: dict[str, object]) -> httpx2.Response:
        return post(proc, {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": params}, absent)

    flood = ping({"_meta": {"j": [{}] * 1_000_000}})
    assert flood.status_code == 413 and "too complex" in flood.text and "20000" in flood.text, flood.text[:300]
    data = ping({"_meta": {"pad": "x" * 100_000}})
    assert data.status_code == 400 and "params._meta holds" in data.text, data.text[:300]
    code = {"name": "chat", "arguments": {"prompt": "{[x, y], z}, " * 300_000, "model": "sim-fast"}}
    passed = post(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": code}, absent)
    assert passed.status_code == 404, passed.text[:300]


def test_counting_a_hostile_bodys_values_takes_one_pass() -> None:
    """Bodies that are not JSON (an unclosed string, a trailing backslash, escaped newlines): the count runs on the
    event loop before any parser, and a pattern that could fail at each quote took a minute for 160 KB of these (and
    hours for 4 MiB), holding every request of the daemon meanwhile. Each of these finishes in one pass now."""
    for body in (b'"' + b'\\"' * 500_000, b'"' + b"x" * 1_000_000 + b"\\", b'"\\\n' * 300_000):
        assert json_values(body) <= 1, body[:20]
    assert json_values(b'{"a": "x\\"y,[{", "b": [1, 2]}') == 4, "a string's escaped quote does not end it"
    assert MAX_REQUEST_BODY_BYTES == DEFAULT_MAX_REQUEST_BODY_SIZE, "the settings' floor is the SDK's own limit"


def test_an_idle_session_holds_no_request_body(daemon: Daemon, sim: SimControl) -> None:
    """The SDK frames every message with its HTTP request, and a session holds its last message until the next one
    arrives: each session left idle after one call kept that call's body (Starlette caches it in the request) for as
    long as the session lived. Here each body is 3 MiB of padding around a `ping` (it parses into a few bytes), so
    what idle sessions hold is what the framing keeps: 16 of them held 48 MiB more; now nothing of the bodies."""
    proc = daemon()
    status = Path(f"/proc/{proc.process.pid}/status")

    def rss_mib() -> float:
        return int(status.read_text().split("VmRSS:")[1].split()[0]) / 1024

    padded = '{"jsonrpc": "2.0", "id": 2, "method": "ping"' + " " * (3 * 2**20) + "}"

    def one_padded_call() -> None:
        headers = {**MCP_HEADERS, **ready_session(proc)}
        answer = httpx2.post(f"{proc.url}/mcp", content=padded, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text[:300]

    for _ in range(32):  # warm-up: the daemon's background loading (token tables, SDKs), allocator arenas
        one_padded_call()
    before = rss_mib()
    for _ in range(16):
        one_padded_call()
    grown = rss_mib() - before
    assert grown < 20, f"16 more idle sessions grew the daemon by {grown:.0f} MiB (old code: 48 or more)"
