"""The job: validate -> plan -> apply -> status, wiring the pure layers to the stores."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import git
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller import heap
from controller.api.desired import Applied, Desired
from controller.api.devices import DeviceSummary, ReadDevices
from controller.api.loading import Located
from controller.api.problems import Finding, InvalidDeclaration, Problem
from controller.apply.evidence import ExistingCA, Places, refuse_existing_cas
from controller.apply.executor import ApplyRefused, ApplyResult, Progress, execute, prepare
from controller.apply.observe import observe
from controller.audit import events as audit_events
from controller.audit.forward import destinations_from_env
from controller.audit.records import Event
from controller.audit.trail import Trail
from controller.clock import epoch
from controller.clock import now_utc as now_utc  # part of the job API
from controller.discovery import job as discovery
from controller.discovery.classify import Finding as Discovered
from controller.discovery.scan import Endpoint
from controller.exports import DevicePEM, device_pem
from controller.pki.certificates import load_certificates_pem
from controller.pki.errors import PKIError
from controller.plan.baseline import AsApplied
from controller.plan.dangers import dangers
from controller.plan.intents import DeviceIntent
from controller.plan.model import ActiveDevice, Observed, Plan
from controller.plan.planner import plan as make_plan
from controller.policy.changes import policy_changes
from controller.policy.codeowners import LOCATIONS as CODEOWNERS_LOCATIONS
from controller.policy.codeowners import codeowners as codeowners_text
from controller.policy.engine import CompiledRule, PolicyJudge, compile_policies
from controller.policy.gate import gate
from controller.policy.signers import AllowedSigners as AllowedSigners  # part of the job API
from controller.policy.signers import SignersFileError as SignersFileError  # part of the job API
from controller.policy.tenancy import Tenancy, assign, cluster_access
from controller.report.job import STEPS as BUILD_STEPS
from controller.report.job import build_report, write_report
from controller.signing.verify import Verified
from controller.signing.verify import VerifyError as VerifyError  # part of the job API
from controller.signing.verify import verify_release as verify_signed_release
from controller.sources.policies import DEFAULT_SOURCE as DEFAULT_SOURCE  # part of the job API
from controller.sources.policies import PolicySource as PolicySource  # part of the job API
from controller.sources.policies import read_policies, read_trusted_directory
from controller.sources.repo import committed_reader, load_repository, repository_reader
from controller.sources.signatures import UnsignedChange as UnsignedChange  # part of the job API
from controller.sources.signatures import read_allowed_signers as read_allowed_signers
from controller.sources.signatures import verify_commits
from controller.sources.worktree import enclosing_work_tree, uncommitted_changes
from controller.status.fleetlint import lint as lint  # part of the job API
from controller.status.gitbranch import GitStatus
from controller.status.report import Outcome, build_status
from controller.status.store import StatusStore, StatusUpdate
from controller.stores.database import ERRORS as DATABASE_ERRORS  # noqa: F401 # part of the job API
from controller.stores.database import (
    NAMESPACE_PREFIX,
    in_schema,
    is_url,
    namespace_schema,
    redact,
)
from controller.stores.inventory import (
    ActiveOf,
    Inventory,
    copy,
    create_if_absent,
    database_lock,
    migrate,
    namespace_schemas,
)
from controller.stores.inventory import InventoryError as InventoryError  # part of the job API
from controller.stores.keystore import PASSPHRASE_ENV as PASSPHRASE_ENV  # part of the job API
from controller.stores.keystore import FileBlobs, KeyBlobs, KeyStore, initialised
from controller.stores.keystore import KeyStoreError as KeyStoreError  # part of the job API
from controller.stores.publish import sync_public
from controller.stores.secret_location import CLUSTER_SCOPE, secret_blobs

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def api_client() -> ApiClient:
    """The Kubernetes API client (the operator's, and of keys kept as Secrets): in-cluster
    credentials, else $KUBECONFIG. The client is loaded when first asked for, not by every
    command."""
    from controller.stores import secrets

    return secrets.api_client()


STATE_ENV = "FLEETPKI_STATE_DIR"
DATABASE_ENV = "FLEETPKI_DATABASE_URL"
SCHEMA_FILE = "database.json"  # a namespace's state directory: its schema of the database
CLUSTER_FILE = "cluster.json"  # a namespace's state directory: where the cluster scope is
CLUSTER_SCHEMA = NAMESPACE_PREFIX + "_cluster"  # no namespace's schema: none starts with "_"
# what a run refuses with, before or while applying: reported (on status too), not retried
REFUSALS = (InvalidDeclaration, ApplyRefused, ExistingCA, KeyStoreError, PKIError,
            UnsignedChange)
STATUS_BRANCH = "fleetpki/status"
COMMIT = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1 or SHA-256; not `…-dirty`
DANGER_FRACTION = 0.1  # flag a change that revokes more than this share of a fleet


def _recorded(path: Path, file: str, key: str, what: str) -> str | None:
    """`key` of the JSON record `file` a state directory keeps, if it has one."""
    try:
        recorded = json.loads((path / file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InventoryError(f"cannot read {path / file}: {exc}") from None
    value = recorded.get(key) if isinstance(recorded, dict) else None
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{path / file}: no \"{key}\" ({what})")
    return value


def recorded_schema(path: Path) -> str | None:
    """The PostgreSQL schema a state directory's inventory is in (a Kubernetes namespace's),
    if it records one."""
    return _recorded(path, SCHEMA_FILE, "schema", "the namespace's PostgreSQL schema")


def recorded_cluster(path: Path) -> Path | None:
    """The cluster scope a Kubernetes namespace's state directory records, if any (an
    inaccessible directory is left for the inventory to report)."""
    if path.is_dir() and not os.access(path, os.X_OK):
        return None
    where = _recorded(path, CLUSTER_FILE, "path", "the cluster scope's state directory")
    return (path / where).resolve() if where is not None else None


class StateLocked(Exception):
    """Another fleetpki process holds the state directory."""


@dataclass(frozen=True)
class StateDir:
    """Where the inventory, keys and published CRLs/CA certificates live (never in git).

    The keys are files in `<path>/keys` unless `key_blobs` names another backend (the operator
    passes `SecretBlobs`: Kubernetes Secrets). The inventory is `<path>/inventory.db` (SQLite)
    unless `database_url` names a PostgreSQL database (never printed: it may hold a password)."""

    path: Path
    key_blobs: KeyBlobs | None = field(default=None, compare=False, repr=False)
    database_url: str | None = field(default=None, compare=False, repr=False)
    # a Kubernetes namespace's: the operator's cluster scope, whose CA keys it signs with too
    cluster: StateDir | None = field(default=None, compare=False, repr=False)

    @classmethod
    def resolve(cls, option: Path | None, database_url: str | None = None) -> StateDir:
        """From the options, else $FLEETPKI_STATE_DIR and $FLEETPKI_DATABASE_URL."""
        url = database_url or os.environ.get(DATABASE_ENV) or None
        if url is not None and not is_url(url):
            raise InventoryError(f"--database-url / ${DATABASE_ENV} must be a postgresql:// "
                                 f"URL, not {redact(url)!r} (leave it unset for SQLite)")
        if option is not None:
            path = option.expanduser().resolve()
        elif os.environ.get(STATE_ENV):
            path = Path(os.environ[STATE_ENV]).expanduser().resolve()
        else:
            base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
            path = base / "fleetpki"
        schema = recorded_schema(path) if url is not None else None
        cluster = recorded_cluster(path)
        return cls(path, database_url=in_schema(url, schema) if url and schema else url,
                   cluster=cls(cluster) if cluster is not None else None)

    @property
    def inventory_path(self) -> Path:
        return self.path / "inventory.db"

    @property
    def inventory_location(self) -> Path | str:
        """The SQLite file, or the PostgreSQL URL."""
        return self.database_url or self.inventory_path

    @property
    def public_dir(self) -> Path:
        return self.path / "public"

    def exists(self) -> bool:
        """Whether there is an inventory (a PostgreSQL one is checked when opened)."""
        return self.database_url is not None or self.inventory_path.exists()

    def inventory(self, create: bool = True) -> Inventory:
        """The inventory for writing: created if absent (only with `create`), never in place
        of a damaged one."""
        if not create and not self.exists():
            raise InventoryError(f"no inventory in {self.path}: run `fleetpki apply` first "
                                 "(or restore a backup)")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.stat().st_mode & 0o077:
            self.path.chmod(0o700)
        return Inventory(self.inventory_location)

    def reader(self) -> Inventory:
        """The existing inventory, read-only (works in a read-only state directory)."""
        return Inventory(self.inventory_location, read_only=True)

    @property
    def keys(self) -> KeyBlobs:
        """Where the keystore's blobs are: `key_blobs`, else the Secrets the directory records
        (Kubernetes mode), else the files in `<path>/keys`."""
        if self.key_blobs is not None:
            return self.key_blobs
        return secret_blobs(self.path) or FileBlobs(self.path / "keys")

    @classmethod
    def for_namespace(cls, path: Path, api: ApiClient, keys_namespace: str, namespace: str,
                      database_url: str | None = None, cluster: StateDir | None = None
                      ) -> StateDir:
        """A Kubernetes namespace's state directory: its keys are Secrets in `keys_namespace`;
        its inventory is `path`'s SQLite file, or the namespace's own schema of `database_url`
        (made if absent when the directory does not record it yet: a schema dropped later is
        an error, never a new empty inventory). Both, and the `cluster` scope whose CA keys it
        may sign with, are recorded in it, so that every command on it (serve, export, with
        the database URL) uses them too."""
        state = cls._scope(path, api, keys_namespace, namespace, namespace_schema(namespace),
                           database_url)
        if cluster is not None and recorded_cluster(path) != cluster.path:
            (path / CLUSTER_FILE).write_text(json.dumps(
                {"path": os.path.relpath(cluster.path, path)}) + "\n", encoding="utf-8")
        return replace(state, cluster=cluster)

    @classmethod
    def for_cluster(cls, path: Path, api: ApiClient, keys_namespace: str,
                    database_url: str | None = None) -> StateDir:
        """The operator's cluster scope: the ClusterCertificateAuthorities' inventory and keys
        (Secrets of scope `cluster.fleetpki.io`, a name no namespace can have)."""
        return cls._scope(path, api, keys_namespace, CLUSTER_SCOPE, CLUSTER_SCHEMA, database_url)

    @classmethod
    def _scope(cls, path: Path, api: ApiClient, keys_namespace: str, scope: str, schema: str,
               database_url: str | None) -> StateDir:
        url = None
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if database_url is not None:
            url = in_schema(database_url, schema)
            if recorded_schema(path) != schema:  # once per state directory, not every run
                create_if_absent(url)
                (path / SCHEMA_FILE).write_text(json.dumps({"schema": schema}) + "\n",
                                                encoding="utf-8")
        return cls(path, secret_blobs(path, api, keys_namespace, scope), url)

    def keystore(self) -> KeyStore:
        """The keystore over `keys`, unlocked with $FLEETPKI_PASSPHRASE (when first used); CA
        keys it lacks are read from the cluster scope's, if it has one."""
        return KeyStore.from_env(self.keys, self.cluster.keys if self.cluster else None)

    @contextmanager
    def lock(self, fleets: Collection[str] = ()) -> Iterator[None]:
        """One applier per state directory; a second one fails at once instead of racing.

        With PostgreSQL, appliers on any machine wait for each other's database locks: an
        apply of every fleet excludes all others; appliers of `fleets` exclude those of the
        same fleets only (their CA work is serialized by `ca_lock`)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(self.path / "apply.lock", f"another fleetpki process is applying with "
                     f"state directory {self.path}; try again when it has finished"):
            if self.database_url is None:
                yield
            elif fleets:
                with database_lock(self.database_url, [f"fleet {f}" for f in fleets],
                                   shared=["all fleets"]):
                    yield
            else:
                with database_lock(self.database_url, ["all fleets"]):
                    yield

    def ca_lock(self) -> AbstractContextManager[object]:
        """Held around an apply's work on CAs, the crash journal and CRLs (PostgreSQL)."""
        if self.database_url is None:
            return contextlib.nullcontext()
        return database_lock(self.database_url, ["CAs"])

    def audit(self, keystore: Callable[[], KeyStore] | None = None) -> Trail:
        """The audit trail of this state directory (forwarded as $FLEETPKI_AUDIT_SYSLOG says),
        sealed with the keystore's audit key once the keystore is initialised and unlocked
        (records written before are sealed by the next append, which says so)."""
        opened = keystore or functools.cache(self.keystore)

        def key() -> Ed25519PrivateKey | None:
            if not initialised(self.keys):
                return None
            try:
                return opened().audit_signing_key()
            except KeyStoreError:
                return None
        return Trail(self.path, key, destinations_from_env())

    def places(self, status: StatusStore | None) -> Places:
        """Where evidence of existing CAs is looked for."""
        return Places(self.path, self.keys, self.public_dir, status)


