"""Reading a multi-process directory as one set of metrics, and compacting dead workers.

A scrape reads the archive and every worker's file under a shared directory lock, and adds
up each series over them: counters and histograms over every file (dead workers' too, until
compacted), gauges over live workers only, as their metric's ``multiprocess_mode`` says.
Files are parsed once and only their new entries after that, so a scrape costs a copy of
each file plus one addition per series and file.

When a scrape finds dead workers, it folds their counters and histograms into the archive
(with the directory to itself) and removes their files: the number of files stays at live
workers + 1 however many workers were recycled, and totals never go back. The archive
names the files it absorbed, so a compaction interrupted between writing the archive and
removing the files never counts them twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from metricsfacade import forking
from metricsfacade.exposition import Family
from metricsfacade.multiprocess.files import (
    ARCHIVE_NAME,
    ARCHIVE_TEMP,
    HEADER_SIZE,
    WORKER_SUFFIX,
    Layout,
    ParsedFile,
    SeriesRef,
    Snapshot,
    absorbed_entry,
    directory_lock,
    header,
    read_file,
    series_entry,
)
from metricsfacade.store import HistogramReading

logger = logging.getLogger("metricsfacade")


class Merged:
    """One metric's series, added up (or merged by the gauge mode) over the files read.

    A series is a float (counters, gauges) or a list (a histogram: sum, then each bucket's
    count; a ``latest`` gauge: value, time written), and each kind is merged by a loop of
    its own: a scrape does this once per series and file.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.series: dict[tuple[str, ...], Any] = {}

    def add(self, refs: list[SeriesRef], values: Any, worker: int) -> None:
        """Merge one file's series of this metric; ``values`` is the file as doubles."""
        layout, series = self.layout, self.series
        kind, mode = layout.kind, layout.mode
        if kind == "counter" or (kind == "gauge" and mode == "sum"):
            for labels, index in refs:
                series[labels] = series.get(labels, 0.0) + values[index]
        elif kind == "histogram":
            width = layout.width
            for labels, index in refs:
                new = values[index : index + width].tolist()
                total = series.get(labels)
                if total is None:
                    series[labels] = new
                else:
                    series[labels] = [a + b for a, b in zip(total, new, strict=True)]
        elif mode == "worker":
            pid = str(worker)
            for labels, index in refs:
                with_worker = (*labels, pid)
                series[with_worker] = values[index]
        elif mode == "latest":
            for labels, index in refs:
                seen = series.get(labels)
                if seen is None or values[index + 1] > seen[1]:
                    series[labels] = (values[index], values[index + 1])
        else:
            pick = max if mode == "max" else min
            for labels, index in refs:
                seen = series.get(labels)
                series[labels] = values[index] if seen is None else pick(seen, values[index])

    def family(self) -> Family:
        layout = self.layout
        label_names = layout.label_names
        series: list[tuple[tuple[str, ...], float | HistogramReading]]
        if layout.kind == "histogram":
            bounds = layout.bounds
            series = [
                (labels, HistogramReading(bounds, tuple(map(int, values[1:])), values[0]))
                for labels, values in self.series.items()
            ]
        elif layout.mode == "latest":
            series = [(labels, pair[0]) for labels, pair in self.series.items()]
        else:
            series = list(self.series.items())
            if layout.kind == "gauge" and layout.mode == "worker":
                label_names = (*label_names, "worker")
        return Family(layout.name, layout.render_kind, layout.help, label_names, series)

    def entries(self) -> list[tuple[tuple[str, ...], list[float]]]:
        """The series as values to write in an archive (counters and histograms)."""
        return [
            (labels, values if isinstance(values, list) else [values])
            for labels, values in self.series.items()
        ]


