"""The `fleetpki` command. Exit codes: 0 ok, 1 error, 2 plan has changes (--detailed-exitcode)."""

from __future__ import annotations

import difflib
import errno
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller import __version__, backup, exports, jobs
from controller.api.crds import render_crds
from controller.api.durations import parse_duration
from controller.api.problems import InvalidDeclaration
from controller.apply.evidence import ExistingCA
from controller.apply.executor import ApplyRefused
from controller.audit.commands import audit_app
from controller.audit.events import local_actor
from controller.audit.log import AuditError
from controller.audit.records import Event
from controller.clock import epoch, rfc3339
from controller.lint.rules import SEVERITIES, STRONG_KEY_ALGORITHMS, Thresholds, fails
from controller.pki.errors import PKIError
from controller.pki.keys import KEY_ALGORITHMS
from controller.plan.render import RENDERERS
from controller.sources.reconciler import Reconciler, SourceError
from controller.sources.worktree import uncommitted_changes
from controller.status.gitbranch import StatusBranchError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Declarative, GitOps-driven PKI for IoT device fleets.")
export_app = typer.Typer(no_args_is_help=True, help="Write certificates, bundles and CRLs.")
app.add_typer(export_app, name="export")
app.add_typer(audit_app, name="audit")
out = Console()
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _existing_directory(value: Path) -> Path:
    """DIR must be a directory: a typo is an error (exit 1), never an empty fleet."""
    if not value.is_dir():
        reason = "is not a directory" if value.exists() else "does not exist"
        err.print(f"error: {value} {reason} (DIR is the fleet repository directory)",
                  markup=False, highlight=False)
        raise typer.Exit(1)
    return value


DirArg = Annotated[Path, typer.Argument(help="Fleet repository directory.", show_default=False,
                                        callback=_existing_directory)]
StateOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help="State directory (inventory, keys). Default: $FLEETPKI_STATE_DIR or "
    "~/.local/state/fleetpki.", show_default=False, readable=False)]  # commands explain (exit 1)
DatabaseOpt = Annotated[str | None, typer.Option(
    "--database-url", help="postgresql://… inventory instead of the state directory's SQLite "
    "file (default: $FLEETPKI_DATABASE_URL). Keys stay in the state directory.",
    show_default=False)]
DefaultPoliciesOpt = Annotated[bool, typer.Option(
    help="Apply the built-in recommended policies (a repo policy of the same name replaces one).")]
PoliciesOpt = Annotated[Path | None, typer.Option(
    "--policies", help="Trusted policy directory (e.g. a checkout of the platform team's "
    "repository): its CertificatePolicies and Tenants bind DIR, and DIR's own policies are "
    "refused.", show_default=False)]
MaxRevOpt = Annotated[int | None, typer.Option(
    "--max-revocations", help="Revocations allowed per fleet (default: 10% of it or 100).")]
NewCAOpt = Annotated[list[str] | None, typer.Option(
    "--new-ca", help="Create this CA although evidence says it exists already (a wrong or lost "
    "state directory otherwise stops the run): starts a new PKI on purpose. Repeatable.",
    show_default=False)]

RequireSignedOpt = Annotated[bool, typer.Option(
    "--require-signed-commits", help="Refuse unless every commit since the last applied one is "
    "signed by a key --allowed-signers allows for every path it touches.")]
AllowedSignersOpt = Annotated[Path | None, typer.Option(
    "--allowed-signers", help="ssh-keygen allowed signers file whose principals are tenant name "
    "patterns ('*': every tenant). Used with --require-signed-commits.", show_default=False)]