@contextmanager
def _locked(path: Path, busy: str) -> Iterator[None]:
    """An exclusive lock file (0600), or StateLocked(busy) at once."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(busy) from None
        yield


@contextmanager
def repository_lock(root: Path | None) -> Iterator[None]:
    """One apply per repository at a time, whatever its state directory: a second one with
    another state directory then sees the first one's CAs on the status branch."""
    if root is None:
        yield
        return
    common = Path(git.Repo(root).common_dir)
    with _locked(common / "fleetpki-apply.lock", f"another fleetpki apply is running on the "
                 f"repository {root} (lock {common / 'fleetpki-apply.lock'}); try again when "
                 "it has finished"):
        yield


@dataclass(frozen=True)
class _Judges:
    """A plan's judges, each told of every device intent (the planner's `IntentSink`)."""

    judges: list[PolicyJudge]

    def __call__(self, fleet: str, intent: DeviceIntent, labels: Mapping[str, str]) -> None:
        for judge in self.judges:
            judge.device(fleet, intent, labels)

    def gathered(self) -> list[Any]:
        return [judge.gathered() for judge in self.judges]

    def add(self, gathered: list[Any]) -> None:
        for judge, found in zip(self.judges, gathered, strict=True):
            judge.add(found)


@dataclass(frozen=True)
class Declaration:
    """A repository's desired state with its effective policies, compiled."""

    desired: Desired
    rules: list[CompiledRule]
    policies: list[Located] = field(default_factory=list)
    tenancy: Tenancy = Tenancy()

    def plan(self, observed: Observed, now: datetime, max_revocations: int | None = None,
             danger_fraction: float = DANGER_FRACTION,
             trusted: Declaration | None = None) -> Plan:
        """Plan, evaluate policies over it, drop what a deny forbids, flag dangers. With a
        `trusted` declaration (a pull request's base), its policies judge the plan too (their
        findings say `(base)`), and every change to the policies is a danger. The policies
        judge each device intent as the planner makes it, and none is kept."""
        judges = _Judges([PolicyJudge(declaration.rules, self.desired, now, self.tenancy)
                          for declaration in (self, trusted) if declaration is not None])
        planned = make_plan(self.desired, observed, now, max_revocations, judges)
        findings = judges.judges[0].findings()
        flags: list[str] = []
        if trusted is not None:
            own = {(f.policy, f.rule, f.action, f.object, f.device) for f in findings}
            base = judges.judges[1].findings()
            findings += [replace(f, policy=f"{f.policy} (base)") for f in base
                         if (f.policy, f.rule, f.action, f.object, f.device) not in own]
            flags = policy_changes(trusted.policies, self.policies)
        gated = gate(planned, self.desired, findings)
        return replace(gated, dangers=tuple(flags + dangers(gated, danger_fraction)))


