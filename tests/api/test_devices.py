"""The device loader both modes share, with a fake `read_devices`; the deviceSource model."""

from __future__ import annotations

import base64
import csv
import gc
import io
import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from controller import parallel
from controller.api import devices as devices_module
from controller.api.devices import (
    DeviceSourceError,
    DeviceSummary,
    DeviceText,
    UnsupportedDeviceSource,
    configmap_device_text,
    parse_device_rows,
    read_fleet_devices,
)
from controller.api.loading import Located, field_path, parse_documents
from controller.api.problems import InvalidDeclaration, Problem
from controller.api.resources import Device, DeviceSource

from .support import FLEET, line_of

CONFIGMAPS = FLEET + """\
  deviceSource:
    configMapRef:
      - name: sensors-1
      - name: sensors-2
        key: more.jsonl
"""


def fleet(text: str = CONFIGMAPS) -> Located:
    (item,), problems = parse_documents(text, "fleets/sensors.yaml")
    assert problems == []
    return item


def load(parts: list[DeviceText] | DeviceSourceError, text: str = CONFIGMAPS
         ) -> tuple[list[str], dict[str, tuple[str, int | None]], list[Problem]]:
    seen: list[DeviceSource] = []

    def read(source: DeviceSource) -> list[DeviceText]:
        seen.append(source)
        if isinstance(parts, DeviceSourceError):
            raise parts
        return parts

    problems: list[Problem] = []
    device_set = read_fleet_devices(fleet(text), problems, read)
    device_set.parse(problems)
    devices, lines, _ = device_set.parsed
    assert len(seen) == 1
    return [d.id for d in devices], lines, problems


ONE = "ConfigMap/sensors-1 key devices.csv"
TWO = "ConfigMap/sensors-2 key more.jsonl"


def test_devices_of_all_parts_with_their_label_and_line() -> None:
    ids, lines, problems = load([DeviceText(ONE, "id\na\nb\n", "csv"),
                                 DeviceText(TWO, '{"id": "c"}\n\n{"id": "d"}\n', "jsonl")])
    assert problems == []
    assert ids == ["dev-1", "dev-2", "a", "b", "c", "d"]
    assert lines["b"] == (ONE, 3) and lines["d"] == (TWO, 3)
    assert lines["dev-1"] == ("fleets/sensors.yaml", line_of(CONFIGMAPS, "dev-1"))


def test_a_device_id_is_unique_across_inline_devices_and_all_parts() -> None:
    ids, _, problems = load([DeviceText(ONE, "id\na\ndev-2\n", "csv"),
                             DeviceText(TWO, '{"id": "x"}\n{"id": "a"}\n', "jsonl")])
    assert ids == ["dev-1", "dev-2", "a", "x"]
    assert [(p.file, p.line, p.field, p.object) for p in problems] == [
        (ONE, 3, "id", "DeviceFleet/sensors"), (TWO, 2, "id", "DeviceFleet/sensors")]
    assert "duplicate device id 'dev-2' (first at fleets/sensors.yaml:" in problems[0].message
    assert f"duplicate device id 'a' (first at {ONE}:2)" == problems[1].message


def test_an_invalid_row_names_its_part_and_line() -> None:
    _, _, problems = load([DeviceText(ONE, "id\nok\n", "csv"),
                           DeviceText(TWO, '{"id": "fine"}\n{"id": "b", "revoked": '
                                      '{"reason": "stolen"}}\n', "jsonl")])
    (problem,) = problems
    assert (problem.file, problem.line, problem.field) == (TWO, 2, "revoked.reason")


def test_a_part_that_does_not_parse_leaves_the_fleet_without_devices() -> None:
    """The rows read before the part failed (bad, doubled or good) are not reported."""
    ids, lines, problems = load([DeviceText(ONE, "id\na\nbad id!\na\n", "csv"),
                                 DeviceText(TWO, '{"id": "c"}\n{"id": \n', "jsonl",
                                            "configMapRef[1]")])
    assert (ids, lines) == ([], {})
    (problem,) = problems
    assert (problem.file, problem.field) == ("fleets/sensors.yaml",
                                             "spec.deviceSource.configMapRef[1]")
    assert problem.line == line_of(CONFIGMAPS, "name: sensors-2")
    assert problem.message.startswith(f"cannot read device source {TWO!r}: line 2: invalid JSON")
    assert problem.message.endswith("(a missing source is an error, never zero devices)")


