"""The console's parts without a browser: accounts, the login brake, sessions, its config, the
add-user command end to end, and its stream and refusals over real HTTP from the daemon."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.console._auth import FAILURES_BEFORE_BRAKE, LoginBrake, Sessions, csrf_ok
from gateway.console.accounts import Account, AccountError, Accounts
from gateway.flows.printing import failed_prints, print_counts_by_printer, requeue_failed_print
from gateway.runtime.config import ConfigError, load_config
from gateway.store import Store
from simulators.broker import Mosquitto, free_port
from simulators.cloud import CertificateAuthority
from tests.conftest import DEMO_CONFIG, REPO, GatewayFactory

PASSWORD = "correct horse battery"


def test_an_account_keeps_an_argon2id_hash_readable_by_its_owner_only(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "users.json")
    accounts.add("olivia", "operator", PASSWORD)
    text = accounts.path.read_text()
    assert PASSWORD not in text
    assert "$argon2id$" in text
    assert stat.S_IMODE(accounts.path.stat().st_mode) == 0o600
    assert accounts.verify("olivia", PASSWORD) == Account("olivia", "operator")
    assert accounts.verify("olivia", PASSWORD + "!") is None
    assert accounts.verify("nobody", PASSWORD) is None
    accounts.add("olivia", "viewer", "another long one")  # replaced: role and password
    assert accounts.verify("olivia", PASSWORD) is None
    assert accounts.verify("olivia", "another long one") == Account("olivia", "viewer")
    assert accounts.remove("olivia")
    assert accounts.names() == []


@pytest.mark.parametrize(
    ("name", "role", "password", "problem"),
    [
        ("Olivia Smith", "operator", PASSWORD, "name"),
        ("olivia", "admin", PASSWORD, "role"),
        ("olivia", "viewer", "short", "password"),
    ],
)
def test_an_account_is_refused_with_the_field_named(
    tmp_path: Path, name: str, role: str, password: str, problem: str
) -> None:
    with pytest.raises(AccountError, match=f"^{problem}:"):
        Accounts(tmp_path / "users.json").add(name, role, password)
    assert not (tmp_path / "users.json").exists()


def test_the_brake_holds_from_the_fifth_failure_and_doubles() -> None:
    brake = LoginBrake()
    keys = ("name:olivia", "address:10.0.0.9")
    for i in range(FAILURES_BEFORE_BRAKE - 1):
        brake.failed(keys, 100.0 + i)
        assert brake.wait_s(keys, 100.0 + i) == 0
    brake.failed(keys, 110.0)  # the fifth
    assert brake.wait_s(keys, 110.0) == 30
    assert brake.wait_s(("name:other", "address:10.0.0.9"), 120.0) == 20  # same address
    assert brake.wait_s(keys, 140.0) == 0
    brake.failed(keys, 140.0)  # the sixth: twice as long
    assert brake.wait_s(keys, 140.0) == 60
    assert brake.wait_s(keys, 140.0 + 900 + 60) == 0  # forgotten after the window
    brake.failed(keys, 2000.0)
    brake.succeeded(keys)
    assert brake.wait_s(keys, 2000.0) == 0


def test_sessions_expire_and_a_csrf_token_must_match() -> None:
    sessions = Sessions(lifetime_s=60)
    token, session = sessions.open(Account("victor", "viewer"), now=1000.0)
    assert sessions.get(token, 1059.0) is session
    assert sessions.get(token, 1060.0) is None
    assert sessions.get("forged", 1000.0) is None
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None)
    assert not csrf_ok(session, session.csrf[:-1])
    sessions.close(token)
    assert sessions.get(token, 1001.0) is None


def test_the_console_is_off_in_the_example_and_on_a_lan_address_only_with_tls(
    tmp_path: Path,
) -> None:
    assert not load_config(REPO / "examples" / "store.toml").console.enabled
    assert load_config(DEMO_CONFIG).console.enabled
    with pytest.raises(ConfigError) as caught:
        load_config(DEMO_CONFIG, {"console.host": "192.168.1.20"})
    assert any(p.startswith("console.host:") for p in caught.value.problems)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    tls = {
        "console.host": "192.168.1.20",
        "console.tls_cert_file": str(cert),
        "console.tls_key_file": str(key),
    }
    assert load_config(DEMO_CONFIG, tls).console.tls


def test_add_user_from_the_command_line(tmp_path: Path) -> None:
    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "gateway", "console", *args),
                *("-c", str(DEMO_CONFIG), "--set", f"store.state_dir={tmp_path / 'state'}"),
            ],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )

    added = cli("add-user", "olivia", "--role", "operator", "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout
    users = json.loads((tmp_path / "state" / "console-users.json").read_text())["users"]
    assert users["olivia"]["role"] == "operator"
    assert Accounts(tmp_path / "state" / "console-users.json").verify("olivia", PASSWORD)
    short = cli("add-user", "victor", "--role", "viewer", "--password-stdin", stdin="short")
    assert short.returncode == 1
    assert "password: expected at least" in short.stderr
    assert cli("list-users").stdout == "olivia\toperator\n"


@pytest.mark.e2e
def test_without_a_session_nothing_but_the_login_page_is_served(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    port = free_port()
    gateway(
        overrides={
            "console.enabled": "true",
            "console.port": str(port),
            "console.users_file": str(tmp_path / "users.json"),
        }
    ).wait_ready()
    status, headers, _ = _http(port, "GET", "/overview")
    assert (status, headers["Location"]) == (303, "/login")
    status, headers, login = _http(port, "GET", "/login")
    assert status == 200
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "No console account yet" in login  # and no default one
    assert _http(port, "GET", "/stream/overview")[0] == 401
    assert _http(port, "POST", "/actions/reprint")[0] == 401
    forged = {"Cookie": "sg_console=forged"}
    assert _http(port, "GET", "/stream/overview", forged)[0] == 401
    status, _, script = _http(port, "GET", "/static/console.js")
    assert status == 200
    assert "EventSource" in script  # shipped in the package, no CDN


def _http(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = b"" if method == "POST" else None
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        connection.close()


@pytest.mark.e2e
def test_status_prints_the_overview_and_its_exit_code_says_whether_the_gateway_serves(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    port = free_port()
    process = gateway(overrides={"health.enabled": "true", "health.port": str(port)})
    process.wait_ready()

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "status", "-c", str(DEMO_CONFIG), f"--port={port}"],
            capture_output=True,
            text=True,
            check=False,
        )

    shown = status()
    assert shown.returncode == 0, shown.stderr
    assert "store demo-store" in shown.stdout
    assert "\x1b[" not in shown.stdout  # not a terminal: no colours
    lines = shown.stdout.splitlines()
    assert any(line.split()[:2] == ["mqtt", "ready"] for line in lines)
    assert any(line.startswith("outbox ") for line in lines)
    broker.stop()
    deadline = time.monotonic() + 10
    # Each connection finds out on its own: until both have, the list names the first.
    down = "status unavailable  (mqtt, mqtt_nodes)"
    while down not in (shown := status()).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shown.returncode == 1
    assert down in shown.stdout
    process.stop()
    gone = status()
    assert gone.returncode == 2
    assert "no gateway answers" in gone.stderr


def test_a_failed_job_is_queued_again_as_a_copy_once(tmp_path: Path) -> None:
    """The reprint action's SQL, on a real store (what the console's button runs)."""
    store = Store(tmp_path / "g.sqlite3")
    try:
        store.conn.execute(
            "INSERT INTO print_journal (id, lane, printer, state, copy, coupon_code, job,"
            " attempts, error, created_at, updated_at)"
            " VALUES ('job-1', 'pos-1', 'receipt-1', 'failed', 0, 'C1', x'00', 10, 'unplugged',"
            " 900, 950), ('job-2', 'pos-1', 'receipt-1', 'printed', 0, 'C2', x'00', 1, NULL,"
            " 900, 950)"
        )
        assert failed_prints(store) == [("job-1", "receipt-1", "unplugged", 950.0)]
        assert requeue_failed_print(store, "job-1", now=1000.0) == "receipt-1"
        assert requeue_failed_print(store, "job-1", now=1001.0) is None  # not failed any more
        assert requeue_failed_print(store, "job-2", now=1001.0) is None  # printed: left alone
        state = store.conn.execute("SELECT state, copy FROM print_journal WHERE id = 'job-1'")
        assert state.fetchone() == ("queued", 1)
        assert print_counts_by_printer(store) == {
            "receipt-1": {"queued": 1, "printed": 1, "reprinted": 0}
        }
    finally:
        store.close()


@pytest.mark.e2e
def test_the_daemon_stops_cleanly_with_event_streams_open(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    port = free_port()
    users = tmp_path / "users.json"
    Accounts(users).add("olivia", "viewer", PASSWORD)
    process = gateway(
        overrides={
            "console.enabled": "true",
            "console.port": str(port),
            "console.users_file": str(users),
        }
    )
    process.wait_ready()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    form = "name=olivia&password=" + PASSWORD.replace(" ", "+")
    connection.request(
        "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    answer = connection.getresponse()
    answer.read()
    cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    connection.close()
    streams = []
    for page in ("overview", "devices"):
        stream = socket.create_connection(("127.0.0.1", port), timeout=5)
        stream.sendall(
            f"GET /stream/{page} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        received = b""
        while b"event: page" not in received:  # its first rendering
            received += stream.recv(65536)
        streams.append(stream)
    assert process.stop() == 0
    for stream in streams:
        rest = b""
        while chunk := stream.recv(65536):  # the stream ends (chunked: its last chunk), no hang
            rest += chunk
        stream.close()
    log = (tmp_path / "gateway.log").read_text()
    assert "Exception in ASGI application" not in log
    assert '"level": "error"' not in log


@pytest.mark.e2e
def test_under_tls_the_console_is_https_only_and_its_cookie_is_secure(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = ca.issue("console", server=True)
    port = free_port()
    users = tmp_path / "users.json"
    Accounts(users).add("olivia", "viewer", PASSWORD)
    gateway(
        overrides={
            "console.enabled": "true",
            "console.port": str(port),
            "console.users_file": str(users),
            "console.tls_cert_file": str(cert),
            "console.tls_key_file": str(key),
        }
    ).wait_ready()
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        form = "name=olivia&password=" + PASSWORD.replace(" ", "+")
        kind = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/login", form, kind)
        answer = connection.getresponse()
        answer.read()
    finally:
        connection.close()
    assert answer.status == 303
    flags = {f.strip().lower() for f in answer.headers["Set-Cookie"].split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        _http(port, "GET", "/login")  # plain HTTP is not served