class PlanFormat(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


class OutputFormat(StrEnum):
    text = "text"
    json = "json"
    yaml = "yaml"


class ExportFormat(StrEnum):
    pem = "pem"
    p12 = "p12"


EXPECTED_ERRORS = (InvalidDeclaration, ApplyRefused, ExistingCA, jobs.KeyStoreError, PKIError,
                   exports.ExportError, jobs.StateLocked, StatusBranchError, jobs.InventoryError,
                   SourceError, backup.BackupError, jobs.UnsignedChange, jobs.SignersFileError,
                   AuditError)
LISTED_PATHS = 10  # uncommitted files named in a message; the rest are counted


def handle_errors(function: F) -> F:
    """Expected failures print `error: ...` to stderr and exit 1, without a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except InvalidDeclaration as exc:
            for problem in exc.problems:
                err.print(f"error: {problem}", markup=False, highlight=False)
            err.print(f"{len(exc.problems)} problem(s); nothing applied.", markup=False)
        except EXPECTED_ERRORS as exc:
            err.print(f"error: {exc}", markup=False, highlight=False)
        except OSError as exc:
            err.print(f"error: {describe_os_error(exc)}", markup=False, highlight=False)
        except jobs.DATABASE_ERRORS as exc:
            err.print(f"error: the inventory: {exc}", markup=False, highlight=False)
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def describe_os_error(exc: OSError) -> str:
    """`cannot write /x/y: No space left on device`, with what to do for the usual causes."""
    where = f" {exc.filename}" if exc.filename else ""
    hint = {errno.ENOSPC: "free some space and re-run",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "check its permissions and owner",
            errno.EPERM: "check its permissions and owner"}.get(exc.errno or 0)
    return f"cannot access{where}: {exc.strerror or exc}" + (f" ({hint})" if hint else "")


def _emit(data: Any, fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")


def _say(prefix: str, items: Sequence[object]) -> None:
    for item in items:
        err.print(f"{prefix}: {item}", markup=False, highlight=False)


def _uncommitted(paths: Sequence[str]) -> str:
    """`a, b and 3 more have uncommitted changes` (at most LISTED_PATHS named)."""
    named = ", ".join(paths[:LISTED_PATHS])
    more = f" and {len(paths) - LISTED_PATHS} more" if len(paths) > LISTED_PATHS else ""
    verb = "has" if len(paths) == 1 else "have"
    return f"{named}{more} {verb} uncommitted changes"


def _signers(required: bool, file: Path | None) -> jobs.AllowedSigners | None:
    """The allowed signers when signed commits are required; the options go together."""
    if required != (file is not None):
        raise typer.BadParameter("--require-signed-commits and --allowed-signers FILE go "
                                 "together", param_hint="--allowed-signers")
    return jobs.read_allowed_signers(file) if file is not None else None


def _show_version(value: bool) -> None:
    if value:
        print(f"fleetpki {__version__}")
        raise typer.Exit()


@app.callback()
def options(version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Declarative, GitOps-driven PKI for IoT device fleets."""


@app.command()
@handle_errors
def validate(directory: DirArg, output: Annotated[OutputFormat, typer.Option(
        "-o", "--output")] = OutputFormat.text,
             default_policies: DefaultPoliciesOpt = True, policies: PoliciesOpt = None) -> None:
    """Check schema, references, templates, device keys, CSRs and policies. Exit 1 on any
    problem or policy denial."""
    problems, findings = jobs.validate(directory, jobs.now_utc(),
                                       jobs.PolicySource(default_policies, policies))
    denies = [f for f in findings if f.action == "deny"]
    if output != OutputFormat.text:
        _emit({"valid": not (problems or denies), "problems": [p.as_dict() for p in problems],
               "policy": [f.as_dict() for f in findings]}, output)
    else:
        _say("error", problems)
        _say("policy", findings)
        if problems or denies:
            err.print(f"{len(problems)} problem(s), {len(denies)} policy denial(s).",
                      markup=False, highlight=False)
        else:
            out.print(f"{directory}: valid")
    if problems or denies:
        raise typer.Exit(1)


@app.command()
@handle_errors
def plan(directory: DirArg, state_dir: StateOpt = None, database_url: DatabaseOpt = None,
         output: Annotated[PlanFormat, typer.Option("-o", "--output")] = PlanFormat.text,
         detailed_exitcode: Annotated[bool, typer.Option(
             "--detailed-exitcode", help="Exit 2 when the plan has changes.")] = False,
         max_revocations: MaxRevOpt = None, default_policies: DefaultPoliciesOpt = True,
         policies: PoliciesOpt = None, base: Annotated[str | None, typer.Option(
             help="Git revision to compare with (pull requests): show only what the change "
             "does, as if the base were applied.")] = None,
         base_dir: Annotated[Path | None, typer.Option(
             help="Like --base, with the base declaration in a directory.")] = None,
         danger_fraction: Annotated[float, typer.Option(
             help="Flag changes revoking more than this share of a fleet.")] =
         jobs.DANGER_FRACTION, new_ca: NewCAOpt = None) -> None:
    """Show what apply would do: create/renew CAs, issue, renew, re-key, revoke, publish CRLs.
    Exit 1 on problems, policy denials, or (with --max-revocations) too many revocations."""
    now = jobs.now_utc()
    source = jobs.PolicySource(default_policies, policies)
    if base is not None and base_dir is not None:
        raise typer.BadParameter("give --base or --base-dir, not both")
    dirty = uncommitted_changes(directory)
    if dirty:
        _say("warning", [f"{_uncommitted(dirty)}: this plan shows the working tree; apply "
                         "refuses it until they are committed"])
    if base is not None:
        with jobs.checkout_of(directory, base) as base_tree:
            the_plan = jobs.plan_change(directory, base_tree, now, max_revocations, source,
                                        danger_fraction)
    elif base_dir is not None:
        the_plan = jobs.plan_change(directory, base_dir, now, max_revocations, source,
                                    danger_fraction)
    else:
        the_plan = jobs.plan(directory, jobs.StateDir.resolve(state_dir, database_url), now,
                             max_revocations, source, danger_fraction,
                             frozenset(new_ca or ()))
    print(RENDERERS[output.value](the_plan), end="")
    too_many = max_revocations is not None and the_plan.mass_revocations
    if the_plan.problems or the_plan.denies or too_many:
        _say("error", the_plan.problems)
        _say("policy", the_plan.denies)
        if too_many:
            _say("error", [w for w in the_plan.warnings if "--max-revocations" in w])
        raise typer.Exit(1)
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


@app.command()
@handle_errors
def apply(directory: DirArg, state_dir: StateOpt = None,
          database_url: DatabaseOpt = None, max_revocations: MaxRevOpt = None,
          allow_mass_revocation: Annotated[bool, typer.Option(
              help="Allow revocations above the limit.")] = False,
          status: Annotated[bool, typer.Option(
              help="Commit status to the status branch when DIR is in a git repo.")] = True,
          status_branch: Annotated[str, typer.Option()] = jobs.STATUS_BRANCH,
          output: Annotated[OutputFormat, typer.Option("-o", "--output")] = OutputFormat.text,
          default_policies: DefaultPoliciesOpt = True, policies: PoliciesOpt = None,
          new_ca: NewCAOpt = None, allow_uncommitted: Annotated[bool, typer.Option(
              help="Apply the working tree even when files under DIR are not committed.")] =
          False, require_signed_commits: RequireSignedOpt = False,
          allowed_signers: AllowedSignersOpt = None,
          fleet: Annotated[list[str] | None, typer.Option(
              "--fleet", metavar="NAME", help="Only this fleet's certificates (repeatable; CAs and "
              "CRLs are always converged). With PostgreSQL, appliers of other fleets run "
              "meanwhile.",
              show_default=False)] = None) -> None:
    """Converge the state to the declaration and write status back. Actions a policy denies
    are skipped (their objects become Stalled) and the exit code is 1. In a git work tree,
    only what is committed is applied: uncommitted files under DIR are refused."""
    if allow_uncommitted and require_signed_commits:
        raise typer.BadParameter("a working tree has no signature: --allow-uncommitted cannot "
                                 "be used with --require-signed-commits",
                                 param_hint="--allow-uncommitted")
    signers = _signers(require_signed_commits, allowed_signers)
    dirty = [] if allow_uncommitted else uncommitted_changes(directory)
    if dirty:
        _say("error", [f"{_uncommitted(dirty)}: commit them first (status records the commit "
                       "that was applied), or pass --allow-uncommitted"])
        raise typer.Exit(1)
    state = jobs.StateDir.resolve(state_dir, database_url)
    # no refresh thread: apply forks signing workers only from a single-threaded process
    with Progress(console=err, transient=True, disable=not err.is_terminal,
                  auto_refresh=False) as bar:
        task = bar.add_task("applying", total=None)

        def advance(count: int) -> None:
            bar.advance(task, count)
            bar.refresh()

        report = jobs.apply(directory, state, jobs.now_utc(), max_revocations=max_revocations,
                            allow_mass_revocation=allow_mass_revocation, write_status=status,
                            status_branch=status_branch, progress=advance,
                            policies=jobs.PolicySource(default_policies, policies),
                            new_cas=frozenset(new_ca or ()), signers=signers,
                            fleets=frozenset(fleet or ()))
    if output != OutputFormat.text:
        _emit({"done": report.result.done, "summary": report.plan.summary(),
               "warnings": list(report.plan.warnings),
               "policy": [f.as_dict() for f in report.plan.findings],
               "statusCommit": report.status_commit}, output)
    else:
        _say("warning", report.plan.warnings)
        _say("policy", report.plan.findings)
        done = ", ".join(f"{v} {k}" for k, v in sorted(report.result.done.items()))
        out.print(f"Applied: {done or 'no changes'}.", highlight=False)
        if report.plan.denied:
            err.print(f"{len(report.plan.denied)} action(s) denied by policy were not applied.",
                      markup=False, highlight=False)
        if report.status_commit:
            out.print(f"Status committed to {status_branch}: {report.status_commit[:12]}")
    if report.plan.denies:
        raise typer.Exit(1)


@app.command("status")
@handle_errors
def show_status(directory: DirArg, state_dir: StateOpt = None, database_url: DatabaseOpt = None,
                fleet: Annotated[str | None, typer.Option(help="Only this fleet.")] = None,
                devices: Annotated[bool, typer.Option(
                    "--devices", help="Per-device rows (with --fleet).")] = False,
                output: Annotated[OutputFormat, typer.Option("-o", "--output")] =
                OutputFormat.text) -> None:
    """Tables of CAs, fleets, signing profiles and release signatures from the inventory;
    --fleet F --devices for per-device rows."""
    state = jobs.StateDir.resolve(state_dir, database_url)
    now = epoch(jobs.now_utc())
    with state.reader() as inventory:
        if fleet is not None and fleet not in inventory.fleet_names():
            raise exports.ExportError(f"no fleet {fleet!r} in the inventory (fleets: "
                                      f"{', '.join(inventory.fleet_names()) or 'none'})")
        if devices:
            if fleet is None:
                raise typer.BadParameter("--devices needs --fleet")
            rows = [{"device": r.device, "serial": r.serial, "state": r.state,
                     "notAfter": rfc3339(r.not_after), "renewAt": rfc3339(r.renew_at),
                     "reason": r.reason} for r in inventory.device_records(fleet)]
            _table_or_emit(f"DeviceFleet/{fleet} devices", rows, output)
            return
        cas = []
        for name in inventory.ca_names():
            record = inventory.active_ca(name)
            crl = inventory.crl(record.serial) if record else None
            cas.append({"ca": name, "serial": record.serial if record else None,
                        "notAfter": rfc3339(record.not_after) if record else None,
                        "crlNumber": crl.number if crl else None,
                        "crlNextUpdate": rfc3339(crl.next_update) if crl else None})
        fleets = [{"fleet": name, **inventory.fleet_counts(name, now)}
                  for name in inventory.fleet_names() if fleet in (None, name)]
        releases = exports.release_rows(inventory) if fleet is None else []
        signing = exports.signing_rows(inventory) if fleet is None else []
        if output != OutputFormat.text:
            _emit({"authorities": cas, "fleets": fleets,
                   **({"signingProfiles": signing} if signing else {}),
                   **({"releases": releases} if releases else {})}, output)
            return
        _table_or_emit("Certificate authorities", cas, output)
        _table_or_emit("Fleets", fleets, output)
        if signing:
            _table_or_emit("Signing profiles", signing, output)
        if releases:
            _table_or_emit("Release signatures", releases, output)


@contextmanager
def _steps(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar of named steps on stderr when it is a terminal; silent in pipes and CI."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=total)
        started = 0

        def step(what: str) -> None:
            nonlocal started
            bar.update(task, description=what, completed=started)
            bar.refresh()  # steps are few and may be quick: show each one
            started += 1

        yield step


class LintFormat(StrEnum):
    text = "text"
    json = "json"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


def _duration(value: str, option: str) -> Any:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@app.command()
@handle_errors
def lint(directory: DirArg, state_dir: StateOpt = None, database_url: DatabaseOpt = None,
         expiring_within: Annotated[str, typer.Option(
             help="Device certificates expiring within this are flagged.")] = "30d",
         max_age: Annotated[str, typer.Option(
             help="Device certificates issued longer ago are flagged.")] = "400d",
         ca_expiring_within: Annotated[str, typer.Option(
             help="CA certificates expiring within this are flagged.")] = "90d",
         key_algorithm: Annotated[list[str] | None, typer.Option(
             "--key-algorithm", help="An allowed key algorithm (repeatable; default: those the "
             "default key-algorithms policy allows).", show_default=False)] = None,
         output: Annotated[LintFormat, typer.Option("-o", "--output")] = LintFormat.text,
         fail_on: Annotated[Severity | None, typer.Option(
             help="Exit 1 if a finding is at least this severe.")] = None) -> None:
    """Audit the inventory: expiring or old certificates, weak and shared keys, revoked
    certificates still presented, CAs and CRLs near their end."""
    unknown = sorted(set(key_algorithm or ()) - set(KEY_ALGORITHMS))
    if unknown:
        raise typer.BadParameter(f"unknown key algorithm {unknown[0]!r}; known: "
                                 f"{', '.join(KEY_ALGORITHMS)}", param_hint="--key-algorithm")
    thresholds = Thresholds(_duration(expiring_within, "--expiring-within"),
                            _duration(max_age, "--max-age"),
                            _duration(ca_expiring_within, "--ca-expiring-within"),
                            allowed_key_algorithms=tuple(key_algorithm or STRONG_KEY_ALGORITHMS))
    now = epoch(jobs.now_utc())
    with jobs.StateDir.resolve(state_dir, database_url).reader() as inventory:
        report = jobs.lint(inventory, now, thresholds)
    findings = report.sorted()
    summary = {s: sum(1 for f in findings if f.severity == s) for s in reversed(SEVERITIES)}
    if output == LintFormat.json:
        print(json.dumps({"checkedAt": rfc3339(now), "summary": summary,
                          "counts": dict(sorted(report.counts.items())),
                          "findings": [f.to_json() for f in findings]}, indent=2))
    else:
        for f in findings:
            device = f" {f.device}" if f.device else ""
            print(f"{f.severity:<8} {f.code:<26} {f.object}{device}: {f.message}")
        print(", ".join(f"{n} {s}" for s, n in summary.items()) + " finding(s)")
    if fails(report, fail_on):
        raise typer.Exit(1)


def _table_or_emit(title: str, rows: list[dict[str, Any]], output: OutputFormat) -> None:
    if output != OutputFormat.text:
        _emit(rows, output)
        return
    table = Table(title=title)
    for column in rows[0] if rows else ["(none)"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(table)


@export_app.command("cert")
@handle_errors
def export_cert(directory: DirArg, fleet: Annotated[str, typer.Option()],
                device: Annotated[str, typer.Option()],
                out_dir: Annotated[Path, typer.Option("--out")], state_dir: StateOpt = None,
                database_url: DatabaseOpt = None,
                ) -> None:
    """cert.pem, chain.pem, ca.pem and (server keygen only) key.pem under OUT/."""
    state = jobs.StateDir.resolve(state_dir, database_url)
    with state.reader() as inventory:
        for path in exports.export_device_pem(inventory, state.keystore, fleet, device, out_dir):
            out.print(str(path), highlight=False)


@export_app.command("fleet")
@handle_errors
def export_fleet(directory: DirArg, fleet: Annotated[str, typer.Option()],
                 out_dir: Annotated[Path, typer.Option("--out")], state_dir: StateOpt = None,
                 database_url: DatabaseOpt = None,
                 format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.pem,
                 ) -> None:
    """The same files per device under OUT/<device-id>/ (p12: OUT/<id>/<id>.p12)."""
    state = jobs.StateDir.resolve(state_dir, database_url)
    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TextColumn("devices"),
               TimeElapsedColumn())
    with state.reader() as inventory, Progress(*columns, console=err, transient=True,
                                                   disable=not err.is_terminal) as bar:
        task = bar.add_task("exporting", total=None)
        count = exports.export_fleet(inventory, state.keystore, fleet, out_dir, format.value,
                                     lambda done, total: bar.update(task, completed=done,
                                                                    total=total))
    out.print(f"exported {count} device(s) to {out_dir}")


@export_app.command("crl")
@handle_errors
def export_crl(directory: DirArg, ca: Annotated[str, typer.Option()],
               out_file: Annotated[Path, typer.Option("--out")], state_dir: StateOpt = None,
               database_url: DatabaseOpt = None,
               der: Annotated[bool, typer.Option("--der", help="DER, current CA only.")] = False,
               ) -> None:
    """The CA's CRL (PEM: every unexpired CA generation; --der: the current one)."""
    state = jobs.StateDir.resolve(state_dir, database_url)
    with state.reader() as inventory:
        exports.write_file(out_file, exports.crl_bytes(inventory, ca, der))


@export_app.command("bundle")
@handle_errors
def export_bundle(directory: DirArg, out_file: Annotated[Path, typer.Option("--out")],
                  state_dir: StateOpt = None, database_url: DatabaseOpt = None) -> None:
    """Trust bundle: every unexpired CA certificate, PEM."""
    state = jobs.StateDir.resolve(state_dir, database_url)
    with state.reader() as inventory:
        exports.write_file(out_file, exports.trust_bundle(inventory, epoch(jobs.now_utc())))


@export_app.command("release")
@handle_errors
def export_release(directory: DirArg, release: Annotated[str, typer.Option()],
                   out_dir: Annotated[Path, typer.Option("--out")],
                   state_dir: StateOpt = None) -> None:
    """A release's signature: manifest.json, manifest.p7s (DER CMS, detached, over
    manifest.json's exact bytes, with the signer chain), chain.pem and ca.pem under OUT/."""
    state = jobs.StateDir.resolve(state_dir)
    with state.reader() as inventory:
        for path in exports.export_release(inventory, release, out_dir):
            out.print(str(path), highlight=False)


@app.command()
def verify(artifact: Annotated[Path | None, typer.Argument(
               help="The artifact to install (omit to check only the manifest's signature).",
               show_default=False)] = None,
           manifest: Annotated[Path, typer.Option(help="manifest.json of the release.")] =
           Path("manifest.json"),
           signature: Annotated[Path | None, typer.Option(
               help="The detached CMS signature (default: the manifest's name with .p7s).",
               show_default=False)] = None,
           trust: Annotated[Path, typer.Option(help="Trusted root certificate(s), PEM.")] =
           Path("ca.pem"),
           crl: Annotated[list[Path] | None, typer.Option(
               "--crl", help="CRL file(s), PEM or DER: the signer must not be revoked.",
               show_default=False)] = None,
           fleet: Annotated[str | None, typer.Option(
               help="This device's fleet: the release must target it.")] = None) -> None:
    """Check a release before installing it: digest, signature, chain, code-signing usage,
    revocation, timestamp and target fleet. Exit 0 if valid, 1 with the reason otherwise."""
    signature = signature or manifest.with_suffix(".p7s")
    try:
        result = jobs.verify_release(artifact, manifest, signature, trust, crl or [], fleet,
                                     jobs.now_utc())
    except jobs.VerifyError as exc:
        err.print(f"verification failed: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    stamp = f", timestamp {rfc3339(epoch(result.timestamp))}" if result.timestamp else ""
    signed = rfc3339(epoch(result.signing_time)) if result.signing_time else "?"
    out.print(f"OK: release {result.release}, signed {signed} by "
              f"{result.signer.subject.rfc4514_string()}{stamp}", markup=False, soft_wrap=True,
              highlight=False)


class DiscoverState(StrEnum):
    unreadable = "unreadable"
    revoked = "revoked"
    unknown = "unknown"
    wrong_chain = "wrong-chain"
    expired = "expired"
    weak = "weak"
    expiring = "expiring"


@app.command()
@handle_errors
def discover(paths: Annotated[list[Path] | None, typer.Argument(
                 help="Files or directories to search for PEM, DER and PKCS#12 certificates.",
                 show_default=False)] = None,
             tls: Annotated[list[str] | None, typer.Option(
                 "--tls", help="TLS endpoint HOST:PORT or HOST:PORT=SNI (repeatable).",
                 show_default=False)] = None,
             tls_list: Annotated[Path | None, typer.Option(
                 "--tls-list", help="File of endpoints, one per line (# comments).",
                 show_default=False)] = None,
             state_dir: StateOpt = None, database_url: DatabaseOpt = None,
             expiring: Annotated[str, typer.Option(
                 help="Flag certificates expiring within this time.")] = "720h",
             p12_passphrase: Annotated[str | None, typer.Option(
                 envvar="FLEETPKI_P12_PASSPHRASE", help="Passphrase of PKCS#12 files.",
                 show_default=False)] = None,
             fail_on: Annotated[list[DiscoverState] | None, typer.Option(
                 "--fail-on", help="Exit 1 when a finding has this state (repeatable).",
                 show_default=False)] = None,
             output: Annotated[OutputFormat, typer.Option("-o", "--output")] =
             OutputFormat.text) -> None:
    """Find certificates on TLS endpoints and in files and classify each against the inventory:
    managed, unknown (rogue), revoked, wrong-chain, expired, expiring, weak or unreadable. Exit 1
    on errors, or when a finding has a --fail-on state."""
    from controller.discovery.classify import finding_dict, summary
    from controller.discovery.scan import Endpoint

    try:
        window = parse_duration(expiring)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expiring") from None
    lines = list(tls or [])
    if tls_list is not None:
        lines += [line.split("#")[0].strip() for line in tls_list.read_text().splitlines()]
    try:
        endpoints = [Endpoint.parse(line) for line in lines if line]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tls") from None
    if not endpoints and not paths:
        raise typer.BadParameter("give --tls HOST:PORT, --tls-list FILE or PATHs to search")
    state = jobs.StateDir.resolve(state_dir, database_url)
    now = jobs.now_utc()
    columns = (TextColumn("discovering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("discovering", total=None)
        findings = jobs.discover(
            state, endpoints, paths or [], now, window,
            p12_passphrase.encode() if p12_passphrase is not None else None,
            lambda done, total: bar.update(task, completed=done, total=total))
    counts = summary(findings)
    if output != OutputFormat.text:
        _emit({"scannedAt": rfc3339(epoch(now)), "summary": counts,
               "findings": [finding_dict(f) for f in findings]}, output)
    else:
        _table_or_emit("Discovered certificates", [
            {"source": f.source, "state": f.state,
             "owner": "/".join(x for x in (f.owner, f.device) if x), "subject": f.subject,
             "expires": f.not_after.date().isoformat() if f.not_after else "",
             "problems": "; ".join(f.problems)} for f in findings], output)
        out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing found",
                  highlight=False)
    failing = {s.value for s in fail_on or ()}
    if any(failing.intersection(f.states) for f in findings):
        raise typer.Exit(1)


@app.command()
@handle_errors
def report(directory: DirArg, out_dir: Annotated[Path, typer.Option(
               "--out", help="Directory for report.html, report.json and the CSV files.",
               show_default=False)],
           state_dir: StateOpt = None,
           database_url: DatabaseOpt = None, status_branch: Annotated[str, typer.Option()] =
           jobs.STATUS_BRANCH, default_policies: DefaultPoliciesOpt = True,
           policies: PoliciesOpt = None) -> None:
    """Compliance report: self-contained HTML (inline SVG charts, nothing fetched) plus JSON
    and CSV. Counts per fleet and CA, expiry windows, algorithms, policy findings, revocations,
    CA and CRL health, and who changed what (git history, status branch, audit log)."""
    with _steps(jobs.REPORT_STEPS) as step:
        written = jobs.report(directory, jobs.StateDir.resolve(state_dir, database_url), out_dir,
                              jobs.now_utc(), jobs.PolicySource(default_policies, policies),
                              status_branch, step)
    for path in written:
        print(path)


@app.command()
@handle_errors
def reconcile(repo: Annotated[str, typer.Option(help="Git URL or path of the fleet repo.")],
              ref: Annotated[str, typer.Option(help="Branch to apply.")] = "main",
              interval: Annotated[str, typer.Option(help="Time between runs.")] = "60s",
              push: Annotated[bool, typer.Option(help="Push the status branch.")] = False,
              once: Annotated[bool, typer.Option(help="Run once and exit.")] = False,
              path: Annotated[str, typer.Option(help="Directory inside the repo.")] = ".",
              state_dir: StateOpt = None,
              database_url: DatabaseOpt = None, max_revocations: MaxRevOpt = None,
              new_ca: NewCAOpt = None, default_policies: DefaultPoliciesOpt = True,
              policies: PoliciesOpt = None, require_signed_commits: RequireSignedOpt = False,
              allowed_signers: AllowedSignersOpt = None,
              metrics_port: Annotated[int | None, typer.Option(
                  help="Serve Prometheus /metrics on this port (reconciles and inventory "
                  "gauges).")] = None) -> None:
    """The controller loop (git-only mode): fetch, apply, write and push status, sleep. With
    --once, any failure exits 1; in the loop, failures are logged and retried."""
    if new_ca and not once:
        raise typer.BadParameter("--new-ca is for one run: use it with --once",
                                 param_hint="--new-ca")
    state = jobs.StateDir.resolve(state_dir, database_url)
    try:
        period = parse_duration(interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--interval") from None
    reconciler = Reconciler(repo, ref, state, path=path, push=push,
                            max_revocations=max_revocations, new_cas=frozenset(new_ca or ()),
                            policies=jobs.PolicySource(default_policies, policies),
                            signers=_signers(require_signed_commits, allowed_signers))
    if metrics_port is not None:
        from controller.status import metrics

        metrics.serve(metrics_port, lambda: {"": state.inventory_location})
    reconciler.run(period if not once else None, log=lambda m: err.print(m, markup=False,
                                                                          highlight=False))


@app.command()
@handle_errors
def operator(
        namespace: Annotated[list[str] | None, typer.Option(
            "--namespace", "-n", help="Watch this namespace (repeatable).")] = None,
        all_namespaces: Annotated[bool, typer.Option(
            "--all-namespaces", "-A", help="Watch every namespace.")] = False,
        standalone: Annotated[bool, typer.Option(
            help="Run without peering (no other operator is looked for).")] = False,
        peering: Annotated[str, typer.Option(
            help="kopf peering object: of several operators with it, one acts.")] = "fleetpki",
        state_dir: StateOpt = None,
        resync: Annotated[str, typer.Option(
            help="How often renewals, CRLs and retries are looked at.")] = "5m",
        health_port: Annotated[int | None, typer.Option(
            help="Serve /healthz on this port (kopf's liveness endpoint).")] = None,
        metrics_port: Annotated[int | None, typer.Option(
            help="Serve Prometheus /metrics on this port.")] = None,
        priority: Annotated[int | None, typer.Option(
            help="kopf peering priority: the highest acts (default: random).")] = None,
        keys_namespace: Annotated[str | None, typer.Option(
            envvar="FLEETPKI_OPERATOR_NAMESPACE",
            help="Namespace of the CA key Secrets (default: the operator pod's namespace).")
        ] = None, policies: PoliciesOpt = None, database_url: DatabaseOpt = None,
        fleet_selector: Annotated[str | None, typer.Option(
            help="Shard: only DeviceFleets with these labels (LABEL=VALUE[,LABEL=VALUE]); "
            "needs --database-url.", show_default=False)] = None) -> None:
    """Kubernetes mode: reconcile the fleetpki objects of the cluster (kopf), status in
    `.status`. Each namespace has its own state: <state-dir>/namespaces/<namespace>, and its
    own inventory there or in its own schema of the --database-url database."""
    from controller.operator.main import OperatorOptions, run

    if bool(namespace) == all_namespaces:
        raise typer.BadParameter("give --namespace NS (repeatable) or --all-namespaces",
                                 param_hint="--namespace")
    try:
        period = parse_duration(resync)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--resync") from None
    keys_namespace = keys_namespace or _pod_namespace()
    if keys_namespace is None:
        raise typer.BadParameter("outside a pod, give the namespace of the CA key Secrets",
                                 param_hint="--keys-namespace")
    state = jobs.StateDir.resolve(state_dir, database_url)
    selector = None if fleet_selector is None else _label_selector(fleet_selector)
    if selector is not None and state.database_url is None:
        raise typer.BadParameter("shards share their CAs, so they need one inventory: give "
                                 "--database-url (each shard's own SQLite file would make "
                                 "its own CAs)", param_hint="--fleet-selector")
    if selector is not None and not standalone and peering == "fleetpki":
        raise typer.BadParameter("each shard elects its own leader: give it its own --peering "
                                 "NAME (and its ClusterKopfPeering or KopfPeering object)",
                                 param_hint="--fleet-selector")
    run(OperatorOptions(state.path, keys_namespace, tuple(namespace or ()), standalone,
                        peering, period, health_port, metrics_port, priority,
                        policies=policies, database_url=state.database_url,
                        fleet_selector=selector))


def _label_selector(text: str) -> dict[str, str]:
    """`LABEL=VALUE[,LABEL=VALUE]` (equality only) as a dict."""
    selector: dict[str, str] = {}
    for part in text.split(","):
        key, equals, value = part.strip().partition("=")
        if not equals or not key.strip() or key.strip() in selector:
            raise typer.BadParameter(f"{part.strip()!r}: expected LABEL=VALUE, each label "
                                     "once (equality only)", param_hint="--fleet-selector")
        selector[key.strip()] = value.strip()
    return selector


def _pod_namespace() -> str | None:
    """The namespace of the pod this runs in (its service account's), if any."""
    try:
        return POD_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


@app.command()
@handle_errors
def crds(out_dir: Annotated[Path, typer.Option("--out")] = Path("crds"),
         check: Annotated[bool, typer.Option(help="Exit 1 if the files are stale.")] = False,
         ) -> None:
    """Write the CRDs generated from the resource models."""
    _write_generated(render_crds(), out_dir, check)


def _write_generated(files: dict[str, str], target: Path, check: bool) -> None:
    """Write generated files that differ (or, with `check`, list them and exit 1)."""
    stale = []
    for name, text in files.items():
        path = target / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(str(path))
        if not check:
            exports.write_file(path, text.encode())
    for stale_path in stale:
        out.print(("stale: " if check else "wrote ") + stale_path, highlight=False)
    if check and stale:
        raise typer.Exit(1)


@app.command()
@handle_errors
def schema(out_dir: Annotated[Path | None, typer.Option(
               "--out", help="Write <Kind>.json files here (default: print to stdout).",
               show_default=False)] = None,
           check: Annotated[bool, typer.Option(
               help="Exit 1 if the files in --out (default docs/schema) are stale.")] = False,
           kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
           ) -> None:
    """JSON Schemas (draft 2020-12) of whole documents, for editors and CI. Without --out:
    one kind's schema, or an object of all of them by kind."""
    from controller.api.resources import KINDS
    from controller.api.schema import json_schema, render_schemas

    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"unknown kind {kind!r}; known: {sorted(KINDS)}",
                                 param_hint="--kind")
    kinds = list(KINDS) if kind is None else [kind]
    if out_dir is None and not check:
        if kind is not None:
            print(render_schemas(kinds)[f"{kind}.json"], end="")
        else:
            print(json.dumps({k: json_schema(k) for k in kinds}, indent=2, ensure_ascii=False))
        return
    _write_generated(render_schemas(kinds), Path("docs/schema") if out_dir is None else out_dir,
                     check)


@app.command()
@handle_errors
def codeowners(directory: DirArg, policies: Annotated[Path, typer.Option(
                   "--policies", help="Trusted policy directory with the Tenants.")],
               output: Annotated[Path | None, typer.Option(
                   "--output", "-o", help="Where to write (default: the repository's existing "
                   "CODEOWNERS in .github/, the top or docs/, else the top).",
                   show_default=False)] = None,
               default_owner: Annotated[list[str] | None, typer.Option(
                   "--default-owner", help="Owner of everything no tenant owns, and of the "
                   "CODEOWNERS file itself (repeatable).", show_default=False)] = None,
               check: Annotated[bool, typer.Option(
                   help="Exit 1 with a diff if the file is missing or stale (for CI).")] = False,
               ) -> None:
    """Write CODEOWNERS from the tenants: each tenant's paths need its owners' review."""
    path, text = jobs.codeowners(directory, policies, default_owner or (), output)
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == text:
        out.print(f"{path}: up to date", highlight=False)
    elif check:
        diff = difflib.unified_diff(current.splitlines(keepends=True),
                                    text.splitlines(keepends=True), str(path), "generated")
        err.print("".join(diff), markup=False, highlight=False, end="")
        _say("error", [f"{path} is stale: run this command without --check and commit it"])
        raise typer.Exit(1)
    else:
        exports.write_file(path, text.encode())
        out.print(f"wrote {path}", highlight=False)


@app.command()
@handle_errors
def serve(directory: DirArg, state_dir: StateOpt = None, database_url: DatabaseOpt = None,
          http: Annotated[str | None, typer.Option(
              "--http", help="HOST:PORT for OCSP, CRLs and CA certificates.")] = None,
          https: Annotated[str | None, typer.Option(
              "--https", help="HOST:PORT for EST (RFC 7030).")] = None,
          tls_ca: Annotated[str | None, typer.Option(
              "--tls-ca", help="CA that issues the HTTPS server certificate at startup "
              "(default: the CA that issues every declared fleet, else the only CA declared).")
          ] = None,
          tls_name: Annotated[str | None, typer.Option(
              "--tls-name", help="DNS name or IP of the server certificate (default: the host "
              "of --https).")] = None,
          workers: Annotated[int, typer.Option(
              "--workers", min=1, help="Processes answering OCSP, CRLs and EST on the same "
              "ports (SO_REUSEPORT); /metrics counts them all.")] = 1,
          default_policies: DefaultPoliciesOpt = True, policies: PoliciesOpt = None) -> None:
    """Serve devices: OCSP, CRLs and CA certificates over HTTP, EST over HTTPS. EST checks
    each enrollment against the same policies (and tenants) as apply."""
    import asyncio
    import logging

    from controller.servers.app import ServeOptions, parse_listener, serve_forever
    from controller.servers.state import ServerState
    from controller.servers.workers import Workers

    if http is None and https is None:
        err.print("error: give --http HOST:PORT and/or --https HOST:PORT", markup=False)
        raise typer.Exit(1)
    try:
        options = ServeOptions(directory, parse_listener(http) if http else None,
                               parse_listener(https) if https else None, tls_ca, tls_name)
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    where = jobs.StateDir.resolve(state_dir, database_url)
    sources = jobs.PolicySource(default_policies, policies)
    state = ServerState(directory, where, sources) if workers == 1 else None
    try:
        if state is None:
            Workers(lambda: ServerState(directory, where, sources), options, workers).run()
        else:
            asyncio.run(serve_forever(state, options))
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # e.g. --https without --tls-ca and no CA to default to
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        if state is not None:
            state.close()


@app.command("enroll-secret")
@handle_errors
def enroll_secret(directory: DirArg, fleet: Annotated[str, typer.Option()],
                  device: Annotated[str, typer.Option()], state_dir: StateOpt = None,
                  database_url: DatabaseOpt = None) -> None:
    """Create a one-time EST enrollment secret for a declared device and print it once
    (stored only as a salted HMAC-SHA256 of it; a new secret replaces an unused one). It
    authenticates simpleenroll (keyGeneration: device) or serverkeygen (keyGeneration: server)."""
    from controller.servers.est import new_secret

    state = jobs.StateDir.resolve(state_dir, database_url)
    with state.inventory(create=False) as inventory:
        # with the inventory, an unchanged fleet's row is read alone (not a million validated)
        decl = jobs.load(directory, inventory=inventory).desired.fleets.get(fleet)
        if decl is None or decl.device(device) is None:
            err.print(f"error: device {device!r} is not declared in fleet {fleet!r}",
                      markup=False)
            raise typer.Exit(1)
        now = jobs.now_utc()
        secret, record = new_secret(fleet, device, now)
        with inventory.transaction():
            inventory.put_enrollment_secret(record)
    state.audit().record([Event("enrollment.secret-created", "success", f"DeviceFleet/{fleet}",
                                local_actor(), {"device": device})], now)
    print(secret)


@app.command("backup")
@handle_errors
def backup_state(out_file: Annotated[Path, typer.Option(
                     "--out", help="The backup file (gzip tar, written 0600, replaced atomically).",
                     show_default=False)],
                 state_dir: StateOpt = None, database_url: DatabaseOpt = None) -> None:
    """Snapshot the inventory (SQLite online backup, safe while serve or apply run) and the
    encrypted keystore into one file. Keys stay encrypted; no passphrase needed."""
    state = _sqlite_only(jobs.StateDir.resolve(state_dir, database_url), "backup")
    with _steps(backup.BACKUP_STEPS) as step:
        summary = backup.backup(state.path, out_file, jobs.now_utc(), step)
    out.print(f"Backed up {state.path} to {summary.path}: {summary.certificates} "
              f"certificate(s), {summary.key_files} keystore file(s), {summary.size} bytes.",
              highlight=False)


@app.command("restore")
@handle_errors
def restore_state(archive: Annotated[Path, typer.Argument(
                      help="A file written by `fleetpki backup`.", show_default=False)],
                  state_dir: StateOpt = None, database_url: DatabaseOpt = None) -> None:
    """Restore a backup into a new state directory (refused unless it is absent or empty).
    All-or-nothing: the archive is verified before anything appears there."""
    state = _sqlite_only(jobs.StateDir.resolve(state_dir, database_url), "restore")
    summary = backup.restore(archive, state.path)
    out.print(f"Restored {summary.certificates} certificate(s) and {summary.key_files} "
              f"keystore file(s) into {summary.path}.", highlight=False)
    out.print(f"The keys are still encrypted: use the same {jobs.PASSPHRASE_ENV} as the backed-up "
              "state directory.", highlight=False)


def _sqlite_only(state: jobs.StateDir, command: str) -> jobs.StateDir:
    if state.database_url is not None:
        raise backup.BackupError(f"fleetpki {command} covers an SQLite inventory; with a "
                                 "PostgreSQL one use pg_dump/pg_restore for the database "
                                 "(and copy the state directory's keys/ with it)")
    return state


@app.command("migrate")
@handle_errors
def migrate(state_dir: StateOpt = None, database_url: DatabaseOpt = None,
            source: Annotated[str | None, typer.Option(
                "--from", help="sqlite:PATH (an inventory file or a state directory) to copy "
                "from, with --to.", show_default=False)] = None,
            target: Annotated[str | None, typer.Option(
                "--to", help="postgresql://… database to copy --from into (must be empty).",
                show_default=False)] = None) -> None:
    """Create or upgrade the inventory's schema (never done implicitly for PostgreSQL), or
    copy an SQLite inventory into PostgreSQL, verified row for row (--from/--to)."""
    if (source is None) != (target is None):
        raise jobs.InventoryError("--from and --to go together")
    if source is not None and target is not None:
        if not source.startswith("sqlite:"):
            raise jobs.InventoryError(f"--from must be sqlite:PATH, not {source!r}")
        copied = jobs.copy_inventory(Path(source.removeprefix("sqlite:")).expanduser(), target)
        out.print("Copied and verified " + ", ".join(f"{n} {table}" for table, n in
                                                   copied.items()) + ".", highlight=False)
        return
    state = jobs.StateDir.resolve(state_dir, database_url)
    for which, before, after in jobs.migrate_inventory(state):
        out.print(f"{which} schema at version {after}" +
                  (f" (was {before})." if before != after else " (up to date)."),
                  highlight=False)


def main() -> None:
    os.environ.setdefault("COLUMNS", "120")
    app(prog_name="fleetpki")


if __name__ == "__main__":
    main()