def test_a_source_that_cannot_be_read_is_a_problem_never_zero_devices() -> None:
    error = DeviceSourceError("not found in the fleet's namespace", field="configMapRef[1].name",
                              source="ConfigMap/sensors-2")
    ids, _, problems = load(error)
    assert ids == []
    (problem,) = problems
    assert problem.field == "spec.deviceSource.configMapRef[1].name"
    assert problem.line == line_of(CONFIGMAPS, "name: sensors-2")
    assert problem.message == ("cannot read device source ConfigMap/sensors-2: not found in the "
                               "fleet's namespace (a missing source is an error, never zero "
                               "devices)")
    _, _, (default,) = load(DeviceSourceError("forbidden"))
    assert default.field == "spec.deviceSource.configMapRef"
    assert default.message.startswith(f"cannot read device source {ONE}, {TWO}: forbidden")


def test_an_unsupported_form_is_reported_as_it_is() -> None:
    ids, _, problems = load(UnsupportedDeviceSource("only in git mode", field="path"))
    assert ids == []
    (problem,) = problems
    assert (problem.field, problem.message) == ("spec.deviceSource.path", "only in git mode")


def test_parse_device_rows_is_public_and_pure() -> None:
    assert list(parse_device_rows("id,labels.site,revoked\na,x,\nb,,keyCompromise\n",
                                  "csv")) == [
        (23, 2, {"id": "a", "labels": {"site": "x"}}),
        (28, 3, {"id": "b", "labels": {}, "revoked": {"reason": "keyCompromise"}})]
    assert list(parse_device_rows('\n{"id": "j"}\n{"id": "k\u2028"}', "jsonl")) == [
        (1, 2, {"id": "j"}), (13, 3, {"id": "k\u2028"})]  # a line ends at a line feed only
    with pytest.raises(ValueError, match="'id' column"):
        list(parse_device_rows("name\nx\n", "csv"))
    with pytest.raises(ValueError, match="line 2: a device is a JSON object, not list"):
        list(parse_device_rows('{"id": "j"}\n[1, 2]\n', "jsonl"))


