"""The bad-input corpus: every case must be refused by `validate`, `plan` and `apply` with exit
code 1 and an `error:` line naming the file and the field, and must leave the inventory and the
user's git state as they were. See README.md in this directory for the case format.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import (
    CASES,
    SECRET_MARKER,
    Applied,
    Snapshot,
    git,
    snapshot,
    status_branch_secrets,
    write_tree,
)

COMMANDS = ("validate", "plan", "apply")
MINIMUM_CASES = 40
CASE_FILES = frozenset({"expect.yaml", "delete.txt"})


# --- what went wrong, by kind (a known bug is xfail'd for its symptom only) ---------------------
class Symptom(AssertionError):
    """A check of the corpus failed."""


class WrongExitCode(Symptom):
    """The command did not exit 1, or crashed with a traceback."""


class NotNamed(Symptom):
    """Neither stdout nor stderr names the file, field (or rule) and message."""


class NotOnStderr(Symptom):
    """The problem is reported, but not as an `error:` (or `policy: deny`) line on stderr."""


class StateChanged(Symptom):
    """The inventory, HEAD, the work tree or a ref other than the status branch changed."""


@dataclass(frozen=True)
class KnownBug:
    """A bug of fleetpki that a case exposes; `symptoms` are the checks it is allowed to fail."""

    reason: str
    symptoms: tuple[type[Symptom], ...]


# Bugs a case may mark with `xfail: {command: key}` in its expect.yaml (none are open now).
KNOWN_BUGS: dict[str, KnownBug] = {}


@dataclass(frozen=True)
class Case:
    """One directory of `cases/`: files overlaid on the base, and what must be reported."""

    name: str
    path: Path
    file: str | None
    line: int | None  # for syntax errors, which have no field
    field: str | None
    message: str | None
    policy: str | None  # "policy/rule" of a deny finding, instead of file and field
    object: str | None
    commands: tuple[str, ...]
    xfail: dict[str, str]  # command -> KNOWN_BUGS key

    @classmethod
    def load(cls, path: Path) -> Case:
        expect: dict[str, Any] = yaml.safe_load((path / "expect.yaml").read_text()) or {}
        unknown = set(expect) - {"file", "line", "field", "message", "policy", "object", "commands",
                                 "xfail"}
        assert not unknown, f"{path.name}/expect.yaml: unknown keys {sorted(unknown)}"
        commands = tuple(expect.get("commands", COMMANDS))
        xfail = dict(expect.get("xfail") or {})
        assert set(commands) <= set(COMMANDS), f"{path.name}: unknown command in {commands}"
        assert set(xfail) <= set(commands), f"{path.name}: xfail for a command not run"
        assert set(xfail.values()) <= set(KNOWN_BUGS), f"{path.name}: unknown bug in {xfail}"
        if expect.get("policy"):
            assert expect.get("object"), f"{path.name}: a policy case names the object"
        else:
            assert expect.get("file") and (expect.get("field") or expect.get("line")
                                           or expect.get("message")), (
                f"{path.name}: give file, and field (or line, or message)")
        return cls(path.name, path, expect.get("file"), expect.get("line"), expect.get("field"),
                   expect.get("message"), expect.get("policy"), expect.get("object"),
                   commands, xfail)

    def overlay(self, fleet: Applied, values: dict[str, str]) -> None:
        """Write the case's files over the base and commit them, as a user would."""
        write_tree(self.path, fleet.repo, values, skip=CASE_FILES)
        deletions = self.path / "delete.txt"
        if deletions.exists():
            for name in deletions.read_text().split():
                (fleet.repo / name).unlink()
        git(fleet.repo, "add", "-A", ".")
        git(fleet.repo, "commit", "-q", "--allow-empty", "-m", f"corpus case {self.name}")


def all_cases() -> list[Case]:
    return [Case.load(path) for path in sorted(CASES.iterdir()) if path.is_dir()]


def params() -> list[Any]:
    result = []
    for case in all_cases():
        bugs = [KNOWN_BUGS[name] for name in case.xfail.values()]
        symptoms = tuple({symptom for bug in bugs for symptom in bug.symptoms})
        marks = [pytest.mark.xfail(strict=True, raises=symptoms,
                                   reason="; ".join(sorted({b.reason for b in bugs})))
                 ] if bugs else []
        result.append(pytest.param(case, id=case.name, marks=marks))
    return result


def run(fleet: Applied, command: str) -> subprocess.CompletedProcess[str]:
    state = () if command == "validate" else ("--state-dir", fleet.state)
    return fleet.fleetpki(command, ".", *state)


def run_concurrently(fleet: Applied, commands: list[str]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=len(commands) or 1) as pool:
        futures = {command: pool.submit(run, fleet, command) for command in commands}
    return {command: future.result() for command, future in futures.items()}


