"""The printer driver against the printer simulator over each link: a real pty (serial), the
same pty opened raw (standing in for usblp's /dev/usb/lp0) and a real TCP socket on loopback (a
network printer's port 9100): jobs, faults, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from drivers.escpos import EscposPrinter
from gateway.escpos import Receipt, load_profile
from gateway.flows.printing import PrintJob
from gateway.runtime.clock import SystemClock
from gateway.runtime.config import PrinterLink, parse_printer_link
from gateway.runtime.supervisor import Handle, State
from simulators.printer import PrinterSimulator

PROFILE = load_profile("generic-80mm")
LINKS = ("serial", "usb", "tcp")
# Line noise with nothing shaped like a status reply (0xx1xx10) or a whole ASB block in it.
NOISE = b"\x00\xff\x80\x01\x02\x03\x7f\x10\xff"


def _render(job_id: str, *, copy: bool, lines: int) -> bytes:
    receipt = Receipt(PROFILE)
    if copy:
        receipt.text("*** COPY ***", bold=True)
    receipt.text(f"job {job_id}")
    for i in range(lines):
        receipt.text(f"line {i:03d} " + "." * 30)
    return receipt.cut().build()


class FakeQueue:
    """The journal's contract in memory: an interrupted job goes back to the front as a copy."""

    def __init__(self, witness: Callable[[], int] = lambda: 0) -> None:
        self.queued: deque[PrintJob] = deque()
        self.sending: dict[str, PrintJob] = {}
        self.taken: list[PrintJob] = []
        self.done: list[str] = []
        self.requeued: list[tuple[str, str]] = []
        self.requeued_at: list[float] = []
        self.released: list[str] = []
        self.witnessed: list[int] = []  # witness() when each job was reported printed
        self._witness = witness
        self._lines: dict[str, int] = {}
        self._added = asyncio.Event()

    def add(self, job_id: str, *, lines: int = 3) -> PrintJob:
        job = PrintJob(job_id, "p0", _render(job_id, copy=False, lines=lines), False, 1)
        self._lines[job_id] = lines
        self.queued.append(job)
        self._added.set()
        return job

    async def next_job(self, printer: str) -> PrintJob:
        assert printer == "p0"
        while not self.queued:
            self._added.clear()
            await self._added.wait()
        job = self.queued.popleft()
        self.sending[job.id] = job
        self.taken.append(job)
        return job

    async def printed(self, job_id: str) -> None:
        del self.sending[job_id]
        self.done.append(job_id)
        self.witnessed.append(self._witness())

    async def interrupted(self, job_id: str, reason: str) -> None:
        job = self.sending.pop(job_id)
        data = _render(job_id, copy=True, lines=self._lines[job_id])
        self.queued.appendleft(PrintJob(job_id, job.printer, data, True, job.attempts + 1))
        self.requeued.append((job_id, reason))
        self.requeued_at.append(asyncio.get_running_loop().time())
        self._added.set()

    async def release(self, job_id: str) -> None:
        job = self.sending.pop(job_id)
        self.queued.appendleft(job)  # as it was: not a copy
        self.released.append(job_id)
        self._added.set()


@dataclass
class Run:
    driver: EscposPrinter
    reports: list[tuple[State, str]] = field(default_factory=list)
    states: list[tuple[str, float]] = field(default_factory=list)  # on_state, with loop time

    def first(self, state: str, after: float) -> float:
        """Loop time the driver first entered `state` after `after`."""
        return next(t for s, t in self.states if s == state and t >= after)


def _link(sim: PrinterSimulator, kind: str) -> PrinterLink:
    """How the driver reaches the simulator over `kind`."""
    return parse_printer_link(sim.address if kind == "tcp" else f"{kind}:{sim.link}")


def _slow(sim: PrinterSimulator, kind: str) -> None:
    """Make a 30-line job take most of a second: on the wire (serial, the usblp stand-in), or in
    the printer's buffer (TCP: the bytes are all in at once, printing takes the time)."""
    if kind == "tcp":
        sim.set_print_speed(50)
    else:
        sim.set_baud(19200)