def read_declaration(directory: Path, policies: PolicySource = DEFAULT_SOURCE,
                     inventory: Inventory | None = None, active: ActiveOf | None = None,
                     applied: Applied | None = None, deferred: bool = False,
                     previous: ReadDevices | None = None) -> tuple[Declaration, list[Problem]]:
    """Resources, policies and tenants (from where `policies` says), with every problem. With
    the `inventory`, the device rows of fleets unchanged since their last complete apply are
    parsed only when used (a no-op run hashes them and parses none), and in a changed fleet the
    rows its active certificates were issued from are not validated again (`active`: how a
    fleet's active certificates are read, shared with `observe`). Without one, `applied` and
    `active` say the same of a pull request's base as if applied, and `deferred` leaves every
    fleet's rows to be parsed when used (the base itself). `previous` reads the device files
    as they were applied (or as the base declares them): of a fleet whose file alone changed,
    only the changed rows are parsed."""
    if inventory is not None:
        applied = {name: (digest, DeviceSummary(devices, declared))
                   for name, (digest, devices, declared) in inventory.applied_fleets().items()}
    of = active or (inventory.active_devices if inventory is not None else None)
    desired, problems = load_repository(directory, applied, None if of is None else (
        lambda name: {device[3] for device in of(name).values() if device[3] is not None}),
        deferred, previous)
    effective = read_policies(policies, desired)
    rules, rule_problems = compile_policies(effective.policies)
    tenancy, tenancy_problems = assign([] if policies.cluster else effective.tenants, desired,
                                       policies.namespace)
    tenancy_problems += cluster_access(desired, tenancy, policies.namespace)
    return (Declaration(desired, rules, effective.policies, tenancy),
            problems + effective.problems + rule_problems + tenancy_problems)


