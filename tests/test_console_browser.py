"""The console in a real browser: Debian's chromium, headless, driven by Debian's chromedriver
through Selenium, against the daemon with simulators (a real Mosquitto, a printer on a pty).

Screenshots of each page are saved under the test's tmp dir (pytest's --basetemp keeps them).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from gateway.codecs.topics import Topics
from gateway.console.accounts import Accounts
from simulators.broker import Mosquitto, free_port
from simulators.daemon import GatewayProcess
from simulators.kiosk import Kiosk
from simulators.population import CUSTOMERS
from simulators.pos import PosLane
from simulators.printer import PrinterSimulator
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PASSWORD = "correct horse battery"
STORE = "demo-store"
# What must never reach a page or a stream: a MAC address, a loyalty number, a phone number,
# an e-mail address, a token (the demo's identifiers are checked by value below too).
_MAC = re.compile(r"\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\b")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_PHONE = re.compile(r"\+\d[\d ()-]{7,}\d")  # international form
_LONG_DIGITS = re.compile(r"\b\d{9,}\b")  # a loyalty card number


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromium-driver are not installed; scripts/test installs them")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    async with PrinterSimulator(tmp_path / "usb-Sim_Printer-if00-port0") as sim:
        yield sim


def _users(tmp_path: Path) -> Path:
    path = tmp_path / "console-users.json"
    accounts = Accounts(path)
    accounts.add("olivia", "operator", PASSWORD)
    accounts.add("victor", "viewer", PASSWORD)
    return path


def _start(gateway: GatewayFactory, tmp_path: Path, printer: PrinterSimulator | None = None) -> str:
    return _start_process(gateway, tmp_path, printer)[0]


def _start_process(
    gateway: GatewayFactory, tmp_path: Path, printer: PrinterSimulator | None = None
) -> tuple[str, GatewayProcess]:
    port = free_port()
    overrides = {
        "console.enabled": "true",
        "console.port": str(port),
        "console.users_file": str(_users(tmp_path)),
    }
    if printer is not None:
        overrides |= {
            "printers.receipt-1.device": str(printer.link),
            "lanes.pos-1.printer": "receipt-1",
        }
    process: GatewayProcess = gateway(overrides=overrides)
    process.wait_ready()
    return f"http://127.0.0.1:{port}", process


def _login(driver: webdriver.Chrome, url: str, name: str, password: str = PASSWORD) -> None:
    driver.get(f"{url}/login")
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
    WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (
            not d.current_url.endswith("/login")  # in; else the answer has a message
            or d.find_elements(By.CSS_SELECTOR, "p.message")
        )
    )


def _text_now(driver: webdriver.Chrome, css: str) -> str | None:
    """The element's text, or None while the page is being replaced (a form's answer loading)."""
    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return None
    except WebDriverException as error:
        # Chrome's other word for a stale element, when the node left the document between
        # finding it and reading it: a plain WebDriverException, so ignored_exceptions misses it.
        if "does not belong to the document" in (error.msg or ""):
            return None
        raise


def _wait_text(driver: webdriver.Chrome, css: str, text: str, timeout: float) -> float:
    """Seconds until the element shows `text` (TimeoutException past `timeout`)."""
    started = time.monotonic()
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: text in (_text_now(d, css) or "")
    )
    return time.monotonic() - started


def _live(driver: webdriver.Chrome) -> None:
    """Until the page's event stream is open (the first rendering arrived)."""
    _wait_text(driver, "#live", "live", 10)


