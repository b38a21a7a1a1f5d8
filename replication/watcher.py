"""Turn inotify events (via watchdog) into journal changes on the event loop.

watchdog's inotify emitter calls us on its thread (`Inotify`: no observer
thread in between); events are buffered under a lock and drained on the loop
in one callback per burst, so a storm of events costs one wake-up, not one
per event.

A file is shipped when its writer closes it (close_write). Writes that are
never followed by a close (a file moved in from outside, a writer that keeps
its file open) are shipped after a quiet period, or at the latest after
MAX_DIRTY_SECONDS so a long-running writer still replicates. Quiet is judged
by the file as well as by its events: inotify reports a write when the call
returns, so one big write (40 MiB on a loaded machine: several tenths of a
second) is silent while the file grows; shipped then, it travelled half
written and again after its close (issue 15: a file sent three times).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_EMITTER_TIMEOUT, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyFD

from replication import manifest
from replication.envinit import EnvInitTracker
from replication.exclude import ReadyMarkers
from replication.journal import Recorder
from replication.losses import WatchdogAlarm, coverage, directories_below, inotify_watches_held
from replication.paths import StorageRoot, is_temp_name, is_within, rebase
from replication.source import OpenFolders

log = structlog.get_logger("replication.watcher")

QUIET_SECONDS = 0.2
STALLED_SECONDS = 1.0
COVERAGE_RECOUNT_SECONDS = 0.1
MAX_DIRTY_SECONDS = 5.0
FILLED_SECONDS = 5.0
"""A folder appearing with no entry changed for this long was filled elsewhere (Watcher._folder_appeared)."""
FILLED_NS = int(FILLED_SECONDS * 1e9)
LOOK_AGAIN_AFTER = 0.005
"""The least time between two looks at waiting files: those whose quiet ends within it go together."""
EVENT_FILTER = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    DirAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]
_WANTED = frozenset(EVENT_FILTER)


HANDOFF_CHUNK = 256
MAX_WALKED = 100_000
"""Paths kept for the create events a walk of a new folder anticipates (Watcher._created)."""


class _Handoff(FileSystemEventHandler):
    """Runs on watchdog's emitter thread: buffer, and wake the loop once per burst.

    The loop takes the buffer HANDOFF_CHUNK events at a time, one callback each: a burst of tens of
    thousands of events (a plugin's venv being installed) is handled no-follow, folder by folder, which
    held the leader's loop for 3 s in one callback, long enough to miss a lease renewal. In chunks the
    renewals, health checks and replication get their turns in between; the order is kept."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, drain: Callable[[list[FileSystemEvent]], None]
    ) -> None:
        self._loop = loop
        self._drain = drain
        self._lock = threading.Lock()
        self._buffer: list[FileSystemEvent] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        with self._lock:
            wake = not self._buffer
            self._buffer.append(event)
        if wake and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            events = self._buffer[:HANDOFF_CHUNK]
            del self._buffer[:HANDOFF_CHUNK]
            more = bool(self._buffer)  # then no producer will wake the loop: this callback must
        if more and not self._loop.is_closed():
            self._loop.call_soon(self._flush)
        self._drain(events)


class _Emitter(InotifyEmitter):
    """watchdog's inotify emitter, handing each event it makes to `_Handoff` at once, on its thread.

    Its own `queue_event` tests every event against the filter with a generator over the ten classes
    (two of the five events a new file makes are folder modifications nobody asked for) and puts it on
    a queue for an observer thread; here an exact type lookup decides and no queue is involved. Like
    watchdog's EventQueue it drops an event equal to the one before (a file written in many calls makes
    a modify event per call)."""

    def __init__(self, handoff: _Handoff, watch: ObservedWatch, inotify_fd: InotifyFD) -> None:
        super().__init__(
            None,  # type: ignore[arg-type]  # no event queue: queue_event hands events on itself
            watch,
            timeout=DEFAULT_EMITTER_TIMEOUT,
            event_filter=EVENT_FILTER,
            inotify_fd=inotify_fd,
        )
        self._handoff = handoff
        self._last: FileSystemEvent | None = None

    def queue_event(self, event: FileSystemEvent) -> None:
        if type(event) in _WANTED and event != self._last:
            self._last = event
            self._handoff.on_any_event(event)