def load(directory: Path, policies: PolicySource = DEFAULT_SOURCE,
         inventory: Inventory | None = None, active: ActiveOf | None = None,
         applied: Applied | None = None, previous: ReadDevices | None = None) -> Declaration:
    """The declaration, or InvalidDeclaration listing every problem."""
    declaration, problems = read_declaration(directory, policies, inventory, active, applied,
                                             previous=previous)
    if problems:
        raise InvalidDeclaration(problems)
    return declaration


@heap.long_lived()
def validate(directory: Path, now: datetime,
             policies: PolicySource = DEFAULT_SOURCE) -> tuple[list[Problem], list[Finding]]:
    """Schema, references, templates, device keys, CSRs and policies; nothing applied."""
    declaration, problems = read_declaration(directory, policies)
    if problems:
        return problems, []
    planned = declaration.plan(Observed(), now)
    return list(planned.problems), list(planned.findings)


@heap.long_lived()
def plan(directory: Path, state: StateDir, now: datetime, max_revocations: int | None = None,
         policies: PolicySource = DEFAULT_SOURCE, danger_fraction: float = DANGER_FRACTION,
         new_cas: frozenset[str] = frozenset(), status_branch: str = STATUS_BRANCH) -> Plan:
    """Plan against the inventory (read-only; an absent state directory is empty). A CA to
    create that exists elsewhere is refused (ExistingCA), as apply would."""
    root = enclosing_work_tree(directory)
    branch = GitStatus(root, status_branch) if root else None
    places = state.places(branch)
    if not state.exists():
        declaration = load(directory, policies)
        the_plan = declaration.plan(Observed(), now, max_revocations, danger_fraction)
        refuse_existing_cas(_created_cas(the_plan), places, None, new_cas)
        return the_plan
    with state.reader() as inventory:
        active = functools.cache(inventory.active_devices)  # read once for load and observe
        declaration = load(directory, policies, inventory, active,
                           previous=applied_files(directory, branch))
        the_plan = declaration.plan(observe(inventory, declaration.desired, now, active=active),
                                    now, max_revocations, danger_fraction)
        refuse_existing_cas(_created_cas(the_plan), places, inventory, new_cas)
        return the_plan


