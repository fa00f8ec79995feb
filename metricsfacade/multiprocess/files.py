"""The files of a multi-process directory: one per live worker process, plus one archive.

Every file has the same layout (native byte order; every entry starts 8-byte aligned, so
each value is one aligned double that a reader in another process never sees half-written)::

    header, 64 bytes: magic, bytes used, pid, start time (Unix seconds)
    entries:          u32 length, u32 type, payload, then the values

A METRIC entry describes a metric (JSON: name, kind, help, labels, bounds, mode); metrics
are numbered in the order they appear. A SERIES entry holds its metric's number, its label
values (JSON) and the series' values: a counter has 1 (its value), a gauge 2 (value, time
written), a histogram 1 + buckets (sum, then the count of each bucket, +Inf last). An
ABSORBED entry (archive only) names the worker files whose values the archive holds.

A worker appends an entry, then advances "bytes used", so readers never parse half an
entry. Values are written in place by the recording thread (see ``SeriesStore.share``), so a
worker killed with SIGKILL loses nothing: its pages belong to the file, not the process.

A live worker holds an exclusive ``flock`` on its file; the kernel releases it when the
process ends, however it ends, so "can I lock it?" tells a dead worker's file from a live
one, whatever pids the system reuses.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from metricsfacade.multiprocess import cells
from metricsfacade.spec import Kind, MetricSpec
from metricsfacade.store import Cell

try:
    import fcntl
except ModuleNotFoundError:  # pragma: no cover - Windows, where multiprocess_dir is refused
    fcntl = None  # type: ignore[assignment]

MAGIC = b"MFMP\x00\x01\x00\x00"
HEADER = struct.Struct("=8sQQd32x")
HEADER_SIZE = HEADER.size
ENTRY = struct.Struct("=II")
SERIES_HEAD = struct.Struct("=II")  # metric number, label JSON length
USED_AT = 8  # where the header keeps "bytes used"

METRIC, SERIES, ABSORBED = 1, 2, 3

WORKER_SUFFIX = ".mfw"
ARCHIVE_NAME = "archive.mfa"
ARCHIVE_TEMP = "archive.tmp"
SERIES_KEYS = "series.keys"

INITIAL_SIZE = 1 << 16


@attrs.frozen
class Layout:
    """What a METRIC entry says: enough to render the metric without its declaration."""

    name: str  # the exposed family name (a counter's without ``_total``)
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    label_names: tuple[str, ...]
    bounds: tuple[float, ...]  # a histogram's upper bounds, +Inf implicit; else ()
    mode: str  # a gauge's multiprocess_mode

    @classmethod
    def of(cls, spec: MetricSpec) -> Layout:
        kind = "histogram" if spec.kind.has_buckets else spec.kind.value
        return cls(
            spec.key, kind, spec.help, spec.label_names, spec.buckets or (), spec.multiprocess_mode
        )

    @property
    def width(self) -> int:
        """How many doubles one series of this metric takes."""
        if self.kind == "histogram":
            return 2 + len(self.bounds)
        return 2 if self.kind == "gauge" else 1

    @property
    def render_kind(self) -> Kind:
        return Kind(self.kind)

    def merges_with(self, other: Layout) -> bool:
        """Series of the two can be added up (the help text may differ)."""
        return (self.kind, self.label_names, self.bounds, self.mode) == (
            other.kind,
            other.label_names,
            other.bounds,
            other.mode,
        )

    def encode(self) -> bytes:
        fields = [self.name, self.kind, self.help, self.label_names, self.bounds, self.mode]
        return _entry(METRIC, json.dumps(fields).encode())


def series_entry(metric_number: int, label_values: tuple[str, ...], values: list[float]) -> bytes:
    """A SERIES entry; its values start at the returned bytes' length minus 8 * len(values)."""
    labels = json.dumps(label_values).encode()
    head = SERIES_HEAD.pack(metric_number, len(labels)) + labels
    head += b"\0" * (-(ENTRY.size + len(head)) % 8)
    return _entry(SERIES, head + struct.pack(f"={len(values)}d", *values))


def absorbed_entry(names: list[str]) -> bytes:
    return _entry(ABSORBED, json.dumps(sorted(names)).encode())


def _entry(entry_type: int, payload: bytes) -> bytes:
    payload += b"\0" * (-(ENTRY.size + len(payload)) % 8)
    return ENTRY.pack(ENTRY.size + len(payload), entry_type) + payload


def header(used: int, pid: int, started: float) -> bytes:
    return HEADER.pack(MAGIC, used, pid, started)


@contextmanager
def directory_lock(directory: str, *, exclusive: bool) -> Iterator[None]:
    """Readers share the directory; compaction has it alone (it replaces the archive and
    removes dead workers' files, which a reader must see both or neither of)."""
    fd = os.open(directory, os.O_RDONLY)
    _lock_fds.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        _lock_fds.discard(fd)
        os.close(fd)