@asynccontextmanager
async def _running(
    sim: PrinterSimulator,
    kind: str,
    queue: FakeQueue,
    *,
    baud: int = 115200,
    poll_s: float = 0.5,
    status_timeout_s: float = 1.0,
) -> AsyncIterator[Run]:
    loop = asyncio.get_running_loop()
    states: list[tuple[str, float]] = []
    driver = EscposPrinter(
        "p0",
        _link(sim, kind),
        sim.profile,
        queue,
        SystemClock(),
        baud=baud,
        poll_s=poll_s,
        status_timeout_s=status_timeout_s,
        on_state=lambda _pid, state: states.append((state, loop.time())),
    )
    run = Run(driver, states=states)
    handle = Handle(driver.name, lambda _n, state, detail: run.reports.append((state, detail)))
    task = asyncio.create_task(driver.run(handle))
    try:
        yield run
    finally:
        task.cancel()
        await asyncio.wait({task})
    assert task.cancelled(), task.exception()


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - watching the driver from outside, no event
            await asyncio.sleep(0.005)


@pytest.fixture(params=LINKS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sim(kind: str, tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    # Serial: the generic profile, confirmed by a status poll. USB and TCP: the Epson profile,
    # confirmed by a process id (GS ( H), which a printer answers only once it has printed.
    profile = "generic-80mm" if kind == "serial" else "epson-tm-t20iii"
    link = "tcp:127.0.0.1:0" if kind == "tcp" else tmp_path / "printer0"
    async with PrinterSimulator(link, profile) as printer:
        yield printer


async def test_a_job_prints_once_and_is_confirmed(sim: PrinterSimulator, kind: str) -> None:
    queue = FakeQueue(witness=lambda: len(sim.receipts))
    queue.add("j1")
    async with _running(sim, kind, queue) as run:
        await _until(lambda: queue.done == ["j1"])
        await asyncio.sleep(0.2)  # nothing more comes
    assert queue.witnessed == [1]  # confirmed only once the printer had cut it
    assert len(sim.receipts) == 1
    assert "job j1" in sim.receipts[0].text
    assert "COPY" not in sim.receipts[0].text
    assert queue.requeued == []
    assert queue.sending == {}
    assert [s for s, _ in run.states] == ["ready"]
    assert run.reports[-1] == (State.READY, "ready")


async def test_paper_out_before_a_job_holds_it_until_paper_in(
    sim: PrinterSimulator, kind: str
) -> None:
    loop = asyncio.get_running_loop()
    queue = FakeQueue()
    async with _running(sim, kind, queue) as run:
        await _until(lambda: run.driver.state == "ready")
        fault = loop.time()
        sim.paper_out()
        await _until(lambda: run.driver.state == "paper_out")
        assert run.first("paper_out", fault) - fault < 0.1  # ASB: at once
        assert run.reports[-1] == (State.DEGRADED, "paper out")
        queue.add("j1")
        await asyncio.sleep(0.6)  # more than a poll: the job waits, nothing is sent
        assert sim.receipts == []
        assert sim.spoiled == 0
        assert queue.done == []
        sim.paper_in()
        await _until(lambda: queue.done == ["j1"])
    assert queue.requeued == []
    assert [(j.id, j.copy) for j in queue.taken] == [("j1", False)]
    assert len(sim.receipts) == 1
    assert "COPY" not in sim.receipts[0].text


async def test_paper_out_during_a_job_prints_a_copy_after_paper_in(
    sim: PrinterSimulator,
    kind: str,
) -> None:
    _slow(sim, kind)  # the job takes ~0.7 s on the line, or in the printer's buffer
    queue = FakeQueue()
    queue.add("j1", lines=30)
    async with _running(sim, kind, queue, baud=19200) as run:
        await _until(lambda: sim.bytes_received > 300)
        sim.paper_out()
        await _until(lambda: bool(queue.requeued))
        assert queue.requeued == [("j1", "paper out during the job")]
        assert run.driver.state == "paper_out"
        sim.paper_in()
        await _until(lambda: queue.done == ["j1"])
    assert [(j.copy, j.attempts) for j in queue.taken] == [(False, 1), (True, 2)]
    assert sim.spoiled == 1
    assert len(sim.receipts) == 1
    assert "COPY" in sim.receipts[0].text


async def test_unplug_mid_job_is_detected_and_the_job_prints_once_after_plug(
    sim: PrinterSimulator,
    kind: str,
) -> None:
    loop = asyncio.get_running_loop()
    _slow(sim, kind)
    queue = FakeQueue()
    queue.add("j1", lines=30)
    async with _running(sim, kind, queue, baud=19200) as run:
        await _until(lambda: sim.bytes_received > 300)
        pulled = loop.time()
        sim.unplug()
        await _until(lambda: bool(queue.requeued))
        assert queue.requeued_at[0] - pulled < 1.0
        assert queue.requeued[0][1].startswith("line broke: ")
        assert run.driver.state == "unplugged"
        assert run.reports[-1][0] == State.DEGRADED
        await asyncio.sleep(0.5)
        waiting = f"waiting for {sim.link}"
        if kind == "tcp":
            waiting = f"cannot connect to {sim.address.removeprefix('tcp:')}: "
        assert run.reports[-1][0] == State.DEGRADED
        assert run.reports[-1][1].startswith(waiting)
        plugged = loop.time()
        sim.plug()
        await _until(lambda: queue.done == ["j1"])
        assert run.first("ready", plugged) - plugged < 1.5  # backoff capped at 1 s
    assert [j.copy for j in queue.taken] == [False, True]
    assert queue.sending == {}
    assert len(sim.receipts) == 1
    assert "COPY" in sim.receipts[0].text


async def test_a_silent_printer_is_offline_until_it_answers_again(
    sim: PrinterSimulator, kind: str
) -> None:
    loop = asyncio.get_running_loop()
    queue = FakeQueue()
    # The daemon's defaults: poll every 0.5 s, answer within 0.5 s.
    async with _running(sim, kind, queue, poll_s=0.5, status_timeout_s=0.5) as run:
        await _until(lambda: run.driver.state == "ready")
        # Idle: found by the next poll, within poll_s + status_timeout_s (the issue: 1 s).
        hushed = loop.time()
        sim.silent()
        await _until(lambda: run.driver.state == "offline")
        assert run.first("offline", hushed) - hushed < 1.1
        assert run.reports[-1] == (State.DEGRADED, "silent: no status reply within 0.5s")
        sim.silent(False)
        await _until(lambda: run.driver.state == "ready")
        # A job: the check right before sending finds it within status_timeout_s.
        await asyncio.sleep(0.1)
        hushed = loop.time()
        sim.silent()
        queue.add("j1")
        await _until(lambda: run.driver.state == "offline")
        assert run.first("offline", hushed) - hushed < 0.7
        await asyncio.sleep(0.3)
        assert sim.receipts == []  # held: nothing sent to a printer that can't confirm
        sim.silent(False)
        await _until(lambda: queue.done == ["j1"])
        assert run.driver.state == "ready"
    assert queue.requeued == []
    assert [j.copy for j in queue.taken] == [False]
    assert len(sim.receipts) == 1


async def test_garbage_on_the_line_is_counted_and_jobs_still_print(
    sim: PrinterSimulator,
    kind: str,
) -> None:
    queue = FakeQueue()
    with structlog.testing.capture_logs() as logs:
        async with _running(sim, kind, queue) as run:
            await _until(lambda: run.driver.state == "ready")
            sim.garbage(NOISE)
            queue.add("j1")
            await _until(lambda: queue.done == ["j1"])
            sim.garbage(NOISE)
            await asyncio.sleep(0.05)
            queue.add("j2")
            await _until(lambda: queue.done == ["j1", "j2"])
            assert run.driver.state == "ready"
    garbage = [e for e in logs if e["event"] == "garbage on the line"]
    assert sum(e["count"] for e in garbage) == 2 * len(NOISE)
    assert {(e["log_level"], e["printer"]) for e in garbage} == {("debug", "p0")}
    assert queue.requeued == []
    assert len(sim.receipts) == 2


@pytest.mark.parametrize("kind", ["serial"])  # a line rate is a serial line's
async def test_a_slow_line_still_confirms(sim: PrinterSimulator, kind: str) -> None:
    loop = asyncio.get_running_loop()
    sim.set_baud(9600)
    queue = FakeQueue(witness=lambda: len(sim.receipts))
    job = queue.add("j1", lines=20)
    wire_s = len(job.data) * 10 / 9600
    async with _running(sim, kind, queue, baud=9600) as run:
        await _until(lambda: run.driver.state == "ready")
        started = loop.time()
        await _until(lambda: queue.done == ["j1"])
        took = loop.time() - started
    assert took >= wire_s * 0.9  # the confirmation waited for the line
    assert queue.witnessed == [1]
    assert queue.requeued == []
    assert len(sim.receipts) == 1


async def test_stopping_mid_job_gives_the_job_back(sim: PrinterSimulator, kind: str) -> None:
    _slow(sim, kind)
    queue = FakeQueue()
    queue.add("j1", lines=30)
    async with _running(sim, kind, queue, baud=19200):
        await _until(lambda: sim.bytes_received > 300)
    assert queue.requeued == [("j1", "stopped")]
    assert queue.sending == {}
    assert queue.done == []


async def test_a_job_held_at_a_stop_goes_back_untouched_not_as_a_copy(
    sim: PrinterSimulator,
    kind: str,
) -> None:
    queue = FakeQueue()
    async with _running(sim, kind, queue) as run:
        await _until(lambda: run.driver.state == "ready")
        sim.cover_open()
        await _until(lambda: run.driver.state == "cover_open")
        queue.add("j1")
        await asyncio.sleep(0.3)  # taken or waiting: nothing is sent while the cover is open
    assert queue.requeued == []  # never reported as interrupted: no "COPY" on its first print
    assert queue.sending == {}
    assert [job.id for job in queue.queued] == ["j1"]
    assert not queue.queued[0].copy


async def test_cover_open_holds_jobs_and_paper_near_end_is_a_warning(
    sim: PrinterSimulator,
    kind: str,
) -> None:
    queue = FakeQueue()
    async with _running(sim, kind, queue) as run:
        await _until(lambda: run.driver.state == "ready")
        sim.cover_open()
        await _until(lambda: run.driver.state == "cover_open")
        assert run.reports[-1] == (State.DEGRADED, "cover open")
        queue.add("j1")
        await asyncio.sleep(0.2)
        assert sim.receipts == []
        sim.cover_close()
        await _until(lambda: queue.done == ["j1"])
        sim.paper_near_end()
        await _until(lambda: run.reports[-1] == (State.READY, "ready, paper near end"))
        queue.add("j2")
        await _until(lambda: queue.done == ["j1", "j2"])
    assert queue.requeued == []
    assert [s for s, _ in run.states] == ["ready", "cover_open", "ready"]


@pytest.mark.parametrize("kind", ["tcp"])
async def test_a_tcp_printer_that_drops_the_connection_is_found_at_once_and_reconnected(
    sim: PrinterSimulator, kind: str
) -> None:
    loop = asyncio.get_running_loop()
    queue = FakeQueue()
    async with _running(sim, kind, queue) as run:
        await _until(lambda: run.driver.state == "ready")
        dropped = loop.time()
        sim.drop()  # the printer resets the connection and listens again
        await _until(lambda: any(s == "unplugged" for s, _ in run.states))
        assert run.first("unplugged", dropped) - dropped < 1.0  # as fast as a pulled serial cable
        await _until(lambda: run.driver.state == "ready" and sim.connected)
        assert run.first("ready", dropped) - dropped < 1.5  # backoff capped at 1 s
        queue.add("j1")
        await _until(lambda: queue.done == ["j1"])
    assert len(sim.receipts) == 1


@pytest.mark.parametrize("kind", ["usb", "tcp"])
@pytest.mark.parametrize("confirm", ["process_id", "status"])
async def test_paper_out_while_a_buffered_coupon_prints_is_caught_by_the_process_id(
    sim: PrinterSimulator, kind: str, confirm: str
) -> None:
    """A fast link puts the whole job in the printer's buffer at once; it then takes its time
    to print. DLE EOT is answered ahead of that buffer, GS ( H only after it."""
    sim.profile = dataclasses.replace(sim.profile, confirm=confirm)
    sim.set_print_speed(50)  # 30 lines: about 2 s of paper
    queue = FakeQueue()
    queue.add("j1", lines=30)
    async with _running(sim, kind, queue) as run:
        await _until(lambda: sim.bytes_received > 0)
        await asyncio.sleep(0.3)  # all in, the top of the coupon printed
        sim.paper_out()
        await asyncio.sleep(0.5)
        sim.paper_in()
        await _until(lambda: run.driver.state == "ready")
        await asyncio.sleep(2.5)  # the rest of the buffer is through
        if confirm == "status":
            # The fallback's limit: "printed", though the printer lost it. No copy.
            assert queue.done == ["j1"]
            assert queue.requeued == []
            assert sim.receipts == []
        else:
            await _until(lambda: queue.done == ["j1"])
            assert queue.requeued == [("j1", "paper out during the job")]
            assert [j.copy for j in queue.taken] == [False, True]
            (receipt,) = await sim.wait_for_receipts(1)
            assert "COPY" in receipt.text
    assert sim.spoiled == 1