class Inotify:
    """watchdog's inotify reader and emitter threads for one recursive watch, without an Observer.

    An Observer puts every event on a queue for a thread of its own whose only work is to call the
    handler: one more thread wake-up and hand-over per event. At 1,000 files/s (three events a file)
    the leader's threads other than the loop used more CPU than the loop (issue 15, streaming lag)."""

    def __init__(self, root: str, handoff: _Handoff) -> None:
        self._reader = InotifyFD()
        watch = ObservedWatch(root, recursive=True, event_filter=EVENT_FILTER)
        self._emitter = _Emitter(handoff, watch, self._reader)

    def start(self) -> None:
        """Add a watch to every folder (a walk of the whole tree: call it off the loop), then emit."""
        self._reader.start()
        try:
            self._emitter.start()
        except BaseException:
            self._reader.stop()
            raise

    def stop(self) -> None:
        self._emitter.stop()
        self._reader.stop()

    def join(self, timeout: float) -> None:
        self._emitter.join(timeout)
        self._reader.join(timeout)

    def is_alive(self) -> bool:
        return self._emitter.is_alive() and self._reader.is_alive()

    @property
    def stopped(self) -> bool:
        return self._emitter.stopped_event.is_set()


@dataclass
class _Dirty:
    """A file written and not yet closed, waiting for its close or for quiet."""

    first: float
    """When it was first seen dirty (monotonic): MAX_DIRTY_SECONDS count from here."""
    last: float
    """Its last event, or when it was last looked at and found still written (monotonic): quiet
    counts from here."""
    seen: tuple[int, int] | None
    """Its (size, mtime_ns) when last looked at; None when not looked at yet."""
    created: bool
    """It appeared with a create event: its writer holds it open and will close it, so it is looked
    at once more before it ships without a close (the first look has nothing to compare with)."""


def still_written(now: tuple[int, int], seen: tuple[int, int] | None, wall_ns: int) -> bool:
    """Whether a file without events for QUIET_SECONDS is still being written.

    Looked at before, any change of size or mtime says so. Otherwise only its mtime can: the
    kernel sets it when a write starts and reports the write by event when it ends, so an mtime
    within QUIET_SECONDS is a write begun after the last event."""
    if seen is not None:
        return now != seen
    return now[1] >= wall_ns - int(QUIET_SECONDS * 1e9)


def _abandon(inotify: Inotify, starting: asyncio.Future[None]) -> None:
    """Once the thread of a cancelled start returns, stop whatever it started (its error is moot)."""
    if not starting.cancelled():
        starting.exception()  # retrieved, so asyncio does not report it
    with contextlib.suppress(Exception):
        inotify.stop()