class DirectoryMerger:
    """Merges a directory's files at each scrape; keeps what it parsed between scrapes."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        #: one scrape at a time in this process: they share what was parsed
        self._lock = threading.Lock()
        self._parsed: dict[str, ParsedFile] = {}
        #: label values by their encoding: every worker's file repeats the same ones
        self._labels_of: dict[bytes, tuple[str, ...]] = {}
        self._warned: set[str] = set()
        forking.LOCKS.add(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def families(self) -> list[Family]:
        with self._lock:
            with directory_lock(self.directory, exclusive=False):
                snapshots = self._read_all()
            merged = self._merge(snapshots, live_gauges=True)
            if any(snapshot.dead for snapshot in snapshots):
                try:
                    self._compact()
                except OSError:  # a full disk, say: this scrape is served all the same
                    logger.exception("metricsfacade: compacting %s failed", self.directory)
            return [metric.family() for metric in merged.values()]

    def _read_all(self) -> list[Snapshot]:
        """Live workers newest first (the newest declaration of a metric wins when two
        disagree), then dead ones, then the archive. Files the archive absorbed are skipped."""
        snapshots = []
        archive = self._read(ARCHIVE_NAME)
        absorbed = archive.parsed.absorbed if archive is not None else frozenset()
        names = [
            name
            for name in os.listdir(self.directory)
            if name.endswith(WORKER_SUFFIX) and name not in absorbed
        ]
        for name in names:
            snapshot = self._read(name)
            if snapshot is not None:
                snapshots.append(snapshot)
        snapshots.sort(key=lambda snapshot: (snapshot.dead, -snapshot.parsed.started))
        if archive is not None:
            snapshots.append(archive)
        for name in set(self._parsed) - {*names, ARCHIVE_NAME}:
            del self._parsed[name]
        return snapshots

    def _read(self, name: str) -> Snapshot | None:
        snapshot = read_file(self.directory, name, self._parsed.get(name), self._labels_of)
        if snapshot is None:
            self._parsed.pop(name, None)
        else:
            self._parsed[name] = snapshot.parsed
        return snapshot

    def _merge(self, snapshots: Iterable[Snapshot], *, live_gauges: bool) -> dict[str, Merged]:
        """Add up the files' series by metric name. A metric whose layout differs between
        files (buckets changed between deploys) keeps the first layout met (the newest
        live worker's); the other series are left out, with a warning once."""
        merged: dict[str, Merged] = {}
        for snapshot in snapshots:
            parsed, values = snapshot.parsed, snapshot.values
            layouts = parsed.layouts
            newest = {layout.name: number for number, layout in enumerate(layouts)}
            for number, (layout, refs) in enumerate(zip(layouts, parsed.series, strict=True)):
                if newest[layout.name] != number:
                    continue  # re-declared in this process: its series start again
                if layout.kind == "gauge" and (snapshot.dead or not live_gauges):
                    continue
                target = merged.get(layout.name)
                if target is None:
                    target = merged[layout.name] = Merged(layout)
                elif not target.layout.merges_with(layout):
                    self._warn_conflict(layout.name)
                    continue
                target.add(refs, values, parsed.pid)
        return {name: metric for name, metric in merged.items() if metric.series}

    def _warn_conflict(self, name: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "metricsfacade: the metric %r has different labels, buckets or modes in the "
                "files of %s; the series of the newest declaration are served",
                name,
                self.directory,
            )

    def _compact(self) -> None:
        """Fold dead workers' counters and histograms into the archive, then remove their
        files (with the directory to itself: readers see the files before or after)."""
        with directory_lock(self.directory, exclusive=True):
            archive = self._read(ARCHIVE_NAME)
            absorbed = archive.parsed.absorbed if archive is not None else frozenset()
            present = set(os.listdir(self.directory))
            dead = []
            for name in sorted(present):
                if name.endswith(WORKER_SUFFIX) and name not in absorbed:
                    snapshot = self._read(name)
                    if snapshot is not None and snapshot.dead:
                        dead.append(snapshot)
            if not dead:
                return
            sources = [*dead, archive] if archive is not None else dead
            merged = self._merge(sources, live_gauges=False)
            names = [snapshot.name for snapshot in dead]
            still_there = [name for name in absorbed if name in present]
            self._write_archive(merged, [*names, *still_there])
            for name in [*names, *still_there]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))
                self._parsed.pop(name, None)

    def _write_archive(self, merged: dict[str, Merged], absorbed: list[str]) -> None:
        entries = [absorbed_entry(absorbed)]
        for number, metric in enumerate(merged.values()):
            entries.append(metric.layout.encode())
            for labels, values in metric.entries():
                entries.append(series_entry(number, labels, values))
        body = b"".join(entries)
        temp = os.path.join(self.directory, ARCHIVE_TEMP)
        with open(temp, "wb") as file:
            file.write(header(HEADER_SIZE + len(body), 0, 0.0) + body)
        os.replace(temp, os.path.join(self.directory, ARCHIVE_NAME))