def test_log_in_and_every_page_renders_with_a_screenshot(
    gateway: GatewayFactory, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    url = _start(gateway, tmp_path)
    browser.get(f"{url}/overview")
    assert browser.current_url.endswith("/login")  # not logged in: the login page
    _login(browser, url, "olivia")
    assert browser.current_url.endswith("/overview")
    cookie = browser.get_cookie("sg_console")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    expected = {
        "overview": "Outbox",
        "floor": "entrance",
        "devices": "kiosk-1",
        "printers": "No printers configured",
        "camera": "camera is off",
    }
    for page, text in expected.items():
        browser.get(f"{url}/{page}")
        _live(browser)
        assert text in browser.find_element(By.TAG_NAME, "main").text
        if page == "floor":
            assert browser.find_elements(By.CSS_SELECTOR, "svg.plan g.zone")
        assert browser.save_screenshot(str(shots / f"{page}.png"))
    assert "store broker" in _main_of(browser, f"{url}/overview")


def _main_of(driver: webdriver.Chrome, page_url: str) -> str:
    driver.get(page_url)
    _live(driver)
    return str(driver.find_element(By.TAG_NAME, "main").text)


async def test_an_identification_at_a_kiosk_shows_on_the_screens_page_without_a_reload(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    url = await asyncio.to_thread(_start, gateway, tmp_path)
    await asyncio.to_thread(_login, browser, url, "victor")
    await asyncio.to_thread(_main_of, browser, f"{url}/devices")
    browser.execute_script("document.body.dataset.marker = 'same page'")
    kiosk_cell = "span.content[data-kiosk='kiosk-1']"
    assert "personal" not in browser.find_element(By.CSS_SELECTOR, kiosk_cell).text
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        kiosk = Kiosk(client, Topics(STORE), "kiosk-1")
        await kiosk.identify("loyalty", CUSTOMERS[0].loyalty)
        try:  # the kiosk's own content, personal; nothing says who
            await asyncio.to_thread(_wait_text, browser, kiosk_cell, "personal", 1.0)
        except TimeoutException:
            pytest.fail("the screens page did not show the identification within 1 s")
    assert browser.execute_script("return document.body.dataset.marker") == "same page"
    row = browser.find_element(By.XPATH, "//td[text()='kiosk-1']/..").text
    assert "active" in row
    _no_identifiers(browser.page_source)
    browser.save_screenshot(str(tmp_path / "devices-after-identify.png"))
    # The overview counts it, taken by the rules (the tests run without a model).
    await asyncio.to_thread(_main_of, browser, f"{url}/overview")
    row = browser.find_elements(By.XPATH, "//h2[text()='Decisions']/following::table[1]//td")
    decisions, by_rules = row[2].text, row[-1].text
    assert (decisions, by_rules) == ("1", "1")


async def test_an_unplugged_printer_shows_within_2_s_and_a_viewer_cannot_reprint(
    broker: Mosquitto,
    gateway: GatewayFactory,
    tmp_path: Path,
    browser: webdriver.Chrome,
    printer: PrinterSimulator,
) -> None:
    url = await asyncio.to_thread(_start, gateway, tmp_path, printer)
    await asyncio.to_thread(_login, browser, url, "victor")
    await asyncio.to_thread(_main_of, browser, f"{url}/printers")
    state = "span.printer-state[data-printer='receipt-1']"
    await asyncio.to_thread(_wait_text, browser, state, "ready", 10)
    # A checkout prints a coupon: its layout shows, its code does not.
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        await lane.loyalty(CUSTOMERS[0].loyalty)
        await lane.total(12.5)
        async with asyncio.timeout(15):
            await printer.wait_for_receipts(1)
    await asyncio.to_thread(_wait_text, browser, "div.paper", "Picked for you", 5)
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        (code,) = db.execute("SELECT code FROM coupons").fetchone()
    assert code not in browser.page_source
    assert code.replace("-", "") not in browser.page_source.replace("-", "")
    printer.unplug()
    try:
        await asyncio.to_thread(_wait_text, browser, state, "unplugged", 2)
    except TimeoutException:
        pytest.fail("the printers page did not show 'unplugged' within 2 s")
    browser.save_screenshot(str(tmp_path / "printers-unplugged.png"))
    printer.plug()
    await asyncio.to_thread(_wait_text, browser, state, "ready", 10)

    # A viewer sees no action buttons, and a reprint it posts anyway (from the page, with the
    # session's own CSRF token) is refused, and audited.
    assert not browser.find_elements(By.CSS_SELECTOR, "form.action")
    status = _post_from_page(browser, "/actions/reprint", {"job": "any", "csrf": _csrf(browser)})
    assert status == 403
    events = _outbox_events(tmp_path, "console.action")
    assert events[-1]["outcome"] == "refused: viewer"
    assert events[-1]["user"] == "victor"


def test_an_action_without_the_csrf_token_is_refused(
    gateway: GatewayFactory, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    url = _start(gateway, tmp_path)
    _login(browser, url, "olivia")
    _main_of(browser, f"{url}/devices")
    assert browser.find_elements(By.CSS_SELECTOR, "form[action='/actions/clear-screen']")
    assert _post_from_page(browser, "/actions/clear-screen", {"screen": "entrance-1"}) == 403
    wrong = {"screen": "entrance-1", "csrf": "not-the-token"}
    assert _post_from_page(browser, "/actions/clear-screen", wrong) == 403
    assert _outbox_events(tmp_path, "console.action") == []
    # With the token (the page's own button), it is done and audited.
    browser.find_element(By.CSS_SELECTOR, "form[action='/actions/clear-screen'] button").click()
    WebDriverWait(browser, 5).until(lambda _: _outbox_events(tmp_path, "console.action"))
    (event,) = _outbox_events(tmp_path, "console.action")
    assert event["action"] == "clear-screen"
    assert event["target"] == "entrance-1"
    assert event["outcome"] == "done"


def test_five_wrong_passwords_slow_the_next_login_down(
    gateway: GatewayFactory, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    url = _start(gateway, tmp_path)
    for _ in range(5):
        _login(browser, url, "olivia", "wrong password!")  # the form's page has no message
        _wait_text(browser, "main", "Wrong name or password", 5)
    _login(browser, url, "olivia")  # the right one, but too soon
    _wait_text(browser, "main", "Too many failed logins", 5)
    assert browser.get_cookie("sg_console") is None
    log = (tmp_path / "gateway.log").read_text()
    assert log.count("console login failed") == 5
    assert "too many failures" in log
    assert PASSWORD not in log
    assert "wrong password!" not in log


async def test_no_page_or_stream_holds_a_customer_identifier_or_a_mac(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    url = await asyncio.to_thread(_start, gateway, tmp_path)
    await asyncio.to_thread(_login, browser, url, "olivia")
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for i, customer in enumerate(CUSTOMERS[:3]):
            await Kiosk(client, Topics(STORE), f"kiosk-{1 + i % 2}").identify(
                "loyalty", customer.loyalty
            )
        await Kiosk(client, Topics(STORE), "kiosk-1").identify("phone", "+44 7700 900123")
        await Kiosk(client, Topics(STORE), "kiosk-2").identify("email", "ann@example.org")
        # A refused device naming a MAC in its topic and payload.
        await client.publish(
            f"store/{STORE}/v1/kiosk/aa:bb:cc:dd:ee:ff/identify", b'{"mac":"aa:bb:cc:dd:ee:ff"}'
        )
    await asyncio.sleep(1.5)
    cookie = browser.get_cookie("sg_console")
    assert cookie is not None
    for page in ("overview", "floor", "devices", "printers", "camera"):
        await asyncio.to_thread(_main_of, browser, f"{url}/{page}")
        _no_identifiers(browser.page_source)
        stream = await asyncio.to_thread(_read_stream, url, page, cookie["value"])
        assert "event: page" in stream
        _no_identifiers(stream)


def _no_identifiers(text: str) -> None:
    for customer in CUSTOMERS:
        assert customer.loyalty not in text
        assert re.search(rf"\b{re.escape(customer.name)}\b", text) is None, customer.name
    for pattern in (_MAC, _EMAIL, _PHONE, _LONG_DIGITS):
        found = pattern.search(text)
        assert found is None, f"{pattern.pattern} matched {found.group(0)!r}"
    for secret in (PASSWORD, "+44 7700 900123", "ann@example.org"):
        assert secret not in text


def _read_stream(url: str, page: str, token: str) -> str:
    """The first two seconds of a page's event stream, as a browser would get it."""
    request = urllib.request.Request(  # noqa: S310 - http on loopback
        f"{url}/stream/{page}", headers={"Cookie": f"sg_console={token}"}
    )
    chunks = []
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        assert response.headers["Content-Type"].startswith("text/event-stream")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            line = response.readline()
            if not line:
                break
            chunks.append(line.decode())
            if "".join(chunks).count("event: page") >= 1 and line == b"\n":
                break
    return "".join(chunks)


def _csrf(driver: webdriver.Chrome) -> str:
    return str(
        driver.find_element(By.CSS_SELECTOR, "nav input[name='csrf']").get_attribute("value")
    )


def _post_from_page(driver: webdriver.Chrome, path: str, fields: dict[str, str]) -> int:
    """POST a form from the page's own script (same origin, the session's cookie): the status."""
    script = """
        const [path, fields, done] = arguments;
        fetch(path, {method: "POST", body: new URLSearchParams(fields), redirect: "manual"})
            .then(r => done(r.status), e => done(-1));
    """
    return int(driver.execute_async_script(script, path, fields))


def _outbox_events(tmp_path: Path, event_type: str) -> list[dict[str, str]]:
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        rows = db.execute("SELECT body FROM outbox WHERE type = ? ORDER BY seq", (event_type,))
        return [json.loads(body)["data"] for (body,) in rows]


async def test_an_operator_pauses_personalisation_for_the_store_and_it_outlasts_a_restart(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    url, first = await asyncio.to_thread(_start_process, gateway, tmp_path)
    await asyncio.to_thread(_login, browser, url, "olivia")
    await asyncio.to_thread(_main_of, browser, f"{url}/overview")
    browser.find_element(By.CSS_SELECTOR, "form[action='/actions/personalisation'] button").click()
    await asyncio.to_thread(_wait_text, browser, "main", "Personalisation: paused", 5)
    kiosk_cell = "span.content[data-kiosk='kiosk-2']"

    async def identify_at_kiosk_2() -> str:
        await asyncio.to_thread(_main_of, browser, f"{url}/devices")
        before = browser.find_element(By.CSS_SELECTOR, kiosk_cell).text
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            kiosk = Kiosk(client, Topics(STORE), "kiosk-2")
            await kiosk.identify("loyalty", CUSTOMERS[0].loyalty)  # Ada, who consented
        await asyncio.to_thread(
            WebDriverWait(browser, 5).until,
            lambda d: _text_now(d, kiosk_cell) not in (None, before),
        )
        return str(browser.find_element(By.CSS_SELECTOR, kiosk_cell).text)

    assert (await identify_at_kiosk_2()).endswith("anonymous")
    # A restart keeps it paused (it is in the store's meta table).
    await asyncio.to_thread(first.stop)
    url = await asyncio.to_thread(_start, gateway, tmp_path)
    await asyncio.to_thread(_login, browser, url, "olivia")
    await asyncio.to_thread(_main_of, browser, f"{url}/overview")
    assert "Personalisation: paused" in browser.find_element(By.TAG_NAME, "main").text
    browser.find_element(By.CSS_SELECTOR, "form[action='/actions/personalisation'] button").click()
    await asyncio.to_thread(_wait_text, browser, "main", "Personalisation: on", 5)
    assert (await identify_at_kiosk_2()).endswith("personal")
    events = _outbox_events(tmp_path, "console.action")
    assert [(e["action"], e["target"], e["outcome"]) for e in events] == [
        ("personalisation", "pause", "done"),
        ("personalisation", "resume", "done"),
    ]
