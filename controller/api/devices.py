"""A fleet's devices: inline ones plus those of its `deviceSource`, in git and Kubernetes mode.

Pure: where the text comes from is the caller's `read_devices` (a file of the repository in
git mode, `sources/repo.py`; ConfigMaps or a Flux artifact in Kubernetes mode), so both modes
parse, validate and check duplicates the same way, and problems point at the same place (the
part's label as file, the row as line). A large part is checked in pieces on forked workers
(`controller.parallel`), with the result of checking it here.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pydantic import ValidationError

from controller import parallel
from controller.api.csvindex import (
    changed_records,
    lines_of,
    plain_header,
    record_at,
    record_lines,
    record_starts,
)
from controller.api.loading import Located, field_path, friendly_message
from controller.api.problems import InvalidDeclaration, Problem
from controller.api.resources import ConfigMapKeyRef, Device, DeviceFleet, DeviceSource

DeviceLines = dict[str, tuple[str, int | None]]  # device id -> (file, line)
RowDigests = dict[str, bytes]  # device id -> SHA-256 of its row as declared
Parsed = tuple[tuple[Device, ...], DeviceLines, RowDigests]
Row = Device | dict[str, Any]  # a device, or its row as read (judged before: not validated yet)
RowIndex = dict[str, tuple[Row, bytes]]  # device id -> (device or row, row digest)
Judged = Callable[[bytes], bool]  # a row digest -> judged already (its certificate's source)
PartIndex = tuple[dict[str, int], list[tuple[int, str, str]]]  # id -> record start; columns
UNDIGESTED = b""  # the digest of a row of a deferred set, until it is asked for (`DeviceSet.row`)
PIECES_PER_WORKER = 2  # a part checked apart: so that the parent merges some as others run
NEVER_ZERO = " (a missing source is an error, never zero devices)"
KUBERNETES_ONLY = "only in Kubernetes mode (fleetpki operator)"


@dataclass(frozen=True, slots=True)
class DeviceText:
    """One part of a device source: `label` names it in problems (their `file`), e.g.
    `fleets/sensors.csv`, `ConfigMap/sensors-1 key devices.csv` or
    `GitRepository/fleet-repo@main@sha1:… fleets/x.csv`; `format` is `csv` or `jsonl`.
    `field` is where in `deviceSource` a problem with the whole part is reported
    (default: the source's main field, e.g. `path` or `configMapRef`)."""

    label: str
    text: str
    format: str
    field: str | None = None
    sha256: bytes | None = None  # of `text` in UTF-8, where the reader had those bytes

    def digest(self) -> bytes:
        """The SHA-256 of the text in UTF-8."""
        return self.sha256 or hashlib.sha256(self.text.encode()).digest()


class DeviceSourceError(Exception):
    """A device source that cannot be read: the fleet gets a problem and no devices (never
    zero devices). `field` is relative to `deviceSource` (`path`, `configMapRef[1]`,
    `sourceRef`); the problem says `cannot read device source <source>: <message>`, where
    `source` defaults to a description of the declared source."""

    def __init__(self, message: str, *, field: str | None = None,
                 source: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.source = source


class UnsupportedDeviceSource(DeviceSourceError):
    """A form of `deviceSource` this mode does not read (e.g. `configMapRef` in git mode): a
    declaration problem, reported with its message as it is."""


ReadDevices = Callable[[DeviceSource], list[DeviceText]]


def parse_device_rows(text: str, fmt: str, begin: int = 0, end: int | None = None
                      ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset where its record begins, line, raw device dict) per row of CSV or JSONL text,
    one at a time; CSV columns `labels.<key>` become labels, `revoked` the revocation reason.
    From `begin` to `end` (records' starts; a CSV's header is read first), lines are counted
    from `begin`. ValueError or csv.Error where the text is malformed."""
    start = begin
    if fmt == "jsonl":
        for number, entry in enumerate(lines_of(text, None, begin, end), start=1):
            if entry.strip():
                try:
                    device = json.loads(entry)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {number}: invalid JSON: {exc.msg}") from None
                if not isinstance(device, dict):
                    raise ValueError(f"line {number}: a device is a JSON object, not "
                                     f"{type(device).__name__}")
                yield start, number, device
            start += len(entry)
        return
    position = [0]
    reader = csv.reader(lines_of(text, position))  # read as csv.DictReader would, at less cost
    header = next(reader, None)
    if not header or "id" not in header:
        raise ValueError("CSV needs a header row with an 'id' column")
    columns = _csv_columns(header)
    if begin or end is not None:
        position[0] = max(begin, position[0])
        reader = csv.reader(lines_of(text, position, position[0], end))
    start = position[0]
    for values in reader:
        if values:  # else a blank line
            if len(values) > len(header):
                raise ValueError(f"line {reader.line_num}: more values than header columns")
            yield start, reader.line_num, _csv_device(values, columns)
        start = position[0]


LABEL, REVOKED, FIELD = "label", "revoked", "field"


def _csv_device(values: list[str], columns: list[tuple[int, str, str]]) -> dict[str, Any]:
    """The raw device of a CSV record's values (`columns` of its header)."""
    count = len(values)
    device: dict[str, Any] = {"labels": {}}
    for index, kind, key in columns:
        value = values[index] if index < count else None  # missing columns: None
        if not value:
            continue
        if kind == LABEL:
            device["labels"][key] = value
        elif kind == REVOKED:
            device["revoked"] = {"reason": value}
        else:
            device[key] = value
    return device


def _csv_columns(header: list[str]) -> list[tuple[int, str, str]]:
    """(value index, kind, key) per distinct column, in the order of a dict made of the row
    (a repeated column: its first place, its last value), as DictReader made them."""
    last = {column: index for index, column in enumerate(header)}
    return [(last[column], LABEL, column.removeprefix("labels.")) if column.startswith("labels.")
            else (last[column], REVOKED, column) if column == "revoked"
            else (last[column], FIELD, column)
            for column in dict.fromkeys(header)]


def main_field(source: DeviceSource) -> str:
    """The field of `deviceSource` a problem with the whole source is reported at."""
    if source.configMapRef is not None:
        return "configMapRef"
    return "sourceRef" if source.sourceRef is not None else "path"


def describe(source: DeviceSource) -> str:
    """The declared source as problems name it."""
    if source.configMapRef is not None:
        return ", ".join(f"ConfigMap/{ref.name} key {ref.key}" for ref in source.configMapRef)
    if source.sourceRef is not None:
        return f"{source.sourceRef.kind}/{source.sourceRef.name} file {source.path!r}"
    return repr(source.path)


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """What the planner, policies and status need of a fleet's devices without the devices:
    kept in the inventory with the fleet's content hash when it was applied."""

    count: int
    declared: int  # not revoked


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """A fleet's rows that differ from the text last applied (`DeviceSet.parse_changes`); every
    other row is as it was then."""

    changed: dict[str, tuple[Device, bytes]]  # id -> device and row digest, new or changed
    removed: tuple[str, ...]  # ids declared then, not now
    before: frozenset[str]  # the ids of changed rows and removed ones declared then
    applied: DeviceSummary  # the counts then

    @property
    def ids(self) -> list[str]:
        return [*self.changed, *self.removed]


class Share(NamedTuple):
    """Consecutive rows of a checked set, walked apart from the others (`DeviceSet.shares`)."""

    inline: bool  # the fleet's inline devices, which come first
    segments: tuple[tuple[int, int, int], ...]  # (part number, first record's start, end)


class DeviceSet:
    """A fleet's devices as declared: the inline ones and the text of each `deviceSource` part.

    `digest` covers exactly that text, so a fleet whose declaration is what was last applied
    can be planned with a `DeviceSummary` and no parsing (`defer`); the rows are then parsed
    on first use, e.g. when a renewal falls due or a device enrolls. Parsing a deferred set
    that has problems (rows valid when applied that this version refuses) raises
    InvalidDeclaration.

    A set is checked row by row once (`parse`: problems, duplicate ids, counts) and keeps no
    row, only where each record begins: a million validated rows are gigabytes. The planner
    reads its rows again one at a time (`walk`), and a row asked for alone is read from its
    place (`row`). A set with problems keeps its valid rows, as read when checked.

    A row already judged (`parse(problems, judged)`: its digest, under the fleet and profile,
    is its active certificate's source) is not validated when checked, only when asked for.

    A set compared with the text last applied (`parse_changes`) has its `changes` parsed and
    validated; the rows alike in both are read when asked for, as a deferred set's."""

    def __init__(self, item: Located | None, parts: list[DeviceText], digest: str) -> None:
        self._item = item
        self._parts = parts
        self.digest = digest
        self.files = tuple(dict.fromkeys(part.label for part in parts))
        self._parsed: Parsed | None = None  # every device validated
        self._summary: DeviceSummary | None = None
        self._deferred = False
        self._checked = False  # every row checked, none kept (`_indexes` says where each is)
        self._rows: RowIndex | None = None  # id -> (device, or its row not validated yet; digest)
        self._lines: DeviceLines = {}
        # per part: where its records begin (`csvindex`) and its header's columns, if indexed
        self._indexes: list[PartIndex | None] | None = None
        self._found: dict[str, tuple[Device, bytes]] = {}  # changed rows, by id
        self.changes: DeviceChanges | None = None

    @classmethod
    def of(cls, devices: tuple[Device, ...], lines: DeviceLines) -> DeviceSet:
        """Devices already parsed (tests, and a source that could not be read: none)."""
        digest = hashlib.sha256(json.dumps(
            [d.model_dump(mode="json", exclude_defaults=True) for d in devices],
            sort_keys=True).encode()).hexdigest()
        made = cls(None, [], digest)
        made._parsed = (devices, lines, {d.id: _inline_digest(d) for d in devices})
        made._rows = {d.id: (d, made._parsed[2][d.id]) for d in devices}
        made._lines = lines
        return made

    def parse(self, problems: list[Problem], judged: Judged | None = None) -> None:
        """Parse now, reporting bad rows and duplicate ids to `problems`. A row whose digest is
        `judged` is not validated now (see `row`)."""
        if self._rows is not None or self._checked:
            return
        assert self._item is not None
        first = len(problems)
        read = _parse(self._item, self._parts, problems, judged, self._deferred,
                      keep=self._deferred)
        if read.indexes is not None and len(problems) > first:  # invalid: kept, as ever
            read = _parse(self._item, self._parts, [], judged, self._deferred, keep=True)
        if self._summary is None:
            self._summary = read.summary
        if read.indexes is None:
            self._rows, self._lines = read.rows, read.lines
            self._parts = []  # the text is not needed any more
        else:
            self._indexes, self._checked = list(read.indexes), True

    def defer(self, summary: DeviceSummary | None) -> None:
        """Known unchanged since it was applied (or judged elsewhere, e.g. a pull request's
        base): parse only when the devices are asked for; `summary` None: counted when asked."""
        self._summary = summary
        self._deferred = True

    def parse_changes(self, previous: DeviceSet, problems: list[Problem]) -> bool:
        """Parse only the rows that differ from `previous`, the set last applied (the caller
        checked its content hash and deferred it, with the counts kept then if any), reporting
        bad ones to `problems`. False, and nothing done, where the two cannot be compared record
        by record (not one plain CSV part each, another header, a record not read alone, an id
        also declared inline, a previous text that cannot be counted): then the whole text is
        parsed."""
        item = self._item
        if item is None or not isinstance(fleet := item.resource, DeviceFleet) \
                or len(self._parts) != 1 or len(previous._parts) != 1:
            return False
        part, old = self._parts[0], previous._parts[0]
        if part.label != old.label or {part.format, old.format} != {"csv"}:
            return False
        try:
            summary = previous.summary
        except InvalidDeclaration:  # a pull request's base, not applied: its problems later
            return False
        found = changed_records(old.text, part.text, summary.count)
        inline = {device.id for device in fleet.spec.devices}
        if found is None or not inline.isdisjoint(found.changed):
            return False
        columns = _csv_columns(found.header)
        rows: dict[str, tuple[Device, bytes]] = {}
        declared = summary.declared - sum(
            1 for values in found.before.values() if "revoked" not in _csv_device(values, columns))
        for device_id, (line, values) in found.changed.items():
            raw = _csv_device(values, columns)
            declared += "revoked" not in raw
            self._lines[device_id] = (part.label, line)
            if (valid := _validate(item, raw, part.label, line, problems)) is not None:
                rows[device_id] = (valid, _row_digest(raw))
        added = sum(1 for device_id in found.changed if device_id not in found.before)
        self.defer(DeviceSummary(summary.count + added - len(found.removed), declared))
        if found.indexed is not None:  # else indexed when a row is read alone (`_search`)
            self._indexes = [(found.indexed.starts, columns)]
        self._found.update(rows)
        self.changes = DeviceChanges(rows, tuple(found.removed), frozenset(found.before),
                                     summary)
        return True

    @property
    def parsed(self) -> Parsed:
        """Devices, where each is declared, and the digest of each device's row."""
        if self._parsed is None:
            problems: list[Problem] = []
            devices: list[Device] = []
            digests: RowDigests = {}
            for device_id, value, digest, file, line in self._every_row(problems):
                device: Device | None = value if isinstance(value, Device) else None
                if device is None:
                    assert self._item is not None and isinstance(value, dict)
                    device = _validate(self._item, value, file, line or 0, problems)
                if device is not None:
                    devices.append(device)
                    digests[device_id] = _digested(value, digest)
            if problems:
                raise InvalidDeclaration(problems)
            self._parsed = (tuple(devices), self.lines, digests)
        return self._parsed

    @property
    def rows(self) -> RowIndex:
        """Id -> (device or its row as read, digest), in declared order. A deferred set (unchanged
        since an apply that found no problem in it) is read without validating any row. Every
        row is kept from then on: `walk` reads them one at a time."""
        problems: list[Problem] = []
        self.parse(problems)
        if problems:
            raise InvalidDeclaration(problems)
        if self._rows is None:  # checked: read again, kept now
            rows: RowIndex = {}
            lines: DeviceLines = {}
            for device_id, value, digest, file, line in self._every_row():
                rows[device_id], lines[device_id] = (value, digest), (file, line)
            self._rows, self._lines = rows, lines
        return self._rows

    def walk(self, share: Share | None = None) -> Iterator[tuple[str, Row, bytes]]:
        """Each device's id, its device or row as read (`device` validates it) and its row
        digest, in declared order: a checked set's rows read from its text again, one at a
        time; with a `share` (of `shares`), its rows alone. InvalidDeclaration if the set has
        problems not reported before."""
        if share is None:
            for device_id, value, digest, *_ in self._every_row():
                yield device_id, value, _digested(value, digest)
            return
        assert self._item is not None and isinstance(self._item.resource, DeviceFleet)
        if share.inline:
            for device in self._item.resource.spec.devices:
                yield device.id, device, _inline_digest(device)
        for number, begin, end in share.segments:
            part = self._parts[number]
            for _, _, raw in parse_device_rows(part.text, part.format, begin, end):
                yield raw["id"], raw, _row_digest(raw)

    def shares(self, count: int) -> list[Share]:
        """The walk cut into `count` consecutive shares of about as many rows, to be walked
        apart (on several cores); none where the set is not checked (its rows are kept or not
        read yet: walk it whole)."""
        indexes = self._indexes
        if not self._checked or self._rows is not None or indexes is None or count < 2 \
                or any(index is None for index in indexes):
            return []
        counts = [len(index[0]) for index in indexes if index is not None]
        each = max(-(-sum(counts) // count), 1)
        made: list[Share] = []
        for first in range(0, max(sum(counts), 1), each):
            segments: list[tuple[int, int, int]] = []
            base = 0
            for number, (part, index) in enumerate(zip(self._parts, indexes, strict=True)):
                low, high = max(first - base, 0), min(first + each - base, counts[number])
                base += counts[number]
                if index is not None and low < high:
                    starts = index[0].values()
                    begin = next(itertools.islice(starts, low, None))
                    end = (next(itertools.islice(starts, high, None)) if high < counts[number]
                           else len(part.text))
                    segments.append((number, begin, end))
            made.append(Share(not made, tuple(segments)))
        return made

    def _every_row(self, problems: list[Problem] | None = None
                   ) -> Iterator[tuple[str, Row, bytes, str, int | None]]:
        """(id, device or row as read, digest or UNDIGESTED, file, line) of every row, parsing
        first (its problems to `problems`, else raised)."""
        found: list[Problem] = [] if problems is None else problems
        self.parse(found)
        if problems is None and found:
            raise InvalidDeclaration(found)
        if self._rows is not None or not self._checked:
            for device_id, (value, digest) in list((self._rows or {}).items()):
                yield (device_id, value, digest, *self._lines.get(device_id, ("", None)))
            return
        item = self._item
        assert item is not None and isinstance(item.resource, DeviceFleet)
        for index, device in enumerate(item.resource.spec.devices):
            yield (device.id, device, _inline_digest(device), item.file,
                   item.line_of("spec", "devices", index, "id"))
        for part in self._parts:
            for _, line, raw in parse_device_rows(part.text, part.format):
                yield raw["id"], raw, _row_digest(raw), part.label, line

    @property
    def lines(self) -> DeviceLines:
        """Where each device is declared (file, line)."""
        if self._rows is None and self._checked:  # not kept: read again
            return {device_id: (file, line) for device_id, _, _, file, line in self._every_row()}
        self.rows  # noqa: B018 (parses)
        return self._lines

    def line_of(self, device_id: str) -> tuple[str, int | None] | None:
        """Where a device is declared; a changed row's place, or one of a checked set, is known
        without reading all."""
        if device_id in self._lines:
            return self._lines[device_id]
        for part, index in zip(self._parts, self._indexes or (), strict=False):
            if index is not None and (start := index[0].get(device_id)) is not None:
                return part.label, _record_lines(part, [start])[start]
        return self.lines.get(device_id)

    def find(self, device_id: str) -> Device | None:
        found = self.row(device_id)
        return found[0] if found else None

    def row(self, device_id: str) -> tuple[Device, bytes] | None:
        """The device and its row digest, if declared; a row not validated yet is validated
        now (`device`). A checked or deferred set's row is read alone where its part's records
        are indexed (`csvindex`)."""
        if self._rows is None and (self._deferred or self._checked):
            known, found = self._search(device_id)
            if known:
                return found
        if device_id not in self.rows:
            return None
        value, digest = self.rows[device_id]
        return self.device(value), _digested(value, digest)

    def indexed(self) -> bool:
        """Whether a row asked for is found without reading every row (`row`): rows kept, or
        each part's records indexed (indexed now, if not yet: before forking workers that
        read rows)."""
        if self._rows is not None:
            return True
        if not (self._deferred or self._checked):
            return False
        if self._indexes is None:
            self._indexes = [_index(part) for part in self._parts]
        return all(index is not None for index in self._indexes)

    def device(self, value: Row) -> Device:
        """The device of a row as read (`walk`), validated now if it was not; should it fail,
        every row is validated, raising InvalidDeclaration."""
        if isinstance(value, Device):
            return value
        assert self._item is not None
        device = _validate(self._item, value, "", 0, [])
        if device is None:
            self.parsed  # noqa: B018 (raises InvalidDeclaration naming every bad row)
            raise AssertionError(f"row of {value.get('id')!r} valid now")  # pragma: no cover
        return device

    def _search(self, device_id: str) -> tuple[bool, tuple[Device, bytes] | None]:
        """(True, the device and its row digest, or None if not declared) when the indexes of
        the parts tell, else (False, None): read every row. Every row counted by the summary
        indexed (inline devices aside) proves a device absent."""
        if device_id in self._found:
            return True, self._found[device_id]
        assert self._item is not None and isinstance(self._item.resource, DeviceFleet)
        for device in self._item.resource.spec.devices:
            if device.id == device_id:
                return True, (device, _inline_digest(device))
        if self._indexes is None:
            self._indexes = [_index(part) for part in self._parts]
        for part, index in zip(self._parts, self._indexes, strict=True):
            if index is None or (start := index[0].get(device_id)) is None:
                continue
            raw = _record(part, start, index[1])
            valid = _validate(self._item, raw, part.label, 0, [])
            if raw.get("id") != device_id or valid is None:
                return False, None  # read every row: it fails as a full parse does
            return True, (valid, _row_digest(raw))
        if self._summary is None or any(index is None for index in self._indexes):
            return False, None
        indexed = sum(len(index[0]) for index in self._indexes if index is not None)
        return indexed + len(self._item.resource.spec.devices) == self._summary.count, None

    @property
    def summary(self) -> DeviceSummary:
        """Counted once: validating a row later does not change whether it is revoked. A
        deferred set of CSV parts is counted as it is read, keeping no row."""
        if self._summary is None and self._rows is None and self._deferred:
            self._summary = _counted(self._item, self._parts)
        if self._summary is None:
            self.rows  # noqa: B018 (counted as parsed)
        if self._summary is None:  # devices given (`of`)
            values = [value for value, _ in self.rows.values()]
            self._summary = DeviceSummary(len(values),
                                          sum(1 for v in values if revoked(v) is None))
        return self._summary


def _counted(item: Located | None, parts: list[DeviceText]) -> DeviceSummary | None:
    """The devices and those not revoked, of inline devices and CSV parts, as reading every
    row would count them; None (read every row, with its problems) for JSONL, or where an id is
    missing or repeated, or a row is longer than its header."""
    if item is None or not isinstance(item.resource, DeviceFleet) \
            or any(part.format != "csv" for part in parts):
        return None
    inline = item.resource.spec.devices
    ids = {device.id for device in inline}
    if len(ids) < len(inline):
        return None
    declared = sum(1 for device in inline if device.revoked is None)
    try:
        for part in parts:
            reader = csv.reader(lines_of(part.text))
            header = next(reader, [])
            at = {column: index for index, column in enumerate(header)}  # the last of a name
            if "id" not in at:
                return None
            device, revoked, width = at["id"], at.get("revoked", len(header)), len(header)
            for values in reader:
                if not values:
                    continue
                if len(values) > width or device >= len(values) or not values[device] \
                        or values[device] in ids:
                    return None
                ids.add(values[device])
                declared += revoked >= len(values) or not values[revoked]
    except csv.Error:
        return None
    return DeviceSummary(len(ids), declared)


def _index(part: DeviceText) -> PartIndex | None:
    """Where a CSV part's records begin and its header's columns; None if not indexed."""
    index = record_starts(part.text) if part.format == "csv" else None
    return None if index is None else (index.starts, _csv_columns(index.header))


def revoked(value: Row) -> Any:
    """A device's or row's revocation, None if not revoked."""
    return value.revoked if isinstance(value, Device) else value.get("revoked")


def read_fleet_devices(item: Located, problems: list[Problem],
                       read_devices: ReadDevices) -> DeviceSet:
    """The fleet's inline devices and the text of its `deviceSource`, unparsed.

    A source that cannot be read is a problem and leaves the fleet with no devices (never
    zero devices by mistake)."""
    fleet = item.resource
    assert isinstance(fleet, DeviceFleet)
    source = fleet.spec.deviceSource
    digest = hashlib.sha256(json.dumps(
        [d.model_dump(mode="json", exclude_defaults=True) for d in fleet.spec.devices],
        sort_keys=True).encode())
    if source is None:
        return DeviceSet(item, [], digest.hexdigest())
    try:
        parts = read_devices(source)
    except UnsupportedDeviceSource as exc:
        _source_problem(item, problems, exc.message, exc.field or main_field(source))
        return DeviceSet.of((), {})
    except DeviceSourceError as exc:
        _source_problem(item, problems, f"cannot read device source "
                        f"{exc.source or describe(source)}: {exc.message}{NEVER_ZERO}",
                        exc.field or main_field(source))
        return DeviceSet.of((), {})
    for part in parts:
        for value in (part.label, part.format):
            digest.update(b"\0" + value.encode())
        digest.update(b"\0" + part.digest())
    return DeviceSet(item, parts, digest.hexdigest())


def _source_problem(item: Located, problems: list[Problem], message: str, field: str) -> None:
    where = [int(p) if p.isdigit() else p
             for p in field.replace("[", ".").replace("]", "").split(".")]
    problems.append(Problem(item.file, message, item.line_of("spec", "deviceSource", *where),
                            item.ref, f"spec.deviceSource.{field}"))


def _inline_digest(device: Device) -> bytes:
    return hashlib.sha256(repr(device.model_dump(mode="json", exclude_defaults=True)).encode()
                          ).digest()


class _Read(NamedTuple):
    rows: RowIndex  # every row, or (`indexes` given) none
    lines: DeviceLines
    indexes: tuple[PartIndex, ...] | None  # rows checked, not kept: where each part's begin
    summary: DeviceSummary


def _parse(item: Located, parts: list[DeviceText], problems: list[Problem],
           judged: Judged | None = None, deferred: bool = False, keep: bool = True) -> _Read:
    """Inline devices plus every part's rows. A part that cannot be parsed is a problem and
    leaves the fleet with no devices; a bad row is a problem at its part's label and line; a
    device id may appear once across inline devices and all parts. A row's digest is over the
    row as read (a row written differently is a changed row, never the reverse); a row whose
    digest is `judged` is kept as read, not validated. The rows of a `deferred` set (judged all
    when it was applied) are kept as read, and digested when asked for (`DeviceSet.row`).
    Unless `keep`, no row is kept: where each part's records begin is."""
    fleet = item.resource
    assert isinstance(fleet, DeviceFleet)
    rows: RowIndex = {}
    lines: DeviceLines = {}
    starts_of: list[dict[str, int]] = []  # per part, unless kept
    counts = [0, 0]  # devices, not revoked
    duplicates: list[tuple[int, str]] = []  # (problem index, id): its first place said after

    def add(device_id: str, value: Row, file: str, line: int | None, digest: bytes,
            starts: dict[str, int] | None = None, start: int = 0) -> None:
        if device_id in lines or any(device_id in known for known in starts_of):
            duplicates.append((len(problems), device_id))
            problems.append(Problem(file, f"duplicate device id {device_id!r}", line, item.ref,
                                    "id"))
            return
        counts[0] += 1
        counts[1] += revoked(value) is None
        if starts is None:
            lines[device_id] = (file, line)
            rows[device_id] = (value, digest)
        else:
            starts[device_id] = start

    for index, device in enumerate(fleet.spec.devices):
        add(device.id, device, item.file, item.line_of("spec", "devices", index, "id"),
            _inline_digest(device))
    first_row_problem = len(problems)
    unreadable: list[Problem] = []
    for part in parts:  # rows read one at a time: never a second copy of a large text
        starts: dict[str, int] | None = None if keep else {}
        if starts is not None:
            starts_of.append(starts)
            if (apart := _checked_apart(item, part, judged, [lines, *starts_of])) is not None:
                starts.update(apart[0])
                counts[0], counts[1] = counts[0] + apart[1], counts[1] + apart[2]
                continue
        try:
            for start, line, raw in parse_device_rows(part.text, part.format):
                device_id = raw.get("id")
                if deferred and isinstance(device_id, str):
                    add(device_id, raw, part.label, line, UNDIGESTED)
                    continue
                digest = _row_digest(raw) if keep or judged is not None else UNDIGESTED
                if judged is not None and isinstance(device_id, str) and judged(digest):
                    add(device_id, raw, part.label, line, digest, starts, start)
                elif (valid := _validate(item, raw, part.label, line, problems)) is not None:
                    add(valid.id, valid, part.label, line, digest, starts, start)
        except (ValueError, csv.Error) as exc:
            source = fleet.spec.deviceSource
            assert source is not None
            _source_problem(item, unreadable, f"cannot read device source {part.label!r}: "
                            f"{exc}{NEVER_ZERO}", part.field or main_field(source))
    if unreadable:  # the whole source is the problem, not the rows read before it
        del problems[first_row_problem:]
        problems.extend(unreadable)
        return _Read({}, {}, None, DeviceSummary(0, 0))
    if duplicates:
        places = _first_places(lines, parts, starts_of, {d for _, d in duplicates})
        for at, device_id in duplicates:
            first_file, first_line = places[device_id]
            problems[at] = replace(problems[at], message=f"duplicate device id {device_id!r} "
                                   f"(first at {first_file}:{first_line})")
    summary = DeviceSummary(*counts)
    if keep:
        return _Read(rows, lines, None, summary)
    return _Read({}, {}, tuple((starts, _header_columns(part))
                               for part, starts in zip(parts, starts_of, strict=True)), summary)


def _checked_apart(item: Located, part: DeviceText, judged: Judged | None,
                   known: list[Mapping[str, Any]]) -> tuple[dict[str, int], int, int] | None:
    """Where each record of a large part begins and its devices and those not revoked, the part
    checked in consecutive pieces on forked workers (`parallel`); None, to check it here, where
    a piece has a problem or an id is twice (in the part, or in `known` ids) or this cannot
    work apart (one core, few rows, a CSV not of the plain shape)."""
    workers = parallel.worker_count(part.text.count("\n"))
    pieces = _pieces(part, workers * PIECES_PER_WORKER) if workers else []
    if len(pieces) < 2:
        return None
    starts: dict[str, int] = {}
    count = declared = 0
    for found in itertools.chain.from_iterable(parallel.mapped(
            functools.partial(_check_piece, item, part, judged), pieces, 1, None, workers)):
        if found is None or not all(found[0].keys().isdisjoint(ids.keys())
                                    for ids in (starts, *known)):
            return None
        starts.update(found[0])
        count, declared = count + found[1], declared + found[2]
    return starts, count, declared


def _pieces(part: DeviceText, count: int) -> list[tuple[int, int]]:
    """About `count` consecutive pieces of the part's records, (begin, end) each: cut at line
    breaks outside quoted fields (an even number of quotes before: only in a CSV whose quotes
    are its quoted fields' own, `csvindex`); none for another CSV."""
    text = part.text
    first = 0
    if part.format == "csv":
        if plain_header(text) is None:
            return []
        first = text.find("\n") + 1
    cuts, quotes, counted = [first], 0, first
    for number in range(1, count):
        at = text.find("\n", max(first + (len(text) - first) * number // count, cuts[-1]))
        while at >= 0:  # a JSONL line break is never in a string
            quotes += text.count('"', counted, at)
            counted = at
            if part.format == "jsonl" or quotes % 2 == 0:
                break
            at = text.find("\n", at + 1)
        if at < 0 or at + 1 >= len(text):
            break
        cuts.append(at + 1)
    cuts.append(len(text))
    return [(begin, end) for begin, end in itertools.pairwise(cuts) if begin < end]


def _check_piece(item: Located, part: DeviceText, judged: Judged | None,
                 piece: tuple[int, int]) -> tuple[dict[str, int], int, int] | None:
    """A piece of `_checked_apart`, on a worker: None at its first problem."""
    starts: dict[str, int] = {}
    declared = 0
    try:
        for start, _, raw in parse_device_rows(part.text, part.format, *piece):
            value: Row = raw
            if not (judged is not None and isinstance(raw.get("id"), str)
                    and judged(_row_digest(raw))):
                if (valid := _validate(item, raw, part.label, 0, [])) is None:
                    return None
                value = valid
            if raw["id"] in starts:
                return None
            starts[raw["id"]] = start
            declared += revoked(value) is None
    except (ValueError, csv.Error):
        return None
    return starts, len(starts), declared


def _first_places(lines: DeviceLines, parts: list[DeviceText],
                  starts_of: list[dict[str, int]], wanted: set[str]) -> DeviceLines:
    """Where each of the `wanted` ids, kept in `lines` or `starts_of` (per part), is declared."""
    places = {device_id: lines[device_id] for device_id in wanted if device_id in lines}
    for part, starts in zip(parts, starts_of, strict=False):
        mine = {device_id: starts[device_id] for device_id in wanted if device_id in starts}
        found = _record_lines(part, list(mine.values()))
        places.update((device_id, (part.label, found[start])) for device_id, start in mine.items())
    return places


def _header_columns(part: DeviceText) -> list[tuple[int, str, str]]:
    """The columns of a CSV part's header (read already: it has one); none for JSONL."""
    return _csv_columns(next(csv.reader(lines_of(part.text)))) if part.format == "csv" else []


def _record(part: DeviceText, start: int, columns: list[tuple[int, str, str]]) -> dict[str, Any]:
    """The raw device of the part's record beginning at `start` (`columns`: of a CSV header)."""
    if part.format == "jsonl":
        end = part.text.find("\n", start) + 1 or len(part.text)
        return dict(json.loads(part.text[start:end]))
    return _csv_device(record_at(part.text, start), columns)


def _record_lines(part: DeviceText, starts: list[int]) -> dict[int, int]:
    """By start, the line on which the part's record beginning there ends."""
    return record_lines(part.text, starts, one_line=part.format == "jsonl")


def _row_digest(raw: dict[str, Any]) -> bytes:
    return hashlib.sha256(repr(raw).encode()).digest()


def _digested(value: Row, digest: bytes) -> bytes:
    """`digest`, or the digest of a row kept UNDIGESTED."""
    if digest:
        return digest
    assert isinstance(value, dict)
    return _row_digest(value)


def _validate(item: Located, raw: dict[str, Any], file: str, line: int,
              problems: list[Problem]) -> Device | None:
    """The row as a Device, or None and its problems (at `file`:`line`)."""
    try:
        return Device.model_validate(raw)
    except ValidationError as exc:
        problems.extend(Problem(file, friendly_message(error), line, item.ref,
                                field_path(error["loc"]) or None) for error in exc.errors())
        return None


def configmap_device_text(
    ref: ConfigMapKeyRef, configmap: Mapping[str, Any] | None, source: DeviceSource,
    index: int = 0,
) -> DeviceText:
    """The part of a ConfigMap object (as the Kubernetes API returns it; None when it does
    not exist) that `configMapRef[index]` names; DeviceSourceError if absent or not text."""
    where = f"ConfigMap/{ref.name}"
    field = f"configMapRef[{index}]"
    label = f"{where} key {ref.key}"
    if configmap is None:
        raise DeviceSourceError("not found in the fleet's namespace", field=field, source=where)
    data = configmap.get("data") or {}
    binary = configmap.get("binaryData") or {}
    if ref.key in data:
        text = data[ref.key]
        if not isinstance(text, str):
            raise DeviceSourceError(f"key {ref.key} is not text", field=field, source=where)
        text = text.removeprefix("\ufeff")
    elif ref.key in binary:
        try:
            text = base64.b64decode(binary[ref.key], validate=True).decode("utf-8-sig")
        except (binascii.Error, TypeError, UnicodeDecodeError) as exc:
            raise DeviceSourceError(f"binaryData key {ref.key} is not UTF-8 text: {exc}",
                                    field=field, source=where) from None
    else:
        keys = sorted({*data, *binary})
        raise DeviceSourceError(f"has no key {ref.key!r} (keys: {', '.join(keys) or 'none'})",
                                field=f"{field}.key", source=where)
    return DeviceText(label, text, source.resolved_format(ref.key), field)
