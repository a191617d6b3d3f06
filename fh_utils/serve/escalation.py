"""The tier ladder: a reload runs in place, goes up to a re-import of the project, or up to a
restart (a new worker process forked from the zygote), whichever is the lowest that serves what
a cold start of the same tree would.

The engine (`fh_utils.reload.engine`) runs a tier and says when in place cannot be faithful
(`Batch.escalation`); this module decides which tier serves, and asks the zygote for the new
worker (a `Candidate`) that a restart hands over to (`fh_utils.serve.session`). A genuine
error, one a fresh process hits too, never goes up: the last good version keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fh_utils.reload.engine import Batch, Escalation, Outcome, Plan, Reloader
from fh_utils.reload.errors import Failure
from fh_utils.reload.report import connections, short
from fh_utils.serve.channel import Channel
from fh_utils.serve.switch import LifespanFailed, LifespanSlow, Switch
from fh_utils.serve.verify import Description, Get
from fh_utils.serve.zygote import Zygote
from fh_utils.timing import CANDIDATE, LIFESPAN_IN_PLACE

__all__ = ["GENUINE", "Candidate", "Ladder", "PendingRestart"]

logger = logging.getLogger("fh_utils")

# Errors a cold start of the same tree hits too, whatever the previous runs left: reported at
# once, never checked against a fresh process.
GENUINE = frozenset({"NameError", "UnboundLocalError", "SyntaxError", "IndentationError",
                     "TabError", "ImportError", "ModuleNotFoundError", "AppNotFound",
                     "LifespanTimeout"})


@dataclass
class PendingRestart:
    """The restart tier is needed; `candidate` is a new worker already loaded, if one is."""

    candidate: Candidate | None
    cause: str


class Ladder:
    """Runs a plan at the lowest tier that serves what a cold start would.

    `start(app)` starts a new app's lifespan (the switch's generation); `zygote` forks the
    workers of the restart tier (None where there is none: a restart is then reported as not
    available). `fork_start` is what a forked worker is told to serve.
    """

    def __init__(self, reloader: Reloader, switch: Switch, adapt: Callable[[Any], Any],
                 newer: asyncio.Event, *, escalate: bool, timeout_lifespan: float,
                 fork_start: Any) -> None:
        self.reloader = reloader
        self.switch = switch
        self.adapt = adapt
        self.newer = newer
        self.escalate = escalate
        self.timeout_lifespan = timeout_lifespan
        self.fork_start = fork_start
        self.zygote: Zygote | None = None

    async def run(self, plan: Plan) -> tuple[Outcome, PendingRestart | None]:
        """In place first (requests wait meanwhile: the caller holds the switch's pause). If
        that cannot be faithful (a live thread, a class change it cannot carry, a lifespan
        startup that keeps requests waiting), the project is re-imported; if even that cannot
        do it, a restart is pending (the caller hands over to the new worker). A failure is
        returned as it is: a fresh process judges it afterwards (`judge`), when
        `judgeable`."""
        with held_warnings() as held:  # shown only if this tier is the one that serves
            async with self.switch.threads_held():
                batch = self.reloader.run(plan)
        if batch.escalation is not None and not self.escalate:
            batch.outcome.notes.append(f"{batch.escalation.cause}: in place cannot apply this "
                                       "faithfully; restart fh_utils dev (escalation is off)")
            batch.escalation = None
        failure = await self.finish(batch)
        outcome = batch.outcome
        if batch.escalation is None:
            if failure is None:
                held.show()
            return outcome, None
        tier, cause = batch.escalation.tier, batch.escalation.cause
        if tier == "re-import":
            with held_warnings() as held:
                async with self.switch.threads_held():
                    batch = self.reloader.reimport(plan, cause)
            again = await self.finish(batch)
            if again is None and batch.escalation is None:
                held.show()
                return batch.outcome, None
            if batch.escalation is not None:
                cause = f"{cause}; then {batch.escalation.cause}"
        outcome.failure = None
        return outcome, PendingRestart(None, cause)

    def judgeable(self, outcome: Outcome) -> bool:
        """A failure that a fresh process might not hit (one run order, or state the previous
        runs left, may have caused it): `judge` asks one."""
        failure = outcome.failure
        return (failure is not None and self.escalate and self.zygote is not None
                and failure.kind not in GENUINE)

    async def judge(self, plan: Plan, outcome: Outcome) -> tuple[Outcome, PendingRestart | None]:
        """A fresh process loads the edited tree while the last good version serves (no
        request waits on it). Where it fails too, its failure is the answer; where it loads,
        the project is re-imported in place, or, if that fails as well, the fresh process
        takes over."""
        failure = outcome.failure
        assert failure is not None
        candidate, cold = await self.candidate()
        if candidate is None:
            outcome.failure = cold or failure
            return outcome, None
        cause = short(failure.message or failure.kind)
        try:
            async with self.switch.paused():
                with held_warnings() as held:
                    async with self.switch.threads_held():
                        batch = self.reloader.reimport(plan, cause)
                again = await self.finish(batch)
        except BaseException:
            await candidate.dismiss()
            raise
        if again is None and batch.escalation is None:
            held.show()
            await candidate.dismiss()
            return batch.outcome, None
        if batch.escalation is not None:
            cause = f"{cause}; then {batch.escalation.cause}"
        outcome.failure = None
        return outcome, PendingRestart(candidate, cause)

    async def finish(self, batch: Batch) -> Failure | None:
        """Serve a successful batch and commit it; otherwise roll it back. Returns the failure
        (None also when the batch needs a higher tier: `batch.escalation`). A lifespan startup
        that keeps requests waiting longer than `LIFESPAN_IN_PLACE` is cancelled and needs a
        restart: the previous app serves, untouched, while a fresh worker starts the new one."""
        if batch.escalation is not None or batch.outcome.failure is not None or batch.app is None:
            batch.rollback()
            return batch.outcome.failure
        budget = LIFESPAN_IN_PLACE if self.escalate and self.zygote is not None else None
        try:
            generation = await self.switch.start(self.adapt(batch.app), self.newer, budget)
        except LifespanSlow as exc:
            batch.rollback()
            batch.escalation = Escalation("restart", str(exc))
            return None
        except LifespanFailed as exc:
            batch.rollback()
            batch.outcome.failure = exc.failure()
            return batch.outcome.failure
        except BaseException:
            batch.rollback()
            raise
        sockets, streams = await self.switch.commit(generation)
        batch.commit()
        if sockets or streams:
            logger.info("Closed %s of the previous app so they reconnect to the new code",
                        connections(sockets, streams))
        for name in batch.outcome.released:
            logger.info("%s() is gone: its cached values were released", name)
        return None

    async def candidate(self) -> tuple[Candidate | None, Failure | None]:
        """A new worker that loaded the project and started the app, waiting to serve; or
        (None, the failure a fresh process hit), or (None, None) when none can be started."""
        if self.zygote is None:
            return None, None
        try:
            sock = self.zygote.fork((self.fork_start, "candidate"))
        except OSError:
            logger.warning("The zygote process is gone: a restart needs `fh_utils dev` again")
            self.zygote = None
            return None, None
        candidate = Candidate(Channel(sock))
        try:
            failure = await candidate.imported(CANDIDATE + 2 * self.timeout_lifespan)
        except BaseException:  # cancelled (a newer save): it exits on its own
            candidate.channel.close()
            raise
        if failure is not None:
            await candidate.dismiss()
            return None, failure
        return candidate, None


class Candidate:
    """A new worker process, seen from the worker that asked for it."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def imported(self, timeout: float) -> Failure | None:
        """None once it loaded the project and started the app; else what went wrong."""
        try:
            async with asyncio.timeout(timeout):
                message = await self.channel.recv()
        except TimeoutError:
            return Failure(None, None, "RestartFailed",
                           f"the new worker did not load the app within {timeout:g} s", "")
        if message is None:
            return Failure(None, None, "RestartFailed",
                           "the new worker exited before it loaded the app", "")
        if message[0] == "failed":
            return message[1] or Failure(None, None, "RestartFailed", "unknown failure", "")
        return None

    async def describe(self, modules: list[str], requests: list[Get], timeout: float
                       ) -> Description | None:
        """Its app as the fresh-process check compares it (`fh_utils.serve.verify`), with its
        answers to `requests`; None when it cannot say within `timeout`."""
        await self.channel.send(("describe", modules, requests))
        try:
            async with asyncio.timeout(timeout):
                message = await self.channel.recv()
        except TimeoutError:
            return None
        return message[1] if message and message[0] == "described" else None

    async def go(self, changes: set[Path]) -> None:
        """Serve from now on; `changes` were saved meanwhile, for it to apply."""
        await self.channel.send(("go", sorted(changes)))

    async def ready(self, timeout: float) -> bool:
        """Whether it serves (uvicorn accepts connections on the shared socket)."""
        try:
            async with asyncio.timeout(timeout):
                message = await self.channel.recv()
        except TimeoutError:
            message = None
        self.channel.close()
        return bool(message) and message[0] == "ready"

    async def dismiss(self) -> None:
        """Not needed: it exits without serving."""
        try:
            await self.channel.send(("exit",))
        except OSError:
            pass
        self.channel.close()


class HeldWarnings(list[tuple[Any, ...]]):
    def show(self) -> None:
        for args in self:
            warnings.showwarning(*args)
        self.clear()


@contextlib.contextmanager
def held_warnings() -> Iterator[HeldWarnings]:
    """Keep the warnings shown in this block (a tier that may be discarded) for `show()`."""
    held = HeldWarnings()
    original = warnings.showwarning

    def hold(*args: Any) -> None:
        held.append(args)

    setattr(warnings, "showwarning", hold)  # noqa: B010
    try:
        yield held
    finally:
        setattr(warnings, "showwarning", original)  # noqa: B010