def brief(text: str, limit: int = 4000) -> str:
    """Output for a failure message: rich's wide traceback boxes squeezed, the middle of long
    output cut (a traceback's exception is on its last line)."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    squeezed = "\n".join(line for line in lines if line.strip("│╭╰─ "))
    if len(squeezed) <= limit:
        return squeezed
    return f"{squeezed[: limit // 4]}\n[...]\n{squeezed[-limit * 3 // 4:]}"


def first_symptom(case: Case, command: str,
                  result: subprocess.CompletedProcess[str]) -> Symptom | None:
    """The first check the command fails: exit code, then naming, then stderr."""
    output = f"fleetpki {command}\n--- stdout\n{brief(result.stdout)}\n--- stderr\n" \
             f"{brief(result.stderr)}"
    if "Traceback" in result.stdout + result.stderr:
        return WrongExitCode(f"crashed with a traceback\n{output}")
    if result.returncode != 1:
        return WrongExitCode(f"exit {result.returncode}, expected 1\n{output}")
    if case.policy:
        wanted, prefix = [case.object or "", case.policy], "policy: deny"
    else:
        where = f"{case.file}:{case.line}:" if case.line else f"{case.file}:"
        wanted, prefix = [where, case.field or ""], "error:"
    wanted += [case.message] if case.message else []

    def naming(text: str) -> list[str]:
        return [line for line in text.splitlines() if all(w in line for w in wanted)]

    if not naming(result.stdout + "\n" + result.stderr):
        return NotNamed(f"no line names all of {wanted}\n{output}")
    if not [line for line in naming(result.stderr) if line.startswith(prefix)]:
        return NotOnStderr(f"no {prefix!r} line on stderr names all of {wanted}\n{output}")
    return None


def state_change(before: Snapshot, after: Snapshot, commands: str) -> StateChanged | None:
    for name in ("certificates", "status_json", "head", "porcelain", "refs"):
        if getattr(after, name) != getattr(before, name):
            return StateChanged(f"{commands} changed {name}: {getattr(before, name)!r} -> "
                                f"{getattr(after, name)!r}")
    return None


@pytest.mark.parametrize("case", params())
def test_bad_input_is_refused(case: Case, base_copy: Applied,
                              pem_values: dict[str, str]) -> None:
    """validate, plan and apply (run concurrently: two are read-only) each exit 1 naming the
    file and field; nothing but the status branch changes, and that holds no key material."""
    case.overlay(base_copy, pem_values)
    before = snapshot(base_copy)
    results = run_concurrently(base_copy, list(case.commands))
    symptoms: list[tuple[str, Symptom]] = []
    change = state_change(before, snapshot(base_copy), " and ".join(case.commands))
    if change:  # only apply writes; validate and plan are read-only
        symptoms.append(("apply" if "apply" in case.commands else case.commands[0], change))
    assert status_branch_secrets(base_copy.repo) == [], "key material on the status branch"
    for command, result in results.items():
        assert SECRET_MARKER not in result.stdout + result.stderr, f"key material: {command}"
        found = first_symptom(case, command, result)
        if found:
            symptoms.append((command, found))

    def known(command: str, symptom: Symptom) -> bool:
        bug = case.xfail.get(command)
        return bug is not None and isinstance(symptom, KNOWN_BUGS[bug].symptoms)

    unexpected = [f"[{c}] {type(s).__name__}: {s}" for c, s in symptoms if not known(c, s)]
    if unexpected:
        raise AssertionError("\n\n".join(unexpected))
    expected = [(c, s) for c, s in symptoms if known(c, s)]
    stale = sorted(set(case.xfail) - {c for c, _ in expected})
    if expected and stale:  # part of the case's bugs are fixed: drop their xfail entries
        raise AssertionError(f"stale xfail in {case.name}/expect.yaml: {stale} pass now")
    for _, symptom in expected:
        raise symptom  # a known bug: the case is xfail'd for exactly this symptom


def test_corpus_is_large_enough() -> None:
    """The corpus cannot silently shrink (a case directory without expect.yaml fails too)."""
    assert len(all_cases()) >= MINIMUM_CASES
    names = [case.name for case in all_cases()]
    assert len(names) == len(set(names))


def test_controls(base_copy: Applied) -> None:
    """The base is valid and converged, so each case fails because of its own change; and a
    valid change that apply carries out shows in the snapshot, so the state checks can fail."""
    for command, result in run_concurrently(base_copy, list(COMMANDS)).items():
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    devices = base_copy.repo / "fleets" / "sensors.csv"
    devices.write_text(devices.read_text() + "sensor-11,TS-100,hamburg,\n")
    git(base_copy.repo, "commit", "-q", "-am", "one more sensor")
    before = snapshot(base_copy)
    applied = run(base_copy, "apply")
    assert applied.returncode == 0, applied.stderr
    after = snapshot(base_copy)
    assert after.certificates != before.certificates
    assert after.status_json != before.status_json
    assert (after.head, after.porcelain, after.refs) == (before.head, before.porcelain,
                                                         before.refs)