def _created_cas(the_plan: Plan) -> list[str]:
    return [a.name for a in the_plan.actions if a.action == "create-ca"]


def plan_change(directory: Path, base: Path, now: datetime, max_revocations: int | None = None,
                policies: PolicySource = DEFAULT_SOURCE,
                danger_fraction: float = DANGER_FRACTION) -> Plan:
    """What the head declaration changes relative to the base declaration, as if the base had
    been applied: the pull-request view. The base's policies (already merged, trusted) judge it
    as well as the head's, and a change to the policies is a danger.

    The base is judged as applied fleets are: a fleet declared exactly as in the base (the
    same content hash) is not parsed on either side; of a fleet whose device file alone changed,
    only the records that differ from the base's file are read (counted from it), and a head
    row that is the base's row of a device, under the same fleet and profile, is not validated
    nor rendered again. What the base declares is read only where the change needs it; its
    problems name `(base)` files."""
    before, base_problems = read_declaration(base, policies, deferred=True)
    if base_problems:
        load(directory, policies)  # the head's own problems first
        raise _from_base(base_problems)
    as_applied = AsApplied(before.desired, now)

    def active(name: str) -> dict[str, ActiveDevice]:
        with _read_from_base():
            return as_applied.active(name)

    head = load(directory, policies, active=active, applied={
        name: (decl.content_hash, None) for name, decl in before.desired.fleets.items()},
        previous=repository_reader(base.resolve()))
    with _read_from_base():
        baseline = as_applied.observed(head.desired)
    return head.plan(baseline, now, max_revocations, danger_fraction, trusted=before)


def _from_base(problems: Sequence[Problem]) -> InvalidDeclaration:
    return InvalidDeclaration([replace(p, file=f"(base) {p.file}") for p in problems])


@contextmanager
def _read_from_base() -> Iterator[None]:
    """Problems found while reading the base (its rows are read when first needed) name it."""
    try:
        yield
    except InvalidDeclaration as exc:
        raise _from_base(exc.problems) from None


@contextmanager
def checkout_of(directory: Path, ref: str) -> Iterator[Path]:
    """The same directory of the repository at `ref`, exported to a temporary directory (the
    repository, its index and work tree are not touched)."""
    root = enclosing_work_tree(directory)
    if root is None:
        raise InvalidDeclaration([Problem(str(directory), "--base needs DIR inside a git "
                                          "repository (or use --base-dir)")])
    repository = git.Repo(root)
    try:
        commit = repository.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
    except git.GitCommandError:
        raise InvalidDeclaration([Problem(str(directory), f"--base: unknown git revision "
                                          f"{ref!r}")]) from None
    subdirectory = directory.resolve().relative_to(root)
    with tempfile.TemporaryDirectory(prefix="fleetpki-base-") as temporary:
        archive = Path(temporary) / "base.tar"
        with open(archive, "wb") as handle:
            repository.archive(handle, treeish=commit, format="tar")
        with tarfile.open(archive) as tar:
            tar.extractall(Path(temporary) / "tree", filter="data")
        yield Path(temporary) / "tree" / subdirectory


def codeowners(directory: Path, policies: Path, default_owners: Sequence[str] = (),
               output: Path | None = None) -> tuple[Path, str]:
    """Where the CODEOWNERS of the repository holding `directory` goes (`output`, else the
    first of .github/, the top, docs/ that has one, else the top) and its text from the
    tenants in the trusted directory `policies`."""
    _, tenants, problems = read_trusted_directory(policies)
    if problems:
        raise InvalidDeclaration(problems)
    if not tenants:
        raise InvalidDeclaration([Problem(str(policies), "no Tenant declared: nothing to own")])
    root = enclosing_work_tree(directory) or directory.resolve()
    prefix = directory.resolve().relative_to(root).as_posix()
    if output is None:
        output = next((root / name for name in CODEOWNERS_LOCATIONS if (root / name).exists()),
                      root / "CODEOWNERS")
    return output, codeowners_text(tenants, prefix, default_owners,
                                   f"the tenants in {policies.name or policies}")