#: the descriptors holding a directory lock now: a child forked meanwhile closes its copies,
#: or it would hold the lock for as long as it lives
_lock_fds: set[int] = set()


def is_dead(fd: int) -> bool:
    """Whether the worker that wrote this file has ended (its lock is free)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


class WorkerFile:
    """This process's file in a directory: series are appended once, values written in place.

    Mappings are never unmapped while the process lives: when the file grows, a new mapping
    covers it and cells keep writing through the one they were given (both map the same
    pages of the file).
    """

    def __init__(self, directory: str, store: object) -> None:
        self.directory = directory
        self._store = weakref.ref(store)  # weak: _files keys on the store
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._metrics: dict[Layout, int] = {}
        self._series: dict[tuple[int, tuple[str, ...]], tuple[memoryview[float], int]] = {}
        os.makedirs(directory, exist_ok=True)
        self._budget = SharedBudget(os.path.join(directory, SERIES_KEYS))
        # Created and locked while the directory is shared: compaction (exclusive) never
        # sees this file unlocked and takes it for a dead worker's.
        with directory_lock(directory, exclusive=False):
            name = f"{self.pid}-{secrets.token_hex(4)}{WORKER_SUFFIX}"
            self.path = os.path.join(directory, name)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.ftruncate(self._fd, INITIAL_SIZE)
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview[float]] = []
        first = self._map(INITIAL_SIZE)
        self._used = HEADER_SIZE
        first[:HEADER_SIZE] = header(self._used, self.pid, time.time())
        #: the header as unsigned 64-bit words, to advance "bytes used"
        self._header = memoryview(first).cast("Q")

    def share(self, cell: Cell, spec: MetricSpec, label_values: tuple[str, ...]) -> None:
        """Point a cell at its series' values in this file (see ``cells``)."""
        latest = spec.multiprocess_mode == "latest"
        cells.share(cell, *self._slot(spec, label_values), stamped=latest)

    def unshare(self, cell: Cell) -> None:
        cells.unshare(cell)

    def _slot(
        self, spec: MetricSpec, label_values: tuple[str, ...]
    ) -> tuple[memoryview[float], int]:
        """The doubles of the file and the index of a series' first value there, appended
        (all zero) on first use. Cells assign ``view[index] = value``: one aligned 8-byte
        store, which a reader never sees half done (``struct.pack_into`` would zero the
        bytes first, and a reader could see 0)."""
        layout = Layout.of(spec)
        identity = attrs.evolve(layout, help="")  # a new help text is the same metric
        with self._lock:
            number = self._metrics.get(identity)
            if number is None:
                number = self._metrics[identity] = len(self._metrics)
                self._append(layout.encode())
            key = (number, label_values)
            slot = self._series.get(key)
            if slot is None:
                entry = series_entry(number, label_values, [0.0] * layout.width)
                end = self._append(entry) + len(entry)
                slot = self._series[key] = (self._views[-1], end // 8 - layout.width)
            return slot

    def _append(self, entry: bytes) -> int:
        """Write an entry, then publish it by advancing "bytes used"; return where it is."""
        at = self._used
        end = at + len(entry)
        page = self._maps[-1]
        if end > len(page):
            size = max(2 * len(page), end + INITIAL_SIZE)
            os.ftruncate(self._fd, size)
            page = self._map(size)
        page[at:end] = entry
        self._used = end
        self._header[USED_AT // 8] = end  # one aligned store: readers see old or new
        return at

    def _map(self, size: int) -> mmap.mmap:
        page = mmap.mmap(self._fd, size)
        self._maps.append(page)
        self._views.append(memoryview(page).cast("d"))
        return page

    def for_this_process(self) -> WorkerFile:
        """Called by the store in a forked child: it is alive."""
        store = self._store()
        assert store is not None
        return worker_file(self.directory, store)

    def admits(self, spec: MetricSpec, label_values: tuple[str, ...], limit: int) -> bool:
        """Whether a new series fits in the cardinality budget of every process together."""
        return self._budget.admits(f"{spec.key}\0{json.dumps(label_values)}", limit)

    def abandon(self) -> None:
        """In a forked child: let go of the parent's file (its lock is the parent's)."""
        self._header.release()
        for view in self._views:
            view.release()
        for page in self._maps:
            page.close()
        os.close(self._fd)


class SharedBudget:
    """The series every process of the directory created, one line each in a shared file:
    a new series is admitted while they number fewer than the cardinality limit. Only the
    first use of a label set in a process comes here; recording never does."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._known: set[str] = set()
        self._read_to = 0

    def admits(self, key: str, limit: int) -> bool:
        if key in self._known:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size > self._read_to:
                added = os.pread(fd, size - self._read_to, self._read_to)
                self._known.update(added.decode().splitlines())
                self._read_to = size
            if key in self._known:
                return True
            if len(self._known) >= limit:
                return False
            line = f"{key}\n".encode()
            os.write(fd, line)
            self._read_to += len(line)
            self._known.add(key)
            return True
        finally:
            os.close(fd)


#: each store's file per directory: two facades of one process write files of their own
#: (their series may share names, metricsfacade's own metrics always do)
_files: weakref.WeakKeyDictionary[object, dict[str, WorkerFile]] = weakref.WeakKeyDictionary()
_files_lock = [threading.Lock()]  # made anew in a forked child


def worker_file(directory: str, store: object) -> WorkerFile:
    """The file ``store`` writes in ``directory`` from this process, made on first use, so
    re-configuring keeps writing where the values already are. A forked child gets a file
    of its own: the parent's holds the parent's values and lock."""
    directory = os.path.realpath(directory)
    with _files_lock[0]:
        files = _files.setdefault(store, {})
        current = files.get(directory)
        if current is not None and current.pid != os.getpid():
            current.abandon()
            current = None
        if current is None:
            current = files[directory] = WorkerFile(directory, store)
        return current


def _reset_after_fork() -> None:
    _files_lock[0] = threading.Lock()
    for fd in list(_lock_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


#: a series as parsed: its label values, and where its values start in the file (in doubles)
SeriesRef = tuple[tuple[str, ...], int]


@attrs.define
class ParsedFile:
    """What a file holds, parsed once and extended as the file grows."""

    identity: tuple[int, int]  # (device, inode): a replaced archive is parsed anew
    pid: int = 0
    started: float = 0.0
    parsed_to: int = HEADER_SIZE
    layouts: list[Layout] = attrs.Factory(list)
    #: the series of each metric, by the metric's number
    series: list[list[SeriesRef]] = attrs.Factory(list)
    absorbed: frozenset[str] = frozenset()

    def parse(self, data: bytes, used: int, labels_of: dict[bytes, tuple[str, ...]]) -> None:
        """Read the entries between what was parsed and ``used``. A malformed entry (a
        file of another version, or torn on a machine without ordered stores) stops
        parsing there until a later read. ``labels_of`` caches decoded label values:
        every worker's file holds the same ones."""
        at = self.parsed_to
        while at + ENTRY.size <= used:
            length, entry_type = ENTRY.unpack_from(data, at)
            if length < ENTRY.size or length % 8 or at + length > used:
                return
            body = data[at + ENTRY.size : at + length]
            try:
                self._take(entry_type, body, at + length, labels_of)
            except (ValueError, TypeError, IndexError, struct.error):
                return
            at += length
            self.parsed_to = at

    def _take(
        self, entry_type: int, body: bytes, end: int, labels_of: dict[bytes, tuple[str, ...]]
    ) -> None:
        if entry_type == METRIC:
            name, kind, help, labels, bounds, mode = json.loads(body.rstrip(b"\0"))
            self.layouts.append(
                Layout(name, kind, help, tuple(labels), tuple(map(float, bounds)), mode)
            )
            self.series.append([])
        elif entry_type == SERIES:
            number, label_length = SERIES_HEAD.unpack_from(body)
            text = body[SERIES_HEAD.size : SERIES_HEAD.size + label_length]
            labels = labels_of.get(text)
            if labels is None:
                labels = labels_of[text] = tuple(json.loads(text))
            self.series[number].append((labels, end // 8 - self.layouts[number].width))
        elif entry_type == ABSORBED:
            self.absorbed = frozenset(json.loads(body.rstrip(b"\0")))


@attrs.frozen
class Snapshot:
    """One file read at one moment: its parsed entries and a copy of its values."""

    name: str
    parsed: ParsedFile
    values: Any  # memoryview of doubles
    dead: bool


def read_file(
    directory: str,
    name: str,
    known: ParsedFile | None,
    labels_of: dict[bytes, tuple[str, ...]],
) -> Snapshot | None:
    """Read a file (None if it is gone or not ours), reusing what was parsed before."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # Found dead before the read, so a dead worker's values are final (read first, a
        # worker could write more, then end, and the archive would keep too little).
        dead = name != ARCHIVE_NAME and is_dead(fd)
        stat = os.fstat(fd)
        head = os.pread(fd, HEADER_SIZE, 0)
        if len(head) < HEADER_SIZE:
            return None
        magic, used, pid, started = HEADER.unpack(head)
        if magic != MAGIC or used < HEADER_SIZE or used % 8:
            return None
        data = os.pread(fd, used, 0)
        used = len(data) - len(data) % 8
    finally:
        os.close(fd)
    identity = (stat.st_dev, stat.st_ino)
    parsed = known if known is not None and known.identity == identity else None
    if parsed is None:
        parsed = ParsedFile(identity, pid, started)
    parsed.parse(data, used, labels_of)
    return Snapshot(name, parsed, memoryview(data[:used]).cast("d"), dead)
