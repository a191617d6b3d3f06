"""The fresh-process check: after a reload in place, what a cold start of the same tree serves.

A worker forked from the zygote imports the edited project and starts its app, as the restart
tier's new worker does, while the hot app goes on serving. Both sides describe their app the
same way (`describe`): its routes (path, methods, name, and the endpoint's module, qualified
name and code), mounts, middleware and exception handlers, and the public state of the modules
the reload ran. The fresh worker also answers the GET requests the hot app answered lately
(`Recorder`), each twice: a page whose two answers differ is left out. The hot app is never
asked anything: its answers are those it gave real clients after the reload. `differences`
names what differs, in words a log line can carry.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fh_utils.asgi import ASGIApp, Message, Scope
from fh_utils.reload.compare import code_digest

__all__ = ["Answer", "Description", "Get", "Recorder", "Request", "answer_twice", "describe",
           "differences"]

RECENT = 8  # distinct GET requests remembered
BODY_CAP = 1 << 20  # larger answers are not compared
# Request headers an answer may depend on, as the browser sent them; validators (If-None-Match)
# are left out so that both sides answer in full.
KEPT_HEADERS = frozenset({b"host", b"accept", b"accept-language", b"cookie", b"authorization",
                          b"user-agent", b"hx-request", b"hx-target", b"hx-trigger",
                          b"hx-trigger-name", b"hx-current-url", b"hx-boosted"})


@dataclass(frozen=True)
class Get:
    """A GET request as a client made it: enough to make it again."""

    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    root_path: str = ""
    scheme: str = "http"
    server: tuple[str, int] | None = None

    @classmethod
    def from_request(cls, request: Request) -> Get:
        path, query, raw_headers, root_path, scheme, server = request
        headers = tuple((k.lower(), v) for k, v in raw_headers if k.lower() in KEPT_HEADERS)
        return cls(path, query, headers, root_path, scheme,
                   (server[0], server[1]) if server else None)

    @property
    def label(self) -> str:
        query = f"?{self.query.decode(errors='replace')}" if self.query else ""
        return f"GET {self.path}{query}"

    def scope(self, state: dict[str, Any]) -> Scope:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1", "method": "GET", "scheme": self.scheme,
                "path": self.path, "raw_path": self.path.encode(), "query_string": self.query,
                "root_path": self.root_path, "headers": list(self.headers),
                "client": ("127.0.0.1", 0), "server": self.server, "state": dict(state)}


class Answer(NamedTuple):
    status: int
    digest: str  # of the body

    def __str__(self) -> str:
        return str(self.status)


class _Body:
    """Folds a response's messages into an `Answer`; None for a stream or a large body."""

    def __init__(self) -> None:
        self.status = 0
        self.size = 0
        self.hash = hashlib.sha1(usedforsecurity=False)
        self.done = False
        self.useless = False

    def feed(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if not any(k.lower() == b"content-length" for k, _ in message.get("headers", ())):
                self.useless = True  # a stream (SSE): no end to compare
        elif kind == "http.response.body" and not self.useless:
            body = message.get("body", b"")
            self.size += len(body)
            if self.size > BODY_CAP:
                self.useless = True
            else:
                self.hash.update(body)
            self.done = not message.get("more_body", False)

    def answer(self) -> Answer | None:
        if self.useless or not self.done:
            return None
        return Answer(self.status, self.hash.hexdigest()[:16])


# What a GET request's scope holds that `Get` needs (path, query string, headers, root path,
# scheme, server), taken as it came in (an app may change the scope while it runs): a plain
# tuple, cheap enough for every request.
Request = tuple[str, bytes, Sequence[tuple[bytes, bytes]], str, str, Sequence[Any] | None]


class Recorder:
    """The hot side: the GET requests the app answered lately and, while a check `want`s
    them, the answers they got, with the `epoch` (the reloads done when the request began).
    It only watches what the app sends. At rest a request costs one tuple: its answer is not
    looked at, and which requests to make again is worked out when a check asks."""

    def __init__(self) -> None:
        self.recent: OrderedDict[Get, tuple[int, Answer]] = OrderedDict()
        self.updated = asyncio.Event()
        self.epoch = 0
        self._wanting = 0  # checks waiting for answers
        # Requests answered lately, in order, with repeats: `requests()` keeps distinct ones.
        self._lately: deque[Request] = deque(maxlen=RECENT * 8)

    def want(self) -> None:
        """A reload in place is committed: answers from now on are the new code's, and a
        check compares them (until `release`)."""
        self.epoch += 1
        self._wanting += 1

    def release(self) -> None:
        self._wanting -= 1

    @staticmethod
    def request(scope: Scope) -> Request | None:
        """The request to remember, for a GET; else None."""
        if scope.get("method") != "GET":
            return None
        return (scope["path"], scope.get("query_string", b""), scope.get("headers", ()),
                scope.get("root_path", ""), scope.get("scheme", "http"), scope.get("server"))

    def answered(self, request: Request) -> None:
        """`request` got a whole answer (not a stream)."""
        self._lately.append(request)

    def observe(self, request: Request) -> Callable[[Message], None] | None:
        """An observer of the response's messages while a check wants answers; else None."""
        if not self._wanting:
            return None
        get = Get.from_request(request)
        serial = self.epoch
        body = _Body()

        def seen(message: Message) -> None:
            body.feed(message)
            if body.done or body.useless:
                answer = body.answer()
                if answer is not None:
                    self.recent[get] = (serial, answer)
                    self.recent.move_to_end(get)
                    while len(self.recent) > RECENT:
                        self.recent.popitem(last=False)
                    self.updated.set()

        return seen

    def requests(self) -> list[Get]:
        """The last `RECENT` distinct GET requests answered, oldest first."""
        gets: dict[Get, None] = {}
        for request in reversed(self._lately):
            gets.setdefault(Get.from_request(request))
            if len(gets) == RECENT:
                break
        return list(reversed(gets))

    def answers_since(self, epoch: int) -> dict[Get, Answer]:
        """The answers to requests that began in `epoch` or later."""
        return {get: answer for get, (at, answer) in self.recent.items() if at >= epoch}


async def _answer(app: ASGIApp, state: dict[str, Any], get: Get, timeout: float
                  ) -> Answer | None:
    body = _Body()
    finished = asyncio.Event()
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        body.feed(message)
        if body.done or body.useless:
            finished.set()

    task = asyncio.ensure_future(app(get.scope(state), receive, send))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait({task, asyncio.ensure_future(finished.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if not finished.is_set():
                await task  # it returned or raised without answering
    except BaseException:
        task.cancel()
        return None
    finally:
        finished.set()
    if not task.done():
        task.cancel()
    return body.answer()


async def answer_twice(app: ASGIApp, state: dict[str, Any], requests: Iterable[Get],
                       timeout: float) -> dict[Get, Answer]:
    """The fresh side: each request answered twice; a page whose answers differ is left out
    (a clock, a counter, a random token: no answer of the hot app can match it)."""
    answers: dict[Get, Answer] = {}
    for get in requests:
        first = await _answer(app, state, get, timeout)
        if first is not None and first == await _answer(app, state, get, timeout):
            answers[get] = first
    return answers


# -- the app's shape ---------------------------------------------------------------------------


@dataclass
class Description:
    """What both sides compare; plain data, so that it crosses between processes."""

    routes: list[tuple[str, ...]] = field(default_factory=list)
    middleware: list[str] = field(default_factory=list)
    handlers: list[tuple[str, str]] = field(default_factory=list)
    state: dict[str, dict[str, str]] = field(default_factory=dict)  # module -> name -> summary
    answers: dict[Get, Answer] = field(default_factory=dict)  # the fresh side's

    def agreeing(self, other: Description) -> Description:
        """What of this fresh start another fresh start has too: a time, a process id or a
        random value taken at import differs between the two, and is no evidence."""
        state = {module: {name: value for name, value in names.items()
                          if other.state.get(module, {}).get(name) == value}
                 for module, names in self.state.items()}
        return Description(
            self.routes if self.routes == other.routes else [],
            self.middleware if self.middleware == other.middleware else [],
            self.handlers if self.handlers == other.handlers else [], state,
            {get: answer for get, answer in self.answers.items()
             if other.answers.get(get) == answer})


def describe(app: Any, modules: Sequence[types.ModuleType],
             is_project_file: Callable[[str], bool]) -> Description:
    """Routes, mounts, middleware, exception handlers of `app` (a Starlette, FastHTML or
    FastAPI app; other ASGI apps have none of these), and the public state of `modules`."""
    endpoint = _Endpoints(is_project_file)
    description = Description()
    description.routes = list(_routes(getattr(app, "routes", None) or [], "", endpoint))
    for middleware in getattr(app, "user_middleware", None) or []:
        cls = getattr(middleware, "cls", middleware)
        options = getattr(middleware, "kwargs", None) or getattr(middleware, "options", None)
        keys = ",".join(sorted(options)) if isinstance(options, dict) else ""
        description.middleware.append(f"{_name(cls)}({keys})")
    handlers = getattr(app, "exception_handlers", None)
    if isinstance(handlers, dict):
        description.handlers = sorted(
            (key.__name__ if isinstance(key, type) else repr(key), endpoint(handler))
            for key, handler in handlers.items())
    for module in modules:
        description.state[module.__name__] = {
            name: _summary(value) for name, value in sorted(vars(module).items())
            if not name.startswith("_")}
    return description


def _routes(routes: Iterable[Any], prefix: str, endpoint: _Endpoints
            ) -> Iterable[tuple[str, ...]]:
    for route in routes:
        path = prefix + str(getattr(route, "path", ""))
        kind = type(route).__name__
        methods = ",".join(sorted(getattr(route, "methods", None) or ()))
        name = str(getattr(route, "name", "") or "")
        inner = getattr(route, "routes", None) if kind in ("Mount", "Host") else None
        if inner:
            yield (kind, path, methods, name, "")
            yield from _routes(inner, path, endpoint)
            continue
        target = getattr(route, "endpoint", None) or getattr(route, "app", None)
        yield (kind, path, methods, name, endpoint(target))


class _Endpoints:
    """`module:qualname#digest` of the project function behind an endpoint: FastHTML and
    others wrap the user's function in one of their own, which holds it in a closure."""

    def __init__(self, is_project_file: Callable[[str], bool]) -> None:
        self.is_project_file = is_project_file

    def __call__(self, obj: Any) -> str:
        found = self._find(obj, 0, set()) or obj
        code = getattr(found, "__code__", None)
        if isinstance(found, type):
            methods = [v.__code__ for _, v in sorted(vars(found).items())
                       if isinstance(v, types.FunctionType)]
            digest = hashlib.sha1("".join(code_digest(c) for c in methods).encode(),
                                  usedforsecurity=False).hexdigest()[:16]
        else:
            digest = code_digest(code) if isinstance(code, types.CodeType) else ""
        return f"{_name(found)}#{digest}"

    def _find(self, obj: Any, depth: int, seen: set[int]) -> Any:
        if obj is None or id(obj) in seen or depth > 4:
            return None
        seen.add(id(obj))
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType) and self.is_project_file(code.co_filename):
            return obj
        if isinstance(obj, type):
            try:
                file = inspect.getsourcefile(obj)
            except (TypeError, OSError):
                file = None
            return obj if file and self.is_project_file(file) else None
        inner: list[Any] = [getattr(obj, "__wrapped__", None), getattr(obj, "__func__", None),
                            getattr(obj, "func", None)]
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                inner.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        for item in inner:
            if callable(item):
                found = self._find(item, depth + 1, seen)
                if found is not None:
                    return found
        return None


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _summary(value: Any) -> str:
    """A value as both processes can agree on: the type, and what cannot differ by chance
    (an int, a flag, a container's size, what a name is bound to), never an address, a time,
    a random string."""
    kind = type(value)
    if value is None or kind in (bool, int):
        return repr(value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{kind.__name__} {_name(value)}"
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if kind in (list, tuple, set, frozenset, dict):
        return f"{kind.__name__}[{len(value)}]"
    return f"{kind.__module__}.{kind.__qualname__}"


# -- the verdict -------------------------------------------------------------------------------


def differences(hot: Description, fresh: Description, answers: dict[Get, Answer],
                limit: int = 3) -> list[str]:
    """What the hot server has that a fresh start has not, shortest first, at most `limit`:
    `answers` are the hot app's answers to the requests the fresh one answered."""
    found: list[str] = []
    for get, answer in answers.items():
        theirs = fresh.answers.get(get)
        if theirs is not None and theirs != answer:
            found.append(f"{get.label} {answer} vs {theirs}" if answer.status != theirs.status
                         else f"{get.label} answers differ")
    if fresh.routes or not hot.routes:
        found.extend(_route_differences(hot.routes, fresh.routes))
    if (fresh.middleware or not hot.middleware) and hot.middleware != fresh.middleware:
        found.append(f"middleware {hot.middleware} vs {fresh.middleware}")
    if (fresh.handlers or not hot.handlers) and hot.handlers != fresh.handlers:
        found.append("exception handlers differ")
    for module in sorted(hot.state.keys() & fresh.state.keys()):
        here, there = hot.state[module], fresh.state[module]
        for name in sorted(there.keys()):
            if here.get(name) != there.get(name):
                found.append(f"{module}.{name}: {here.get(name, 'missing')} vs "
                             f"{there.get(name, 'missing')}")
                break
    return found[:limit]


def _route_differences(hot: list[tuple[str, ...]], fresh: list[tuple[str, ...]]) -> list[str]:
    if hot == fresh:
        return []
    ours = {r[:4]: r[4] for r in hot}
    theirs = {r[:4]: r[4] for r in fresh}
    found = [f"route {k[1] or '/'} only here" for k in ours.keys() - theirs.keys()]
    found += [f"route {k[1] or '/'} only in a fresh start" for k in theirs.keys() - ours.keys()]
    found += [f"route {k[1] or '/'} runs other code" for k in ours.keys() & theirs.keys()
              if ours[k] != theirs[k]]
    return sorted(found) or ["route order differs"]