def discover(state: StateDir, endpoints: Sequence[Endpoint], trees: Sequence[Path],
             now: datetime, expiring_within: timedelta, p12_passphrase: bytes | None = None,
             progress: Callable[[int, int], None] = lambda done, total: None
             ) -> list[Discovered]:
    """Classify the certificates of `endpoints` and `trees` against the inventory. Where one
    of ours was seen is recorded (so lint finds revoked certificates still in use), and what
    is not managed goes to the audit log."""
    with state.inventory(create=False) as inventory:
        findings = discovery.discover(inventory, endpoints, trees, now, expiring_within,
                                      p12_passphrase, progress)
        with inventory.transaction():
            for finding in findings:
                if finding.owner is not None:  # a certificate of the inventory
                    inventory.saw(finding.serial, f"discover {finding.source}", epoch(now))
    state.audit().record(audit_events.discovered(findings, audit_events.local_actor()), now)
    return findings


@dataclass
class ApplyReport:
    plan: Plan
    result: ApplyResult
    status_commit: str | None


def observed_commit(directory: Path, root: Path) -> str | None:
    """HEAD, marked `-dirty` when files under `directory` are not committed (what status
    records as applied: `apply --allow-uncommitted` applies the working tree)."""
    try:
        head = git.Repo(root).head.commit.hexsha
    except ValueError:  # no commits yet
        return None
    return f"{head}-dirty" if uncommitted_changes(directory) else head


def applied_files(directory: Path, branch: GitStatus | None) -> ReadDevices | None:
    """The device files as the commit last applied holds them (the status branch records it;
    none when unknown, or when the work tree was applied uncommitted)."""
    commit = branch.last_applied() if branch is not None else None
    if commit is None or not COMMIT.fullmatch(commit):
        return None
    return committed_reader(directory.resolve(), commit)


@heap.long_lived()
def apply(directory: Path, state: StateDir, now: datetime, *,
          max_revocations: int | None = None, allow_mass_revocation: bool = False,
          write_status: bool = True, status_branch: str = STATUS_BRANCH,
          status_store: StatusStore | None = None, source_problems: Sequence[Problem] = (),
          progress: Progress = lambda n: None, policies: PolicySource = DEFAULT_SOURCE,
          new_cas: frozenset[str] = frozenset(),
          signers: AllowedSigners | None = None,
          fleets: frozenset[str] = frozenset(),
          elsewhere: Sequence[Path | str] = ()) -> ApplyReport:
    """Converge, then write status: to `status_store`, else to the status branch (when in a
    git repository and `write_status`). `source_problems` are what the source found before
    writing `directory` (an unreadable device source in Kubernetes mode). The keys are where
    `state` keeps them (files, or Secrets in Kubernetes mode).

    Everything that can refuse (the declaration, policies, existing CAs, the passphrase and
    every CA key the plan signs with) is checked before the first change. A refused run keeps
    every object's last known status, Stalled; a failure while applying writes status from the
    inventory. The public directory is re-derived from the inventory on every run.

    With `signers`, every commit since the last applied one (recorded on the status branch) up
    to HEAD must be signed by a key they allow for each path of `directory` it touches
    (UnsignedChange otherwise); the status commit records who signed HEAD.

    With `fleets`, only those fleets' certificates are changed (and the CAs' work: creation,
    renewal, CRLs); with PostgreSQL, appliers of other fleets may run at the same time.

    The CRLs list the revocations under our CAs recorded `elsewhere` too (the inventories, read
    only, of the namespaces that issue from the operator's cluster-wide CAs).
    """
    root = enclosing_work_tree(directory)
    records = write_status and status_store is None  # only a written branch records HEAD
    branch = GitStatus(root, status_branch,
                       observed_commit(directory, root) if records else None) \
        if root is not None else None
    store = status_store or (branch if write_status else None)
    evidence = status_store or branch  # the status branch is evidence even when not written
    commit = store.observed() if store is not None else None
    keystore = functools.cache(state.keystore)
    trail = state.audit(keystore)
    with repository_lock(root), state.lock(fleets), state.inventory() as inventory, \
            contextlib.ExitStack() as opened:
        others = [opened.enter_context(Inventory(where, read_only=True)) for where in elsewhere]
        previous = store.read() if store is not None else {}

        def write(summary: str, done: dict[str, int] | None = None,
                  applied: bool = False) -> str | None:
            if store is None:
                return None
            files = build_status(desired, inventory, outcome, previous, now, commit)
            return store.write(StatusUpdate(files, summary, the_plan, outcome, now, done or {},
                                            applied, str(signer) if signer else None))

        active = functools.cache(inventory.active_devices)  # read once for load and observe
        declaration, problems = read_declaration(directory, policies, inventory, active,
                                                 previous=applied_files(directory, branch))
        problems = [*source_problems, *problems]
        desired = declaration.desired
        outcome = Outcome(problems=list(problems))
        the_plan = Plan(())
        signer = None
        try:
            if signers is not None:
                if branch is None:
                    raise ApplyRefused(f"{directory} is not in a git repository: signed commits "
                                       "cannot be required")
                signer = verify_commits(branch.root, directory, branch.last_applied(), signers,
                                        declaration.tenancy)
            if problems:
                raise InvalidDeclaration(problems)
            observed = observe(inventory, desired, now, others, active)
            the_plan = only_fleets(declaration.plan(observed, now, max_revocations), desired,
                                   fleets)
            outcome.problems.extend(the_plan.problems)
            outcome.findings.extend(the_plan.findings)
            outcome.blocked_fleets.update(the_plan.blocked_fleets)
            refuse_existing_cas(_created_cas(the_plan), state.places(evidence), inventory,
                                new_cas)
            runner = prepare(the_plan, desired, inventory, keystore(), now,
                             allow_mass_revocation=allow_mass_revocation, ca_lock=state.ca_lock,
                             elsewhere=others)
        except REFUSALS as exc:
            actor = audit_events.commit_actor(root, commit, str(signer) if signer else None)
            trail.record([Event("apply.started", "success", str(directory.resolve()), actor),
                          *audit_events.denials(the_plan, actor),
                          audit_events.refusal(str(directory.resolve()), str(exc), actor)], now)
            outcome.applied_nothing = True
            if not isinstance(exc, InvalidDeclaration):
                outcome.refusal = str(exc)
            sync_public(inventory, state.public_dir, epoch(now))
            write("invalid" if isinstance(exc, InvalidDeclaration) else "refused")
            raise
        actor = audit_events.commit_actor(root, commit, str(signer) if signer else None)
        trail.record([Event("apply.started", "success", str(directory.resolve()), actor),
                      Event("keystore.unlocked", "success", state.keys.describe(""), actor),
                      *audit_events.denials(the_plan, actor)], now)
        finished = Event("apply.finished", "failure", str(directory.resolve()), actor)
        try:
            result = execute(runner, the_plan, progress)
            finished = Event("apply.finished", "success", str(directory.resolve()), actor,
                             {"done": dict(result.done)})
        except (ApplyRefused, KeyStoreError, PKIError) as exc:
            outcome.refusal = str(exc)
            finished = Event("apply.finished", "failure", str(directory.resolve()), actor,
                             {"reason": str(exc)})
            write("failed", applied=True)
            raise
        finally:
            sync_public(inventory, state.public_dir, epoch(now))
            trail.record(itertools.chain(  # a million events are appended as they come
                audit_events.executed(the_plan, inventory, epoch(now), actor), [finished]), now)
        done = ", ".join(f"{k} {v}" for k, v in sorted(result.done.items())) or "no changes"
        status_commit = write(done, dict(result.done), applied=True)
    return ApplyReport(the_plan, result, status_commit)


