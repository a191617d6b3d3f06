"""Every timing fh_utils waits on, in one place, each with the reason for its value.

Seconds unless the name says `_MS`. Waits on user code (a lifespan, a request) are bounded so
that a hung app never stalls reloads; waits on fh_utils' own parts are bounded so that a bug
shows up as a message, not as a hang.
"""

from __future__ import annotations

# -- watching (fh_utils.watch) -----------------------------------------------------------------
# A burst is over once the inotify doorbell stayed quiet this long: saves report at once.
WATCH_QUIET_MS = 1
# Where watchfiles' own loop looks instead (no inotify), it looks this often; its 50 ms default
# alone would exceed the whole budget of a reload.
WATCH_STEP_MS = 2
DEBOUNCE_MS = 1_600  # a burst of changes is reported after this long at most (watchfiles')
COLLECT_TIMEOUT_MS = 20  # waiting, without sleeping, for watchfiles to report what rang
LATE_TIMEOUT_MS = 2_000  # then waiting for it, stepping, when it lags (a loaded machine)
# Then reporting what came, and looking again at once (what lags may be a save that nothing
# rings for again), for this long at most: a marker that never shows up is not waited on.
LATE_GIVE_UP_MS = 30_000
WRITE_WAIT_MS = 2_000  # a file a reload reads, open for writing, holds its burst this long at most
WATCHER_READY = 5.0  # the watcher setting up its watches, at most, before the app is imported
ATOMIC_SAVE_GRACE = 0.05  # a module's file gone in the middle of an editor's save
# The watcher reporting every save made before `status --wait` asked: a burst's debounce and
# a writer's hold at most, then watchfiles' own loop's round (no inotify).
FLUSH = (DEBOUNCE_MS + WRITE_WAIT_MS) / 1000 + 1.0
CLOCK_SLACK = 0.05  # file times come from the kernel's coarse clock, a tick behind at most

# -- the switch (fh_utils.serve.switch): waits on the user's app -------------------------------
LIFESPAN = 30.0  # one lifespan startup or shutdown (--timeout-lifespan)
# A new app's lifespan startup while requests wait for a reload in place, at most: a slower one
# is cancelled, the previous app serves on, and a fresh worker starts the new one (a restart).
LIFESPAN_IN_PLACE = 1.0
DRAIN = 3.0  # running requests finishing before a reload runs anyway (streams are not waited on)
RETIRE = 10.0  # a retired app's remaining requests, before its lifespan shutdown
THREAD_STOP = 1.0  # a thread stopped by on_reload ending before its module re-runs

# -- the restart tier (fh_utils.serve): processes ----------------------------------------------
CANDIDATE = 120.0  # a new worker's import and start-up, at most (beyond its lifespan's)
HAND_OVER_SETTLE = 0.2  # clients of open keep-alive connections coming back, at most
STEP_DOWN_GRACE = 1.0  # a retired worker's connections finishing their request, at most
WORKER_STOP = 1.0  # workers exiting when the session ends, before they are killed
# A pool that a package started at import ending once the zygote forks (its atfork handler
# joins the threads), at most: one that lives on keeps the package out of the zygote.
THREADS_END_AT_FORK = 0.2

# -- the fresh-process check (fh_utils.serve.verify) -------------------------------------------
# A project whose fresh start (import, lifespan, the slowest cached value) takes longer is not
# checked unless --verify says so: the check would load a model again behind the user's back.
VERIFY_SLOW = 2.0
# Clients asking the hot app again for a page the fresh worker answered, after a reload: a
# --live page does at once, a person reloads within seconds. The fresh worker waits meanwhile.
VERIFY_ANSWERS = 10.0
VERIFY_REQUEST = 5.0  # the fresh app answering one GET, at most
VERIFY_DESCRIBE = 30.0  # the fresh worker describing its app and answering the GETs, at most

# -- the notebook server (fh_utils.notebook) ---------------------------------------------------
NOTEBOOK_START = 10.0  # the server thread answering, at most (the app's lifespan is not in it)
NOTEBOOK_STOP = 10.0  # open requests finishing and the app's lifespan shutdown, at most
# The server's loop stopped for one step of a reload, at most: a step that takes longer (a
# module that sleeps at import) lets requests run again rather than fail them.
FREEZE_LIMIT = 60.0
