"""What a request's code sees of asyncio: its own Task for its whole life, its own copy of the
context, anyio's view of it (backend detection, a cancel scope, a task group), and the loop's
task factory if the app installed one.

``identity`` answers GET /<anything> with a JSON report; ``identity_factory`` is the same app
with a task factory installed by lifespan startup (Uvicorn creates request tasks through
``loop.create_task``, so they go through it).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import weakref

import anyio

REQUEST_VAR = contextvars.ContextVar("request_var", default="unset")
LIFESPAN_VAR = contextvars.ContextVar("lifespan_var", default="unset")
FACTORY_TASKS: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()
_previous_name: list[str] = []


def _factory(loop, coro, **kwargs):
    task = asyncio.Task(coro, loop=loop, **kwargs)
    FACTORY_TASKS.add(task)
    return task


async def _lifespan(receive, send, install_factory: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            LIFESPAN_VAR.set("set by lifespan")  # the lifespan task's own context: never a request's
            if install_factory:
                asyncio.get_running_loop().set_task_factory(_factory)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _report(scope, receive, send) -> None:
    task = asyncio.current_task()
    var_before = REQUEST_VAR.get()
    REQUEST_VAR.set(scope["path"])
    message = await receive()
    same_after_receive = asyncio.current_task() is task
    with anyio.fail_after(5):  # a cancel scope: bound to the task that entered it
        await asyncio.sleep(0.001)
    seen_by_child: list[str] = []

    async def child() -> None:
        seen_by_child.append(REQUEST_VAR.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
    name = task.get_name() if task is not None else ""
    report = {
        "is_task": isinstance(task, asyncio.Task),
        "in_all_tasks": task in asyncio.all_tasks(),
        "same_task_after_receive": same_after_receive,
        "same_task_after_sleep": asyncio.current_task() is task,
        "default_name": re.fullmatch(r"Task-\d+", name) is not None,
        "new_task_per_request": not _previous_name or _previous_name[-1] != name,
        "request_var_before": var_before,
        "request_var_after": REQUEST_VAR.get(),
        "lifespan_var": LIFESPAN_VAR.get(),
        "anyio_backend": anyio.get_cancelled_exc_class() is asyncio.CancelledError,
        "child_saw": seen_by_child,
        "made_by_factory": task in FACTORY_TASKS,
        "factory_installed": asyncio.get_running_loop().get_task_factory() is not None,
        "first_message": message["type"],
    }
    _previous_name.append(name)
    body = json.dumps(report, sort_keys=True).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def identity(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, install_factory=False)
    else:
        await _report(scope, receive, send)


async def identity_factory(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, install_factory=True)
    else:
        await _report(scope, receive, send)


# --loop task_apps:counting_loop: a loop class whose create_future is its own (it counts), for
# the check that a receive() that has to wait gets its future from the app's loop, as
# asyncio.Event.wait does under Uvicorn.
class CountingLoop(asyncio.SelectorEventLoop):
    # The tasks that made a future through this method (servers make others elsewhere, such
    # as the main loop's sleep).
    made_by: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()

    def create_future(self):
        task = asyncio.current_task(self)
        if task is not None:
            CountingLoop.made_by.add(task)
        return super().create_future()


def counting_loop() -> asyncio.AbstractEventLoop:
    return CountingLoop()


async def count_futures(scope, receive, send):
    """POST: reads the body (the client sends it in two parts, so receive() waits) and answers
    whether this request's task made a future through the loop's create_future meanwhile, and
    the body's length."""
    if scope["type"] != "http":
        return
    me = asyncio.current_task()
    CountingLoop.made_by.discard(me)
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"loop": type(asyncio.get_running_loop()).__name__,
                       "made_while_receiving": me in CountingLoop.made_by,
                       "size": size}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --loop task_apps:step_loop: a loop class that notes each Task whose step it is asked to
# schedule, for the check that cppuvicorn runs a request Task's first step without the loop
# (it keeps the step back and runs it once the reads of the pass are done; 3.12+ starts the
# Task eagerly), while Uvicorn's create_task schedules it with call_soon.
class StepLoop(asyncio.SelectorEventLoop):
    scheduled: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()

    def call_soon(self, callback, *args, context=None):
        task = getattr(callback, "__self__", None)  # a Task's step (C or Python Task)
        if isinstance(task, asyncio.Task):
            StepLoop.scheduled.add(task)
        return super().call_soon(callback, *args, context=context)


def step_loop() -> asyncio.AbstractEventLoop:
    return StepLoop()


async def first_step(scope, receive, send):
    """Answers whether this request's Task had a step scheduled through loop.call_soon before
    it first ran, and whether it still waits on the loop as usual afterwards (a sleep)."""
    if scope["type"] != "http":
        return
    me = asyncio.current_task()
    before = me in StepLoop.scheduled
    await asyncio.sleep(0)  # the Task's next step comes back through the loop
    body = json.dumps({"loop": type(asyncio.get_running_loop()).__name__,
                       "scheduled_before_first_step": before,
                       "scheduled_after_sleep": me in StepLoop.scheduled}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def receive_log(scope, receive, send):
    """POST: answers the (body length, more_body) of each http.request message it received."""
    if scope["type"] != "http":
        return
    log, more = [], True
    while more:
        message = await receive()
        more = message.get("more_body", False)
        log.append([len(message.get("body", b"")), more])
    body = json.dumps(log).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def wakeups(scope, receive, send):
    """Reports, for each receive(), whether its Task's wakeup went through loop.call_soon
    (under ``--loop task_apps:step_loop``).

    WebSocket: the app sends "ready" before each receive(), and the client sends a message only
    then, so every receive() suspends; when the client sends "done", the app answers with the
    JSON list of flags. HTTP: the flags of the receive() calls of a POST, as the JSON body."""
    me = asyncio.current_task()
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        flags = []
        while True:
            StepLoop.scheduled.discard(me)
            await send({"type": "websocket.send", "text": "ready"})
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            flags.append(me in StepLoop.scheduled)
            if message.get("text") == "done":
                await send({"type": "websocket.send", "text": json.dumps(flags)})
                await receive()  # the client's close
                return
    elif scope["type"] == "http":
        flags, more = [], True
        while more:
            StepLoop.scheduled.discard(me)
            message = await receive()
            more = message.get("more_body", False)
            flags.append(me in StepLoop.scheduled)
        body = json.dumps(flags).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