def cluster_ready(cluster: StateDir, names: Collection[str]) -> bool:
    """Whether the cluster scope has an active certificate for each of the cluster-wide CAs."""
    if not cluster.exists():
        return False
    with cluster.reader() as inventory:
        return all(inventory.active_ca(name) is not None for name in names)


def mirror_cluster_cas(state: StateDir, names: Collection[str]) -> None:
    """Copy the certificates of the cluster-wide CAs `names` (give their parents too) from the
    namespace's cluster scope into its inventory, where its fleets issue under them."""
    if state.cluster is None or not state.cluster.exists():
        return
    with state.cluster.reader() as cluster:
        records = [record for name in sorted(names) for record in cluster.ca_generations(name)]
    with state.inventory() as inventory:
        inventory.mirror_cas(records)


def namespace_databases(database_url: str) -> list[str]:
    """The URLs of the namespaces' inventories in a PostgreSQL database (not the cluster
    scope's)."""
    return [in_schema(database_url, schema) for schema in namespace_schemas(database_url)
            if schema != CLUSTER_SCHEMA]


def only_fleets(the_plan: Plan, desired: Desired, fleets: frozenset[str]) -> Plan:
    """The plan's work on CAs and on `fleets` (all of it without `fleets`); an undeclared
    fleet is refused."""
    if not fleets:
        return the_plan
    unknown = sorted(fleets - set(desired.fleets))
    if unknown:
        raise ApplyRefused(f"--fleet {', '.join(unknown)}: no such DeviceFleet is declared; "
                           "nothing applied")
    return replace(
        the_plan,
        actions=tuple(a for a in the_plan.actions
                      if a.kind != "DeviceFleet" or a.name in fleets),
        completed_fleets={k: v for k, v in the_plan.completed_fleets.items() if k in fleets},
        mass_revocations=tuple(m for m in the_plan.mass_revocations if m.fleet in fleets))