class Watcher:
    """Watches STORAGE_PATH and records every change in the journal."""

    def __init__(
        self,
        root: str,
        journal: Recorder,
        skip: Callable[[str], bool],
        markers: ReadyMarkers | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self._storage = StorageRoot(self.root)
        self.journal = journal
        self._skip = skip
        self._markers = markers
        """Ready markers (READY_MARKERS): one is recorded only after every file of its plugin folder."""
        self._inotify: Inotify | None = None
        self._dirty: dict[str, _Dirty] = {}
        self._look_timer: asyncio.TimerHandle | None = None
        """Armed while a file waits: when the next quiet time ends (`_look`)."""
        self._walked: set[str] = set()
        """Files a walk of a folder that appeared took care of, whose create event is still to come
        (see `_created`)."""
        self.on_vanished: Callable[[str], None] = lambda _path: None
        self.on_loss: Callable[[str], None] = lambda _reason: None
        """Called on the loop when events may have been lost; the owner rescans."""
        self.failure: str | None = None
        """Why the watcher cannot be trusted right now (None while healthy)."""
        self.events_seen = 0
        self._alarm: WatchdogAlarm | None = None
        self.env_init: EnvInitTracker | None = None
        self._watches_before = 0

    async def start(self) -> None:
        """Start watching STORAGE_PATH; the watches are added in a worker thread.

        watchdog adds every folder's watch as its emitter starts, on the calling thread, walking the
        whole tree: on the loop that held /health, the lease and heartbeats for the length of the walk
        (~0.5 s for a leader's start over 10,000 files on a loaded machine, seconds over a storage full
        of venvs at a promotion). `ready` still waits for every watch before the leader accepts writes.
        """
        loop = asyncio.get_running_loop()
        self._alarm = WatchdogAlarm(loop, self._lost)
        self._alarm.install()
        self._watches_before = inotify_watches_held()
        try:
            inotify = Inotify(self.root, _Handoff(loop, self._on_events))
            starting = asyncio.ensure_future(asyncio.to_thread(inotify.start))
            try:
                await asyncio.shield(starting)
            except asyncio.CancelledError:  # the thread cannot be interrupted: stop what it started
                starting.add_done_callback(lambda done: _abandon(inotify, done))
                raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._fail(
                    f"inotify watches ran out before {self.root} could be watched: "
                    "raise fs.inotify.max_user_watches; periodic rescans cover it meanwhile"
                )
            else:
                self._fail(f"cannot watch {self.root}: {exc}")
            return
        self._inotify = inotify
        log.info("watcher_started", root=self.root)

    async def ready(self, timeout: float = 10.0) -> float:
        """Wait (bounded) until every folder is watched; returns the seconds waited.

        A folder created while `start` walked the tree may still lack its watch (watchdog
        adds it on its own thread); a write made before a folder's watch exists would be
        seen by no event. The leader accepts writes
        only after this, and its first reconciliation scans after it too.
        """
        started = time.monotonic()
        if self._inotify is None:
            return 0.0
        needed = await asyncio.to_thread(directories_below, self.root)
        held, grew_at = -1, started
        while time.monotonic() - started < timeout and self.failure is None:
            now_held = await asyncio.to_thread(inotify_watches_held)
            if now_held >= needed + self._watches_before:
                break
            if now_held != held:
                held, grew_at = now_held, time.monotonic()
            elif time.monotonic() - grew_at > STALLED_SECONDS:
                break  # no more watches coming (e.g. the limit): verify_coverage reports it
            await asyncio.sleep(0.01)
        waited = time.monotonic() - started
        log.info("watcher_ready", seconds=round(waited, 3), folders=needed)
        return waited

    def check(self) -> None:
        """Called periodically: a dead reader or emitter thread means events are being missed."""
        inotify = self._inotify
        if inotify is None or self.failure is not None:
            return
        if not inotify.is_alive():
            self._fail("the inotify watcher thread stopped (see the log; inotify watches may have run out)")

    async def verify_coverage(self) -> None:
        """Compare directories with the kernel's count of our watches; a shortfall that stays is a failure.

        Only one that stays: watchdog adds the watch of a new folder on its own thread once it has read
        the folder's create event, so a count taken while folders are being made (a plugin install, a
        burst) runs behind without anything being missed. A leader counted 17 of 25 a second after its
        start, in a 20,000-file burst: it declared its watcher failed, stayed degraded until restarted and
        rescanned the whole tree every 30 s. The count is taken again until the watches stop growing for
        STALLED_SECONDS; watches that ran out stop growing."""
        held, grew_at = -1, time.monotonic()
        while self._inotify is not None and self.failure is None:
            found = await asyncio.to_thread(coverage, self.root)
            if not found.short():
                return
            now = time.monotonic()
            if found.held > held:
                held, grew_at = found.held, now
            elif now - grew_at >= STALLED_SECONDS:
                self._fail(found.sentence())
                return
            await asyncio.sleep(COVERAGE_RECOUNT_SECONDS)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.error("watcher_failed", reason=reason, root=self.root)
        self.on_loss("watcher_failed")

    def _lost(self, reason: str) -> None:
        log.warning("watcher_events_lost", reason=reason, root=self.root)
        if reason == "inotify_watch_limit":
            self.failure = "inotify watches ran out (ENOSPC): raise fs.inotify.max_user_watches"
        self.on_loss(reason)

    def stop(self) -> None:
        if self._alarm is not None:
            self._alarm.uninstall()
            self._alarm = None
        if self._look_timer is not None:
            self._look_timer.cancel()
            self._look_timer = None
        self._dirty.clear()
        if self._inotify is not None:
            self._inotify.stop()
            self._inotify.join(timeout=5)
            self._inotify = None
            log.info("watcher_stopped")

    def record_tree(self, rel: str, into: Recorder | None = None, *, appeared: bool = False) -> int:
        """Record `rel` and everything below it (a new or moved-in directory).

        A directory that is already gone again may have been renamed before
        we could look inside: `on_vanished` lets the sender resend it under
        its new name when that rename goes out.

        `appeared`: the directory just showed up, so a file in it may still be
        open for writing (created before our watch, written after): a file
        changed within QUIET_SECONDS waits for its close or for quiet, like a
        modified file, rather than travelling half-written.
        """
        recorder = into or self.journal
        fresh_after = time.time_ns() - int(QUIET_SECONDS * 1e9)
        count = 0
        markers: list[str] = []
        if appeared and len(self._walked) > MAX_WALKED:
            self._walked.clear()  # unconsumed leftovers (a rescan after lost events): a few lstats more
        for entry in manifest.walk(self.root, rel, self._skip):
            if appeared and entry.type == "file":
                self._walked.add(entry.path)
            if appeared and entry.type == "file" and entry.mtime_ns >= fresh_after:
                self._mark_dirty(entry.path, (entry.size, entry.mtime_ns))
            elif self._plugin_of_marker(entry.path) is not None:
                markers.append(entry.path)  # after the walk: files walked later may wait for quiet
            else:
                recorder.record_sync(entry.path)
            count += 1
        for path in markers:
            self._record(path, recorder)
        if count == 0:
            self.on_vanished(rel)
        return count

    def _folder_appeared(self, rel: str) -> None:
        """A folder appeared: one being filled is listed (`_folder_made`); one whose entries last changed
        FILLED_SECONDS ago or more, such as a folder moved in from outside (watchdog reports it as
        created, and its files get no events at all), is walked and its finished files recorded at once
        (`record_tree`). Generous: in a burst the loop runs seconds behind the folders being made."""
        st = self._storage.lstat(rel)
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_mtime_ns > time.time_ns() - FILLED_NS:
            self._folder_made(rel)
        else:
            self.record_tree(rel, appeared=True)

    def _folder_made(self, rel: str) -> None:
        """A folder being filled: record it and the folders below it; its files wait for their close.

        Its files were made moments ago, so none is looked at now: `record_tree`'s lstat of each file,
        to tell one finished long ago from one still being written, was 75 % of the leader's loop time
        spent on events in a 20,000-file burst (its 100 folders walked as they filled). A file closed
        before watchdog watched the folder gets no close event: its quiet time ends, it is looked at
        once, and it ships (`_look`). Its create event, which watchdog reports for what it finds in a
        new folder, says nothing new (`_created`)."""
        if self._walked and len(self._walked) > MAX_WALKED:
            self._walked.clear()
        count = 0
        for path, kind in manifest.walk_kinds(self._storage, rel, self._skip):
            count += 1
            if kind == "file":
                self._walked.add(path)
                self._mark_dirty(path)
            else:  # the folder itself, the folders below, symlinks (complete when they appear)
                self.journal.record_sync(path)
        if count == 0:
            self.on_vanished(rel)

    def _plugin_of_marker(self, rel: str) -> str | None:
        return None if self._markers is None else self._markers.plugin_dir(rel)

    def _record(self, rel: str, recorder: Recorder | None = None) -> None:
        """record_sync of `rel`; a ready marker only once every file of its plugin folder is recorded.

        A file of a folder that appeared waits for its close or for quiet (record_tree), and its close
        may have come before our watch: recorded after the marker, it would reach the replica after it,
        and a standby's daemon would trust a venv still missing files (design: the marker arrives last).
        The marker says they are complete, so they go now, before it."""
        plugin = self._plugin_of_marker(rel)
        if plugin is not None:
            self._record_waiting_below(plugin, rel)
        (recorder or self.journal).record_sync(rel)

    def _record_waiting_below(self, folder: str, marker: str) -> None:
        """Record now every file below `folder` still waiting for its close or for quiet."""
        prefix = f"{folder}/" if folder else ""
        for path in [p for p in self._dirty if p != marker and p.startswith(prefix)]:
            self._settle(path)
            self.journal.record_sync(path)

    # -- event handling, on the loop ---------------------------------------------
    def _relative(self, path: str | bytes) -> str | None:
        text = os.fsdecode(path)
        if not text or not text.startswith(self.root + "/"):
            return None
        rel = text[len(self.root) + 1 :]
        if is_temp_name(rel) or self._skip(rel):
            return None
        return rel

    def _on_events(self, events: list[FileSystemEvent]) -> None:
        for event in events:
            self.events_seen += 1
            try:
                self._handle(event)
            except Exception:  # a bad event must never stop the watcher
                log.exception("watcher_event_failed", event=repr(event))

    def _handle(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            if not event.is_synthetic:
                self._moved(event)
            return
        rel = self._relative(event.src_path)
        if rel is None:
            return
        if self.env_init is not None:
            self._track_env_init(event, rel)
        if isinstance(event, (FileClosedEvent, FileAttribEvent, DirAttribEvent)):
            self._settle(rel)
            self._record(rel)
        elif isinstance(event, DirCreatedEvent):
            self._folder_appeared(rel)
        elif isinstance(event, FileCreatedEvent):
            self._created(rel)
        elif isinstance(event, FileModifiedEvent):
            self._mark_dirty(rel)
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self._settle(rel)
            self._walked.discard(rel)  # a file created there again is a new one
            self.journal.record_delete(rel)

    def _created(self, rel: str) -> None:
        """A file appeared: wait for its close (or for quiet).

        Not when the walk of a folder that appeared already took care of it (`record_tree`): watchdog
        reports every file it finds in a new folder as created (inotify.py, `_recursive_simulate`;
        for a folder moved in, `generate_sub_created_events`), most of them closed before the watch
        was there. Waiting for a close that never comes cost each of them two quiet times and two
        lstats: a tenth of the leader's samples in a 20,000-file burst, and the files went out 0.4 s
        late. A create for a path our walk saw says nothing new: the walk recorded the file, or waits
        for its close (a real create's close still comes). One that only watchdog's walk saw (the two
        walk on different threads) is waited for as before. No lstat here either (an openat2 per created
        file was 46 % of a streaming leader's loop): a symlink, which never gets a close, is recognised
        when its quiet time ends."""
        if rel in self._walked:
            self._walked.discard(rel)
            return
        self._mark_dirty(rel, created=True)

    def _track_env_init(self, event: FileSystemEvent, rel: str) -> None:
        assert self.env_init is not None
        if isinstance(event, DirCreatedEvent):
            self.env_init.directory_appeared(rel)
        elif isinstance(event, (FileClosedEvent, FileCreatedEvent)):
            self.env_init.file_written(rel)
        elif isinstance(event, DirDeletedEvent):
            self.env_init.removed(rel)

    def _moved(self, event: FileSystemEvent) -> None:
        src = self._relative(event.src_path)
        dest = self._relative(event.dest_path)
        if src is not None:
            self._move_dirty(src, dest)
        if dest is not None and (plugin := self._plugin_of_marker(dest)) is not None:
            self._record_waiting_below(plugin, dest)  # a marker written atomically: see _record
        if src is not None and dest is not None:
            self.journal.record_rename(src, dest)
        elif src is not None:
            self.journal.record_delete(src)
        elif dest is not None:
            self.record_tree(dest, appeared=True)
        if dest is not None and self.env_init is not None:
            self.env_init.file_written(dest)  # a marker written atomically arrives by rename

    def _mark_dirty(self, rel: str, seen: tuple[int, int] | None = None, *, created: bool = False) -> None:
        """`rel` changed and its writer has not closed it: wait for the close or for quiet.

        `seen`: its (size, mtime_ns) now, where known for free; quiet then also means it stopped growing."""
        now = time.monotonic()
        dirty = self._dirty.get(rel)
        if dirty is None:
            self._dirty[rel] = _Dirty(now, now, seen, created)
            if self._look_timer is None:
                self._look_timer = asyncio.get_running_loop().call_later(QUIET_SECONDS, self._look)
            return
        dirty.last = now
        dirty.created = dirty.created or created
        if seen is not None:
            dirty.seen = seen

    def _move_dirty(self, src: str, dest: str | None) -> None:
        """Files waiting for quiet at or below a moved path wait on under their new name.

        Looked at under the old path, which no longer exists, they would be taken for gone:
        the rename would go out without their content and it would never be sent.
        Moved out of the tree (no `dest`), they are forgotten like a deleted file.
        """
        for path in [path for path in self._dirty if is_within(path, src)]:
            dirty = self._dirty.pop(path)
            if dest is not None:
                moved = rebase(path, src, dest)
                self._settle(moved)  # a file waiting there was replaced by this one
                self._dirty[moved] = dirty

    def _look(self) -> None:
        """Look at the files whose quiet time is over: ship each unless it shows a write still going
        on (look again after another quiet time), and ship anything dirty for MAX_DIRTY_SECONDS.

        One timer for all of them, and the files of one folder looked at through one open of it: a
        timer per file (armed at its create, cancelled at its close) and an open of its folder for
        each look were 17 % of the leader's loop in a 20,000-file burst, whose files come a few
        hundred to a folder and many close before watchdog watches their new folder."""
        self._look_timer = None
        now = time.monotonic()
        over = [
            (path, dirty)
            for path, dirty in self._dirty.items()
            if dirty.last + QUIET_SECONDS <= now or now - dirty.first >= MAX_DIRTY_SECONDS
        ]
        if over:
            with OpenFolders(self._storage) as folders:
                for path, dirty in over:
                    if self._dirty.get(path) is dirty:  # not recorded meanwhile (a marker's files go first)
                        self._looked_at(path, dirty, now, folders)
        if self._dirty:
            due = min(min(d.last + QUIET_SECONDS, d.first + MAX_DIRTY_SECONDS) for d in self._dirty.values())
            self._look_timer = asyncio.get_running_loop().call_later(
                max(due - now, LOOK_AGAIN_AFTER), self._look
            )

    def _looked_at(self, rel: str, dirty: _Dirty, now: float, folders: OpenFolders) -> None:
        if now - dirty.first < MAX_DIRTY_SECONDS:
            st = self._storage.lstat(rel, folders.of(rel))  # no-follow folder fds: never past a symlink
            if st is not None and not stat.S_ISLNK(st.st_mode):  # a symlink is complete when it appears
                attr = (st.st_size, st.st_mtime_ns)
                if still_written(attr, dirty.seen, time.time_ns()) or (dirty.seen is None and dirty.created):
                    dirty.seen, dirty.last = attr, now
                    return
        del self._dirty[rel]
        self._record(rel)

    def _settle(self, rel: str) -> None:
        self._dirty.pop(rel, None)