def dict_reader_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    """What `parse_device_rows` gave when it read CSV with csv.DictReader (the reference)."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise ValueError("CSV needs a header row with an 'id' column")
    rows = []
    for row in reader:
        device: dict[str, Any] = {"labels": {}}
        for column, value in row.items():
            if column is None:
                raise ValueError(f"line {reader.line_num}: more values than header columns")
            if value in (None, ""):
                continue
            if column.startswith("labels."):
                device["labels"][column.removeprefix("labels.")] = value
            elif column == "revoked":
                device["revoked"] = {"reason": value}
            else:
                device[column] = value
        rows.append((reader.line_num, device))
    return rows


@pytest.mark.parametrize("seed", range(200))
def test_csv_rows_are_read_as_dict_reader_read_them(seed: int) -> None:
    """Row for row, line for line and error for error (the row digests depend on it): blank
    lines, short and long rows, quoted newlines and commas, repeated columns, empty values,
    either line break;
    read one line at a time from the text, as DictReader read a file of it."""
    chance = random.Random(seed)
    columns = ["id", "labels.site", "publicKey", "revoked", "labels.site", "csr"]
    header = chance.sample(columns, chance.randint(1, len(columns)))
    values = ["", "a", "b c", "x,y", 'say "hi"', "-----BEGIN\nAB\n-----END", "keyCompromise",
              "-----BEGIN\r\nAB\r\n-----END"]
    lines = [",".join(header)]
    for _ in range(chance.randint(0, 8)):
        if chance.random() < 0.15:
            lines.append("")
            continue
        cells = [chance.choice(values).replace("\\n", "\n")
                 for _ in range(max(0, len(header) + chance.choice([-1, 0, 0, 0, 1])))]
        lines.append(",".join(f'"{c.replace(chr(34), chr(34) * 2)}"'
                              if any(ch in c for ch in ',"\n') else c for c in cells))
    end = chance.choice(["\n", "\r\n"])
    text = end.join(lines) + chance.choice(["", end])
    try:
        expected: Any = dict_reader_rows(text)
    except ValueError as exc:
        expected = str(exc)
    try:
        read = list(parse_device_rows(text, "csv"))
        found: Any = [(line, raw) for _, line, raw in read]
    except ValueError as exc:
        found = str(exc)
    assert found == expected
    if isinstance(found, list):
        assert [repr(raw) for _, raw in found] == [repr(raw) for _, raw in expected]
        header = text[:text.find("\n") + 1]  # none: no row either
        for start, _, raw in read:  # where a record begins, it is read alone
            assert next(parse_device_rows(header + text[start:], "csv"))[2] == raw


# --- ConfigMaps ----------------------------------------------------------------------------


def test_configmap_device_text() -> None:
    source = fleet().resource.spec.deviceSource  # type: ignore[attr-defined]
    first, second = source.configMapRef
    part = configmap_device_text(first, {"data": {"devices.csv": "\ufeffid\na\n"}}, source)
    assert part == DeviceText(ONE, "id\na\n", "csv", "configMapRef[0]")
    encoded = base64.b64encode(b'{"id": "z"}\n').decode()
    part = configmap_device_text(second, {"binaryData": {"more.jsonl": encoded}}, source, 1)
    assert (part.label, part.text, part.format) == (TWO, '{"id": "z"}\n', "jsonl")
    with pytest.raises(DeviceSourceError) as error:
        configmap_device_text(second, {"data": {"devices.csv": ""}}, source, 1)
    assert (error.value.field, error.value.message) == (
        "configMapRef[1].key", "has no key 'more.jsonl' (keys: devices.csv)")
    with pytest.raises(DeviceSourceError, match="not found") as error:
        configmap_device_text(first, None, source)
    assert error.value.source == "ConfigMap/sensors-1"


# --- the model -----------------------------------------------------------------------------


SOURCE_REF = {"kind": "GitRepository", "name": "fleet-repo"}


@pytest.mark.parametrize(("spec", "fmt"), [
    ({"path": "fleets/x.csv"}, "csv"),
    ({"path": "fleets/x.ndjson"}, "jsonl"),
    ({"configMapRef": [{"name": "a"}]}, "csv"),
    ({"configMapRef": [{"name": "a.b-c", "key": "x.jsonl"}, {"name": "a"}]}, "csv"),
    ({"sourceRef": SOURCE_REF, "path": "fleets/x.jsonl"}, "jsonl"),
    ({"sourceRef": {**SOURCE_REF, "kind": "OCIRepository", "namespace": "flux-system",
                    "apiVersion": "source.toolkit.fluxcd.io/v1"}, "path": "x", "format": "jsonl"},
     "jsonl"),
])
def test_the_three_forms(spec: dict[str, Any], fmt: str) -> None:
    assert DeviceSource.model_validate(spec).resolved_format() == fmt


def test_format_of_a_configmap_key_and_flux_api_versions() -> None:
    source = DeviceSource.model_validate({"configMapRef": [{"name": "a", "key": "d.jsonl"}]})
    assert source.resolved_format("d.jsonl") == "jsonl"
    assert source.resolved_format("devices.csv") == "csv"
    forced = DeviceSource.model_validate({"configMapRef": [{"name": "a"}], "format": "jsonl"})
    assert forced.resolved_format("devices.csv") == "jsonl"
    git = DeviceSource.model_validate({"sourceRef": SOURCE_REF, "path": "x"}).sourceRef
    oci = DeviceSource.model_validate({"sourceRef": {**SOURCE_REF, "kind": "OCIRepository"},
                                       "path": "x"}).sourceRef
    assert git is not None and oci is not None
    assert git.resolved_api_version() == "source.toolkit.fluxcd.io/v1"
    assert oci.resolved_api_version() == "source.toolkit.fluxcd.io/v1beta2"


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({}, "path", "required (a file of the repository), or give configMapRef, or sourceRef "
                 "with path"),
    ({"sourceRef": SOURCE_REF}, "path", "required with sourceRef (the file inside the artifact)"),
    ({"configMapRef": [{"name": "a"}], "path": "x.csv"}, "path", "not with configMapRef"),
    ({"configMapRef": [{"name": "a"}], "sourceRef": SOURCE_REF}, "sourceRef",
     "give either configMapRef or sourceRef, not both"),
    ({"configMapRef": []}, "configMapRef", "at least 1 item"),
    ({"configMapRef": [{"name": "a"}] * 2}, "configMapRef", "listed twice: a key devices.csv"),
    ({"configMapRef": [{"name": f"c{n}"} for n in range(101)]}, "configMapRef",
     "at most 100 items"),
    ({"configMapRef": [{"name": "Sensors_1"}]}, "configMapRef[0].name",
     "must be a Kubernetes object name"),
    ({"configMapRef": [{"name": "a", "key": "a/b"}]}, "configMapRef[0].key",
     "a ConfigMap key is letters"),
    ({"sourceRef": {**SOURCE_REF, "kind": "Bucket"}, "path": "x"}, "sourceRef.kind",
     "'GitRepository' or 'OCIRepository'"),
    ({"sourceRef": {**SOURCE_REF, "apiVersion": "v1"}, "path": "x"}, "sourceRef.apiVersion",
     "must be a Flux source API version"),
    ({"sourceRef": {**SOURCE_REF, "namespace": "a.b"}, "path": "x"}, "sourceRef.namespace",
     "must be a Kubernetes namespace"),
    ({"sourceRef": SOURCE_REF, "path": "../x.csv"}, "path", "stay inside"),
])
def test_invalid_device_sources_name_the_field(spec: dict[str, Any], field: str,
                                               message: str) -> None:
    text = FLEET + "  deviceSource: {}\n"
    doc = text.replace("deviceSource: {}", "deviceSource: " + json.dumps(spec))  # JSON is YAML
    _, problems = parse_documents(doc, "f.yaml")
    (problem,) = problems
    assert problem.field == f"spec.deviceSource.{field}", problem
    assert message in problem.message
    with pytest.raises(ValidationError):
        DeviceSource.model_validate(spec)


def deferred(parts: list[DeviceText]) -> Any:
    """The set of `parts` as apply sees an unchanged fleet: not parsed, its summary known."""
    device_set = read_fleet_devices(fleet(), [], lambda source: parts)
    device_set.defer(DeviceSummary(0, 0))
    return device_set


@pytest.mark.parametrize("seed", range(5))
def test_selecting_rows_of_a_deferred_set_is_what_parsing_all_gives(seed: int) -> None:
    """Renewals of an unchanged fleet validate only the rows due; the devices and row digests
    are those of a full parse."""
    chance = random.Random(seed)
    rows = [f"d-{i},site-{chance.randrange(3)},{chance.choice(['', 'keyCompromise'])}"
            for i in range(200)]
    jsonl = "\n".join(json.dumps({"id": f"j-{i}", "labels": {"k": str(i)}}) for i in range(50))
    parts = [DeviceText(ONE, "id,labels.site,revoked\n" + "\n".join(rows) + "\n", "csv"),
             DeviceText(TWO, jsonl + "\n", "jsonl")]
    wanted = chance.sample([f"d-{i}" for i in range(200)] + [f"j-{i}" for i in range(50)] +
                           ["absent"], 40)
    full = read_fleet_devices(fleet(), [], lambda source: parts)
    devices, _, digests = full.parsed
    expected = {d.id: (d, digests[d.id]) for d in devices if d.id in wanted}
    lazy = deferred(parts)
    assert {i: found for i in wanted if (found := lazy.row(i))} == expected
    assert {i: found for i in wanted if (found := full.row(i))} == expected
    assert lazy.find("d-1") == full.find("d-1") and lazy.find("absent") is None


def test_a_deferred_row_that_fails_now_is_reported_like_a_full_parse() -> None:
    parts = [DeviceText(ONE, "id,labels.site\nd-1,a\nd-2,a\n", "csv"),
             DeviceText(TWO, '{"id": "d-3", "labels": "not a mapping"}\n', "jsonl")]
    lazy = deferred(parts)
    assert lazy.find("d-1") is not None
    with pytest.raises(InvalidDeclaration) as refused:
        lazy.find("d-3")
    assert refused.value.problems[0].file == TWO


PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"


@pytest.mark.parametrize("seed", range(5))
def test_a_deferred_csv_set_reads_one_row_alone(seed: int, parsed: list[str]) -> None:
    """Rows of a plain CSV are found by its index: the same devices and digests as a full
    parse, an absent id known absent when the index holds every row the summary counts, and
    no part parsed whole."""
    chance = random.Random(seed)
    rows = [f'd-{i},site-{chance.randrange(3)},"{PEM}",{chance.choice(["", "keyCompromise"])}'
            for i in range(200)]
    parts = [DeviceText(ONE, "id,labels.site,publicKey,revoked\n" + "\n".join(rows) + "\n",
                        "csv")]
    full = read_fleet_devices(fleet(), [], lambda source: parts)
    devices, _, digests = full.parsed
    wanted = chance.sample([d.id for d in devices], 30)
    parsed.clear()
    lazy = read_fleet_devices(fleet(), [], lambda source: parts)
    lazy.defer(DeviceSummary(len(devices), 0))
    assert {i: lazy.row(i) for i in wanted} == {d.id: (d, digests[d.id]) for d in devices
                                                if d.id in wanted}
    assert lazy.find("absent") is None and parsed == []
    short = read_fleet_devices(fleet(), [], lambda source: parts)  # the summary counts one more
    short.defer(DeviceSummary(len(devices) + 1, 0))
    assert short.find("absent") is None and parsed == ["csv"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("seed", range(60))
def test_a_set_is_checked_once_keeping_no_row_and_reads_as_its_rows_declare(
        seed: int, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """CSV and JSONL parts (multi-line PEMs, blank lines, either line break, revoked rows, at
    times a bad or doubled row), checked whole, here or in pieces on forked `workers`, keep no
    `Device`; the problems, the walk, a row read alone from its place, lines and counts are
    what reading the rows one by one with `parse_device_rows` and validating each gives."""
    monkeypatch.setattr(parallel, "worker_count", lambda items: workers)
    apart: list[object] = []  # what each part checked apart gave (None: checked here)
    checked_apart = devices_module._checked_apart
    monkeypatch.setattr(devices_module, "_checked_apart",
                        lambda *args: apart.append(found := checked_apart(*args)) or found)
    chance = random.Random(seed)
    end = chance.choice(["\n", "\r\n"])

    def row() -> tuple[str, str, str, str]:
        device = f"d-{chance.randrange(3)}" if chance.random() < 0.03 else \
            f"d-{chance.randrange(10**9)}"
        site = "x" * 300 if chance.random() < 0.005 else f"site-{chance.randrange(3)}"
        return (device, site, PEM if chance.random() < 0.5 else "",
                chance.choice(["", "", "keyCompromise"]))

    lines = ["id,labels.site,publicKey,revoked"]
    for _ in range(chance.randint(0, 60)):
        device, site, pem, revoked = row()
        lines += [f'{device},{site},"{pem}",{revoked}'.replace("\n", end)] + \
            [""] * (chance.random() < 0.1)
    objects = []
    for _ in range(chance.randint(0, 30)):
        device, site, pem, revoked = row()
        objects.append(json.dumps({"id": device, "labels": {"site": site}, "publicKey": pem or
                                   None, "revoked": {"reason": revoked} if revoked else None}))
    parts = [DeviceText(ONE, end.join(lines) + end, "csv"),
             DeviceText(TWO, "\n".join(objects) + "\n", "jsonl")]
    item = fleet()

    declared: dict[str, tuple[Device, tuple[str, int | None]]] = {
        device.id: (device, (item.file, line_of(CONFIGMAPS, device.id)))
        for device in item.resource.spec.devices}  # type: ignore[union-attr]
    expected: list[tuple[str, int | None, str | None, str | None]] = []
    for part in parts:
        for _, line, raw in parse_device_rows(part.text, part.format):
            try:
                device = Device.model_validate(raw)
            except ValidationError as exc:
                expected += [(part.label, line, field_path(error["loc"]), None)
                             for error in exc.errors()]
                continue
            if device.id in declared:
                file, first = declared[device.id][1]
                expected.append((part.label, line, "id", f"duplicate device id {device.id!r} "
                                                         f"(first at {file}:{first})"))
            else:
                declared[device.id] = (device, (part.label, line))

    gc.collect()  # no garbage of earlier tests collected while counting
    before = sum(isinstance(o, Device) for o in gc.get_objects())
    problems: list[Problem] = []
    checked = read_fleet_devices(item, problems, lambda source: parts)
    checked.parse(problems)
    kept_now = sum(isinstance(o, Device) for o in gc.get_objects()) - before
    assert [(p.file, p.line, p.field, p.message if p.field == "id" else None)
            for p in problems] == expected
    if problems:
        return
    assert kept_now == 0 < len(declared) - 2  # not even the rows of the parts
    if workers and len(lines) > 8 and len(objects) > 8:  # both parts in pieces on workers
        assert len(apart) == 2 and None not in apart
    walked = [(i, checked.device(value), digest) for i, value, digest in checked.walk()]
    assert [(i, device) for i, device, _ in walked] == [(i, d) for i, (d, _) in declared.items()]
    for count in (2, 3, 7):  # cut to be walked apart: the same rows, each once, in order
        shares = checked.shares(count)
        assert 1 <= len(shares) <= count and [share.inline for share in shares][:1] == [True]
        assert [(i, checked.device(value), digest) for share in shares
                for i, value, digest in checked.walk(share)] == walked
    assert checked.lines == {i: place for i, (_, place) in declared.items()}
    assert checked.summary == DeviceSummary(len(declared), sum(
        1 for device, _ in declared.values() if device.revoked is None))
    for device_id, device, digest in chance.sample(walked, min(10, len(walked))):
        assert checked.row(device_id) == (device, digest)
        assert checked.line_of(device_id) == declared[device_id][1]
    assert checked.row("absent") is None


def test_a_row_read_alone_that_fails_now_is_reported_like_a_full_parse() -> None:
    parts = [DeviceText(ONE, "id,labels.site\nd-1,a\nd-2," + "x" * 300 + "\n", "csv")]
    lazy = deferred(parts)
    assert lazy.find("d-1") is not None
    with pytest.raises(InvalidDeclaration) as refused:
        lazy.find("d-2")
    assert [(p.file, p.line) for p in refused.value.problems] == [(ONE, 3)]


@pytest.mark.parametrize("seed", range(200))
def test_a_deferred_set_is_counted_as_reading_every_row_counts(
        seed: int, parsed: list[str]) -> None:
    """Counted without keeping rows (a pull request's untouched fleet, its base's file): the
    same devices and devices not revoked as reading every row, or, where reading every row
    finds a problem (an id missing or repeated, a row too long), every row read."""
    chance = random.Random(seed)
    header = chance.sample(["id", "labels.site", "revoked", "labels.site", "revoked"],
                           chance.randint(1, 5))
    values = ["", "a", "x,y", 'say "hi"', "keyCompromise"]
    lines = [",".join(header)]
    for number in range(chance.randint(0, 12)):
        if chance.random() < 0.1:
            lines.append("")
            continue
        cells = [chance.choice(values) if column != "id" or chance.random() < 0.05
                 else f"d-{chance.randrange(40) if chance.random() < 0.1 else number}"
                 for column in header[:len(header) + chance.choice([-1, 0, 0, 0, 0, 1])]]
        lines.append(",".join(f'"{c.replace(chr(34), chr(34) * 2)}"' if any(
            ch in c for ch in ',"') else c for c in cells))
    parts = [DeviceText(ONE, "\n".join(lines) + "\n", "csv")]

    def summary(read_rows: bool) -> Any:
        device_set = read_fleet_devices(fleet(), [], lambda source: parts)
        device_set.defer(None)
        try:
            if read_rows:
                device_set.rows  # noqa: B018 (counted from the rows then)
            return device_set.summary
        except InvalidDeclaration:
            return "problems"

    counted = summary(read_rows=False)
    assert counted == summary(read_rows=True)
    if counted != "problems":
        assert parsed == ["csv"]  # only by the reading of every row