def verify_release(artifact: Path | None, manifest: Path, signature: Path, trust: Path,
                   crls: Sequence[Path], fleet: str | None, now: datetime) -> Verified:
    """`fleetpki verify`: read the files, then every check of controller.signing.verify;
    VerifyError with the reason when one fails (unreadable files: VerifyError too)."""
    try:
        anchors = load_certificates_pem(trust.read_bytes())
        revocation_lists = [crl for path in crls for crl in _crls(path.read_bytes())]
        digest = None
        if artifact is not None:
            with artifact.open("rb") as handle:
                digest = (hashlib.file_digest(handle, "sha256").hexdigest(),
                          artifact.stat().st_size)
        manifest_data = manifest.read_bytes()
        signature_data = signature.read_bytes()
    except OSError as exc:
        raise VerifyError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (ValueError, PKIError) as exc:
        raise VerifyError(f"cannot read the trust anchors or CRLs: {exc}") from None
    return verify_signed_release(manifest_data, signature_data, anchors, now, artifact=digest,
                                 crls=revocation_lists, fleet=fleet)


def _crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM file (several may be concatenated), or one DER CRL."""
    if b"-----BEGIN X509 CRL-----" not in data:
        return [x509.load_der_x509_crl(data)]
    blocks = data.split(b"-----END X509 CRL-----")
    return [x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n")
            for block in blocks if b"-----BEGIN X509 CRL-----" in block]


REPORT_STEPS = BUILD_STEPS + 2  # `report` adds its policy and writing steps


def report(directory: Path, state: StateDir, out: Path, now: datetime,
           policies: PolicySource = DEFAULT_SOURCE, status_branch: str = STATUS_BRANCH,
           step: Callable[[str], None] = lambda what: None) -> list[Path]:
    """`fleetpki report`: the compliance report of DIR and its state, written under `out`;
    `step(what)` is called before each of REPORT_STEPS steps."""
    step("policies")
    problems, findings = validate(directory, now, policies)
    with state.reader() as inventory:
        linted = [f.to_json() for f in lint(inventory, epoch(now)).sorted()]
        content = build_report(inventory, state.path, directory, now,
                               [f.as_dict() for f in findings], status_branch, step,
                               lint=linted, problems=[p.as_dict() for p in problems])
    step("writing")
    return write_report(content, out, f"fleetpki compliance report: {directory.resolve().name}")


@dataclass(frozen=True)
class DeviceTLS:
    """One device's active certificate with its server-generated key, as PEM (the data of its
    `kubernetes.io/tls` Secret when its fleet has `tlsSecrets`)."""

    device: str
    serial: str  # hex, as in the inventory
    pem: DevicePEM


def active_serials(state: StateDir, fleet: str) -> dict[str, str]:
    """Device id -> serial of its active certificate (empty before the first apply)."""
    if not state.exists():
        return {}
    with state.reader() as inventory:
        return {device: row[0] for device, row in inventory.active_devices(fleet).items()}


def device_tls_bundles(state: StateDir, fleet: str,
                       devices: Iterable[str] | None = None) -> Iterator[DeviceTLS]:
    """The PEMs of the fleet's active device certificates (of `devices` only, when given), in
    device order; devices without an active certificate or without a key held here are left
    out. The keystore is unlocked only when a key is read."""
    if not state.exists():
        return
    keystore = functools.cache(state.keystore)
    with state.reader() as inventory:
        wanted = inventory.active_devices(fleet) if devices is None else devices
        for device in sorted(wanted):
            record = inventory.active_device(fleet, device)
            if record is None or record.key_blob is None:
                continue
            yield DeviceTLS(device, record.serial, device_pem(inventory, keystore, record))


def migrate_inventory(state: StateDir) -> list[tuple[str, int, int]]:
    """Create or upgrade the schema of the state directory's inventory, or of its database and
    of every Kubernetes namespace's inventory in it; (which, version before, after) each."""
    if state.database_url is None:
        state.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return [("Inventory", *migrate(state.inventory_location))]
    url = state.database_url
    return [("Inventory", *migrate(url)),
            *((f"Namespace inventory {schema}:", *migrate(in_schema(url, schema)))
              for schema in namespace_schemas(url))]


def copy_inventory(source: Path, target_url: str) -> dict[str, int]:
    """Copy the SQLite inventory `source` (a file, or a state directory holding one) into
    the empty PostgreSQL database `target_url` (its schema made first), verified row for row;
    rows copied per table."""
    if not is_url(target_url):
        raise InventoryError(f"--to must be a postgresql:// URL, not {redact(target_url)!r}")
    path = source / "inventory.db" if source.is_dir() else source
    migrate(target_url)
    with Inventory(path, read_only=True) as reader, Inventory(target_url) as writer:
        return copy(reader, writer)
