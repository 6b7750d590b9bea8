"""The pytest plugin: pairings, spec markers, peers, evidence and reports.

Theory of operation (thin, in the order pytest meets it):

1. Options, each with an ini twin: which targets/initiators make the pairings,
   CHAP credentials for a third-party target, whether data may be lost, where the
   report goes, and which suites (stable test-ID prefixes) run.
2. ``pytest_configure``: the run's state (``IscsiRun``) goes under a ``StashKey``;
   nothing heavy happens unless a conformance test is collected or peers were
   named. On pytest-xdist the controller starts the peers once and hands their
   endpoints to the workers (``pytest_configure_node``); workers never start targets.
3. ``pytest_generate_tests``: a test marked by ``@spec`` is parametrised over the
   pairings its ``pairing`` kind asks for; capabilities, profiles, dataloss and known
   deviations (manifests) turn into skips and strict xfails at collection.
4. Fixtures: ``target``, ``initiator``, ``evidence``, ``pairing``.
5. Reports: every result carries its spec data in ``user_properties`` (so it survives
   xdist); the controller builds the results document and writes JSON, HTML and JUnit
   at the end. allure labels and attachments are added when allure is active.
6. Grades (``grading.py``): a failed test is graded by the level of the requirement
   it broke (the violation's, else the catalog's, else the test's strongest
   reference). A MUST broken fails; a SHOULD broken becomes a *non-strict* result and
   an informational check an *informational* one: both are reported as passed to
   pytest (so the exit status, JUnit and xdist see no failure) with their own
   category in the terminal and their own outcome in the results, unless
   ``--iscsi-strict`` makes a SHOULD a failure. A target that died, and an error that
   is no peer's doing (our bug), always fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from iscsi_conformance import grading
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.harness.runner import run_test_function
from iscsi_conformance.plugin.spec import (
    ConformanceViolation,
    PeerDied,
    SpecInfo,
    SpecRef,
    info_of,
    require,
    spec,
    violation,
)

if TYPE_CHECKING:
    from iscsi_conformance.harness.peerpool import PeerPool

__all__ = ["ConformanceViolation", "SpecRef", "failure_grade", "require", "spec", "violation"]

# Every StashKey of the plugin, defined before any hook or fixture uses it.
#: The run's state, on ``config.stash``.
RUN_KEY = pytest.StashKey["IscsiRun"]()
#: The test's ``Evidence`` (PDU traces, notes), on ``item.stash``; dropped at teardown.
EVIDENCE_KEY = pytest.StashKey[Any]()
#: The known deviation that made a test an expected failure, on ``item.stash``.
_DEVIATION_KEY = pytest.StashKey[str]()
#: Whether that deviation is intermittent (a crash seen in some runs), on ``item.stash``.
_INTERMITTENT_KEY = pytest.StashKey[bool]()
#: The results document built at the end of the run, on ``config.stash``.
RESULTS_KEY = pytest.StashKey[Any]()
#: Results of the cases of a peer's own suite run by one test, on ``item.stash``.
SUBRESULTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
PROPERTY = "iscsi"
#: The report attribute naming a graded result that pytest sees as passed.
STATUS_ATTR = "iscsi_status"


# --------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iscsi", "iSCSI conformance")

    def add(
        opt: str,
        ini: str,
        help: str,
        *,
        action: str = "store",
        ini_type: str | None = None,
        **kw: Any,
    ) -> None:
        group.addoption(opt, action=action, dest=ini, help=f"{help} (ini: {ini})", **kw)
        parser.addini(ini, help=help, type=ini_type)  # type: ignore[arg-type]

    add(
        "--iscsi-target",
        "iscsi_targets",
        "target to test: a peer name (reference, tgt, lio) or iscsi://host[:port]/iqn/lun; repeatable",
        action="append",
        ini_type="linelist",
    )
    add(
        "--iscsi-initiator",
        "iscsi_initiators",
        "initiator to test: reference, libiscsi, open-iscsi; repeatable",
        action="append",
        ini_type="linelist",
    )
    add(
        "--iscsi-chap",
        "iscsi_chap",
        "USER%SECRET: CHAP credentials the initiator uses with a third-party target",
        metavar="USER%SECRET",
    )
    add(
        "--iscsi-mutual-chap",
        "iscsi_mutual_chap",
        "USER%SECRET: the target's credentials for mutual CHAP",
        metavar="USER%SECRET",
    )
    add(
        "--iscsi-allow-dataloss",
        "iscsi_allow_dataloss",
        "allow tests that write to a third-party target's LUN (only the LUN given)",
        action="store_true",
        ini_type="bool",
    )
    add(
        "--iscsi-report",
        "iscsi_report",
        "directory for results.json, report.html and junit.xml",
        metavar="DIR",
    )
    add(
        "--iscsi-suite",
        "iscsi_suites",
        "run only tests whose stable ID starts with this prefix; repeatable",
        action="append",
        ini_type="linelist",
    )
    add(
        "--iscsi-no-initiator-column",
        "iscsi_no_initiator_column",
        "do not run the initiator column (each initiator against the reference target as "
        "instrument); a sharded run gives that column to one shard only",
        action="store_true",
        ini_type="bool",
    )
    add(
        "--iscsi-no-target-column",
        "iscsi_no_target_column",
        "do not run the target column (the reference initiator as instrument against each "
        "target); a run sharded by initiator gives that column to one shard only",
        action="store_true",
        ini_type="bool",
    )
    add(
        "--iscsi-skip-pairing",
        "iscsi_skip_pairings",
        "INITIATOR@TARGET: leave this pairing out (e.g. reference@reference in a matrix "
        "whose reference x reference cell comes from the embedded run); repeatable",
        action="append",
        ini_type="linelist",
    )
    add(
        "--iscsi-strict",
        "iscsi_strict",
        "strict verdicts: a SHOULD broken is a failure, not a non-strict result "
        "(informational results never fail)",
        action="store_true",
        ini_type="bool",
    )
    add(
        "--iscsi-peer-mode",
        "iscsi_peer_mode",
        "how peers run: auto, native, container, microvm",
        metavar="MODE",
    )


def _opt(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name, default=None)
    if value in (None, [], False):
        try:
            value = config.getini(name)
        except ValueError:
            value = None
    return value


# --------------------------------------------------------------------------- run state


@dataclasses.dataclass
class IscsiRun:
    config: pytest.Config
    targets: list[str]
    initiators: list[str]
    allow_dataloss: bool
    report_dir: Path | None
    suites: list[str]
    mode: str
    chap: Any = None
    mutual_chap: Any = None
    initiator_column: bool = True
    target_column: bool = True
    strict: bool = False  # --iscsi-strict: a SHOULD broken fails
    pool: PeerPool | None = None
    pool_error: BaseException | None = None
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    started: float = 0.0

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def get_pool(self) -> PeerPool:
        """The peers, started on first use (or attached from the xdist controller)."""
        if self.pool_error is not None:
            raise self.pool_error
        if self.pool is None:
            from iscsi_conformance.harness.peerpool import PeerPool

            try:
                if self.is_worker and "iscsi_peers" in self.config.workerinput:  # type: ignore[attr-defined]
                    self.pool = PeerPool.attach(
                        self.config.workerinput["iscsi_peers"], mode=self.mode
                    )  # type: ignore[attr-defined]
                else:
                    pool = PeerPool.from_options(
                        self.targets,
                        self.initiators,
                        chap=self.chap,
                        mutual_chap=self.mutual_chap,
                        mode=self.mode,
                        instrument=self.initiator_column,
                    )
                    self.pool = pool
                    pool.start()
            except Exception as exc:
                self.pool_error = exc
                # A peer that cannot start is the run's failure, not each test's: stop
                # at once with one clear message (naming the peer, with its log tail).
                pytest.exit(
                    f"iscsi-conformance: the run's peers could not start: {exc}", returncode=3
                )
        return self.pool


def _credentials(text: str | None, what: str) -> Any:
    if not text:
        return None
    from iscsi_conformance.errors import ConfigError
    from iscsi_conformance.peers.base import ChapAccount

    if "%" not in text:
        raise ConfigError(f"{what} must be USER%SECRET", field=what)
    user, secret = text.split("%", 1)
    return ChapAccount(user, secret)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "iscsi(info): conformance test metadata (set by iscsi_conformance.plugin.spec.spec)",
    )
    report = _opt(config, "iscsi_report")
    run = IscsiRun(
        config=config,
        targets=list(_opt(config, "iscsi_targets") or []),
        initiators=list(_opt(config, "iscsi_initiators") or []),
        allow_dataloss=bool(_opt(config, "iscsi_allow_dataloss")),
        report_dir=Path(report) if report else None,
        suites=list(_opt(config, "iscsi_suites") or []),
        mode=str(_opt(config, "iscsi_peer_mode") or "auto"),
        chap=_credentials(_opt(config, "iscsi_chap"), "--iscsi-chap"),
        mutual_chap=_credentials(_opt(config, "iscsi_mutual_chap"), "--iscsi-mutual-chap"),
        initiator_column=not bool(_opt(config, "iscsi_no_initiator_column")),
        target_column=not bool(_opt(config, "iscsi_no_target_column")),
        strict=bool(_opt(config, "iscsi_strict")),
    )
    import time

    run.started = time.time()
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(_ResultCollector(run), "iscsi-results")
    if config.pluginmanager.hasplugin("xdist") and not run.is_worker:
        config.pluginmanager.register(_XdistController(run), "iscsi-xdist-controller")


class _XdistController:
    """Registered only where xdist is active: start peers once, share their endpoints."""

    def __init__(self, run: IscsiRun) -> None:
        self.run = run

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if not (self.run.targets or self.run.initiators or self.run.report_dir):
            return  # workers start their own embedded reference peers lazily
        pool = self.run.get_pool()
        node.workerinput["iscsi_peers"] = pool.export()


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    if run.pool is not None and run.pool.started:
        run.pool.stop()


# --------------------------------------------------------------------------- collection


@dataclasses.dataclass(frozen=True)
class Pairing:
    initiator: str
    target: str

    @property
    def id(self) -> str:
        from iscsi_conformance.report.model import pairing_id

        return pairing_id(self.initiator, _public_name(self.target))

    def __str__(self) -> str:
        return f"{self.initiator}@{_public_name(self.target)}"


def _public_name(name: str) -> str:
    """A target name fit for reports: a URL loses its user and secret."""
    if name.startswith("iscsi://") and "@" in name:
        scheme, rest = name.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return name


def _pairings(run: IscsiRun, info: SpecInfo) -> list[Pairing]:
    targets = run.targets or ["reference"]
    initiators = run.initiators or ["reference"]
    if info.pairing == "target":
        return [Pairing("reference", t) for t in targets]
    if info.pairing == "initiator":
        return [Pairing(i, "reference") for i in initiators]
    return [Pairing(i, t) for i in initiators for t in targets]


def _effective_targets(run: IscsiRun) -> list[str]:
    targets = list(run.targets or ["reference"])
    if (
        run.initiator_column
        and any(i != "reference" for i in run.initiators)
        and "reference" not in targets
    ):
        targets.append("reference")
    return targets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("iscsi")
    if marker is None:
        return
    info: SpecInfo = marker.args[0]
    run: IscsiRun = metafunc.config.stash[RUN_KEY]
    pairings = _pairings(run, info)
    metafunc.parametrize("pairing", pairings, ids=[str(p) for p in pairings], scope="function")


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    run: IscsiRun = config.stash[RUN_KEY]
    if run.suites:
        keep, drop = [], []
        for item in items:
            info = info_of(item)
            if info is None or any(info.test_id.startswith(p) for p in run.suites):
                keep.append(item)
            else:
                drop.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    # tests whose instrument is not in the run (e.g. initiator tests while certifying a
    # third-party target) are deselected, not skipped: they say nothing of this run
    targets = set(_effective_targets(run))
    skipped = set(_opt(config, "iscsi_skip_pairings") or [])
    outside = [
        item
        for item in items
        if (info := info_of(item)) is not None
        and hasattr(item, "callspec")
        and item.callspec.params.get("pairing") is not None
        and (
            item.callspec.params["pairing"].target not in targets
            or (info.pairing == "target" and not run.target_column)
            or str(item.callspec.params["pairing"]) in skipped
        )
    ]
    if outside:
        config.hook.pytest_deselected(items=outside)
        items[:] = [i for i in items if i not in outside]
    for item in items:
        info = info_of(item)
        if info is None:
            continue
        pairing = item.callspec.params.get("pairing") if hasattr(item, "callspec") else None
        if pairing is not None and pairing.initiator != "reference":
            # one worker per non-reference initiator: its VM/container is started once
            item.add_marker(pytest.mark.xdist_group(pairing.initiator))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Any:
    from iscsi_conformance.plugin.under_test import Evidence

    ev = Evidence()
    request.node.stash[EVIDENCE_KEY] = ev
    return ev


def _skip_or_xfail(
    request: pytest.FixtureRequest, pool: PeerPool, info: SpecInfo, pairing: Pairing
) -> None:
    """Capabilities, profiles, dataloss and deviations, decided per pairing."""
    from iscsi_conformance.harness.profiles import capability_satisfied
    from iscsi_conformance.plugin.deviations import deviation_for, matching_deviation

    tentry = pool.targets.get(pairing.target)
    ientry = pool.initiators.get(pairing.initiator)
    for need in info.needs:
        side, _, cap = need.rpartition(":")
        entries = {
            "target": [tentry],
            "initiator": [ientry],
            "": [tentry if info.pairing != "initiator" else ientry],
        }[side]
        for entry in entries:
            if entry is not None and not capability_satisfied(entry.manifest, cap):
                pytest.skip(f"{entry.name} does not declare capability {cap!r} (manifest)")
    for entry in (tentry, ientry):
        if entry is None:
            continue
        version = str(entry.description.get("version", ""))
        dev = deviation_for(entry.manifest, info.test_id, version)
        found = matching_deviation(entry.manifest, info.test_id, version)
        if found is not None and found.get("effect") == "skip":
            pytest.skip(f"known deviation of {entry.name} (not run): {dev}")
        if dev is not None:
            # strict: a fixed peer turns the deviation into a failure (update the
            # manifest); an intermittent one (a crash seen in some runs) may pass
            intermittent = found is not None and found.get("effect") == "intermittent"
            request.node.add_marker(
                pytest.mark.xfail(
                    reason=f"known deviation of {entry.name}"
                    f"{' (intermittent)' if intermittent else ''}: {dev}",
                    strict=not intermittent,
                )
            )
            request.node.stash[_DEVIATION_KEY] = dev
            request.node.stash[_INTERMITTENT_KEY] = intermittent


@pytest.fixture
def _iscsi_pool(request: pytest.FixtureRequest, pairing: Pairing) -> PeerPool:
    run: IscsiRun = request.config.stash[RUN_KEY]
    pool = run.get_pool()
    info = info_of(request.node)
    if info is not None:
        _skip_or_xfail(request, pool, info, pairing)
    return pool


@pytest.fixture
def target(
    request: pytest.FixtureRequest, pairing: Pairing, _iscsi_pool: PeerPool, evidence: Any
) -> Any:
    """The target under test (the pairing's target), or the reference target as instrument."""
    from iscsi_conformance.plugin.under_test import TargetUnderTest

    run: IscsiRun = request.config.stash[RUN_KEY]
    entry = _iscsi_pool.targets.get(pairing.target)
    if entry is None:
        pytest.skip(f"target {pairing.target!r} is not part of this run")
    if entry.died is not None:  # seen dead by this xdist worker, which cannot restart it
        pytest.fail(f"target {_public_name(pairing.target)} died earlier in this run: {entry.died}")
    info = info_of(request.node)
    tut = TargetUnderTest(
        entry, _iscsi_pool.credentials, evidence, allow_dataloss=run.allow_dataloss
    )
    if info is not None and info.dataloss:
        tut.require_dataloss()
    return tut


@pytest.fixture
def initiator(
    request: pytest.FixtureRequest, pairing: Pairing, _iscsi_pool: PeerPool, evidence: Any
) -> Any:
    """The initiator under test (the pairing's initiator)."""
    from iscsi_conformance.plugin.under_test import InitiatorUnderTest

    entry = _iscsi_pool.initiators.get(pairing.initiator)
    if entry is None:
        pytest.skip(f"initiator {pairing.initiator!r} is not part of this run")
    entry.ensure_started()  # an xdist worker starts its initiators on first use
    return InitiatorUnderTest(entry, evidence)


# --------------------------------------------------------------------------- running


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a conformance test (``harness.runner``: ``async def`` ones on a fresh event
    loop, bounded in time), then ask whether its target survived it.

    A third-party target that died during the test (tgtd segfaulting on a stray PDU,
    a kernel panic taking the LIO VM down) fails that test, whatever the test itself
    concluded, with the exit status and the peer's log tail; the target is restarted
    and configured again so the rest of the run still measures it. A deviation that
    names the test keeps it an expected failure.
    """
    info = info_of(pyfuncitem)
    if info is None:
        return None
    argnames = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in argnames}
    from iscsi_conformance.harness import probe  # not at import: the plugin loads light

    error: Exception | None = None
    probe.forget_reads()
    try:
        run_test_function(pyfuncitem.obj, kwargs)
    except Exception as exc:  # re-raised below unless the target died
        error = exc
    died = _target_died(pyfuncitem)
    if died is None and _lost_the_target(error, probe.last_read()) and _watched(pyfuncitem):
        # A target that crashed on the test's last PDU may take a moment to be seen
        # dead (a container's exit, a VM's console); without this grace the crash
        # would fail the next test instead of the one that caused it.
        deadline = time.monotonic() + DEATH_GRACE
        while died is None and time.monotonic() < deadline:
            time.sleep(0.25)
            died = _target_died(pyfuncitem)
        if died is None:  # still running: does it answer a login at all?
            died = _target_died(pyfuncitem, lost=True)
    if died is not None:
        requirement = info.requirements[0] if info.requirements else info.test_id
        raise PeerDied(died, requirement=requirement) from error
    if error is not None:
        raise error
    return True


#: How long a test that lost its target's answer waits to see whether the target died.
DEATH_GRACE = 3.0
#: The ends of a test's last read (``probe.Outcome`` values) that may mean its target
#: died on what it was sent.
_LOST = ("closed", "silent")


def _lost_the_target(error: BaseException | None, last_read: Any) -> bool:
    """Whether a failed test lost its target, so that a crash is worth waiting for: the
    failure is (or was raised while handling) a time-out or a dropped connection, or it
    is a verdict given after the test's last read met a closed connection or silence
    (``probe.last_read``; never the words of the failure message)."""
    if error is None:
        return False
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, TimeoutError | ConnectionError | EOFError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return isinstance(error, AssertionError) and getattr(last_read, "value", None) in _LOST


def _watched(item: pytest.Item) -> bool:
    """Whether this process can see the item's target die: a third-party target it
    runs (or, in an xdist worker, one whose health handle it holds). The reference
    target is ours and never crashes; an external one cannot be watched."""
    run: IscsiRun = item.config.stash[RUN_KEY]
    pairing = item.callspec.params.get("pairing") if hasattr(item, "callspec") else None
    if pairing is None or run.pool is None or pairing.target == "reference":
        return False
    entry = run.pool.targets.get(pairing.target)
    return (
        entry is not None
        and not entry.external
        and (entry.driver is not None or bool(entry.health))
    )


def _target_died(item: pytest.Item, *, lost: bool = False) -> str | None:
    """What happened to the item's target if it died during the test (and was
    restarted); None while it serves or when this process does not own it. ``lost``:
    the test lost the target's answer, so a running target must also answer a login
    (a hung one is restarted as a dead one is)."""
    run: IscsiRun = item.config.stash[RUN_KEY]
    pairing = item.callspec.params.get("pairing") if hasattr(item, "callspec") else None
    if pairing is None or run.pool is None:
        return None
    why = run.pool.check_target(pairing.target, lost=lost)
    if why is None:
        return None
    return f"target {_public_name(pairing.target)} died during this test: {why}"


#: What a peer can cause: a broken rule, no answer in time, a dropped connection, a PDU
#: that breaks the format. Any other exception (a TypeError, a HarnessError) is our bug
#: or the run's, and is never graded down.
_PEER_CAUSED = (AssertionError, TimeoutError, ConnectionError, EOFError, ProtocolError)


#: The requirement a violation names when the test's own setup failed (a login with a
#: valid profile refused, a precondition the peer did not give): no verdict on the rule
#: the test checks, so it is graded ``must`` whatever that rule's level.
HARNESS = "harness"


def failure_grade(info: SpecInfo, exc: BaseException | None) -> grading.Grade:
    """The grade of a failed test: the level of the requirement its violation names
    (the violation's own, else the catalog's), else the test's strongest reference. A
    dead target, an error no peer caused, and a failed setup (``harness``) are ``must``."""
    if isinstance(exc, PeerDied) or not isinstance(exc, _PEER_CAUSED):
        return grading.MUST
    if isinstance(exc, ConformanceViolation) and exc.requirement == HARNESS:
        return grading.MUST  # the test could not run: never hidden behind its own level
    if isinstance(exc, ConformanceViolation):
        from iscsi_conformance.plugin.catalog import level_of

        level = exc.level or (level_of(exc.requirement) if exc.requirement else None)
        if level:
            return grading.grade_of(level)
    elif isinstance(exc, ProtocolError) and exc.level:
        return grading.grade_of(exc.level)
    return info.grade


def _grade(item: pytest.Item, info: SpecInfo, call: Any, report: Any) -> str:
    """Grade a failed call (see the module docstring, 6) and, when it is not a failure,
    report it to pytest as passed with its status. Returns the result's grade.

    A known deviation stays an expected failure, except an intermittent one (a crash
    seen in some runs) when this failure is no crash: the test's own finding is then
    graded like any other (a SHOULD broken is non-strict, not the deviation)."""
    if report.when != "call" or call.excinfo is None:
        return info.grade
    expected = hasattr(report, "wasxfail")
    if expected:
        if not (report.skipped and item.stash.get(_INTERMITTENT_KEY, False)):
            return info.grade
    elif not report.failed or _DEVIATION_KEY in item.stash:
        return info.grade
    run: IscsiRun = item.config.stash[RUN_KEY]
    grade = failure_grade(info, call.excinfo.value)
    status = grading.failed_outcome(grade, strict=run.strict)
    if expected:
        if status == grading.FAILED:  # a crash or a MUST: what the deviation records
            return grade
        del report.wasxfail
    if status != grading.FAILED:
        report.outcome = "passed"  # the exit status, JUnit and xdist see no failure
        setattr(report, STATUS_ATTR, status)
        item.user_properties.append(("iscsi_status", status))  # pytest's own JUnit
    item.user_properties.append(("iscsi_grade", grade))
    return grade


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outermost: sees xfail already decided
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    info = info_of(item)
    if info is None:
        return
    if report.when == "teardown":
        # the report has what it needs; PDU traces (whole data segments) of every
        # test kept to the end of a run cost gigabytes on a long matrix
        if EVIDENCE_KEY in item.stash:
            del item.stash[EVIDENCE_KEY]
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        grade = _grade(item, info, call, report)
        pairing = item.callspec.params.get("pairing") if hasattr(item, "callspec") else None
        ev = item.stash.get(EVIDENCE_KEY, None)
        data = {
            "id": info.test_id + _case_suffix(item, pairing),
            "pairing": pairing.id if pairing else "",
            "initiator": pairing.initiator if pairing else "",
            "target": _public_name(pairing.target) if pairing else "",
            "spec": [r.as_dict() for r in info.refs],
            "requirements": list(info.requirements),
            "grade": grade,
            "summary": info.summary,
            "deviation": None
            if getattr(report, STATUS_ATTR, None)
            else item.stash.get(_DEVIATION_KEY, None),
            "pdus": _pdu_events(ev) if ev is not None else [],
            "notes": list(ev.notes) if ev is not None else [],
            "extra": dict(ev.extra) if ev is not None else {},
            "secrets": sorted(ev.secrets) if ev is not None else [],
        }
        report.user_properties.append((PROPERTY, data))
        if report.when == "call":
            # cases of a peer's own suite run by this test (plugin/own_suite.py), each
            # its own result with its own ID and outcome, in this test's pairing
            for case in item.stash.get(SUBRESULTS_KEY, []):
                report.user_properties.append((PROPERTY, {**data, **case}))
        _allure(item, info, data, ev)


def _case_suffix(item: pytest.Item, pairing: Any) -> str:
    """``[case]`` for a test parametrised beyond its pairing, so every case keeps its own
    result (a report key is test ID x pairing); empty otherwise."""
    name = getattr(item, "name", "")
    if "[" not in name:
        return ""
    params = name[name.index("[") + 1 : -1]
    if pairing is not None:
        params = params.replace(str(pairing), "", 1)
    params = params.strip("-").replace("--", "-")
    return f"[{params}]" if params else ""


def _pdu_events(ev: Any) -> list[dict[str, Any]]:
    out = []
    for rec in ev.records():
        direction = rec.get("direction", "")
        if direction in ("send", "recv"):
            direction = "i->t" if direction == "send" else "t->i"
        out.append(
            {
                "direction": direction,
                "opcode": str(rec.get("opcode") or rec.get("name") or "?"),
                "summary": str(rec.get("summary", "")),
                "hex": str(rec.get("hex", "")),
                "time": rec.get("time"),
                "note": str(rec.get("note", "")),
            }
        )
    return out


def _allure(item: pytest.Item, info: SpecInfo, data: dict[str, Any], ev: Any) -> None:
    if not item.config.pluginmanager.hasplugin("allure_pytest"):
        return
    if not item.config.getoption("allure_report_dir", default=None):
        return
    import allure

    try:
        allure.dynamic.label("area", info.area)
        allure.dynamic.label("pairing", data["pairing"])
        allure.dynamic.label("test_id", info.test_id)
        allure.dynamic.feature(info.area)
        allure.dynamic.story(info.test_id)
        allure.dynamic.parent_suite(data["pairing"])
        for ref in info.refs:
            allure.dynamic.label("spec", f"{ref.document} {ref.section} {ref.level}")
        if data["pdus"]:
            from iscsi_conformance.report.redact import redact_text

            text = json.dumps(data["pdus"], indent=1)
            allure.attach(
                redact_text(text, set(data["secrets"])),
                name="PDU trace",
                attachment_type=allure.attachment_type.JSON,
            )
        for cap in getattr(ev, "captures", []) or []:
            if os.path.exists(cap):
                allure.attach.file(cap, name=os.path.basename(cap), extension="pcapng")
    except Exception:  # allure must never break a run
        pass


class _ResultCollector:
    """Registered per run in ``pytest_configure``: gathers every result of the run.

    ``pytest_runtest_logreport`` receives only the report (on the xdist controller,
    one that a worker sent), not the config; a plugin object that holds the run
    carries it there instead of a module global.
    """

    def __init__(self, run: IscsiRun) -> None:
        self.run = run

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.run.results.append(_result_from(report, value))


def _result_from(report: pytest.TestReport, data: dict[str, Any]) -> dict[str, Any]:
    if "outcome" in data:  # a sub-result (own-suite case) carries its own verdict
        return {"nodeid": report.nodeid, "skip_reason": None, "worker": None, **data}
    status = getattr(report, STATUS_ATTR, None)
    if hasattr(report, "wasxfail"):
        outcome = "xpassed" if report.passed else "xfailed"
    elif status:
        outcome = status  # non-strict / informational: graded down from a failure
    elif report.when == "setup" and report.failed:
        outcome = "error"
    else:
        outcome = report.outcome  # passed / failed / skipped
    message = ""
    details = ""
    skip_reason = None
    if report.skipped and isinstance(report.longrepr, tuple):
        skip_reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed or status:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = (
            _crash_message(crash.message)
            if crash is not None
            else str(report.longrepr).splitlines()[-1:][0]
            if report.longrepr
            else ""
        )
        details = str(report.longrepr)
    return {
        **data,
        "outcome": outcome,
        "nodeid": report.nodeid,
        "duration": report.duration,
        "message": message,
        "details": details,
        "skip_reason": skip_reason,
        "worker": getattr(report, "node", None)
        and getattr(report.node, "gateway", None)
        and report.node.gateway.id,
    }


def _crash_message(text: str) -> str:
    """A violation's message without pytest's ``module.ConformanceViolation: `` prefix:
    the message already names the requirement it broke."""
    for cls in (ConformanceViolation, PeerDied):
        text = text.removeprefix(f"{cls.__module__}.{cls.__qualname__}: ")
    return text


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """Graded results have their own category: ``3 non-strict, 1 informational`` in the
    summary line, ``n`` / ``i`` in the progress, NON-STRICT / INFORMATIONAL with -v."""
    status = getattr(report, STATUS_ATTR, None)
    if status and report.when == "call":
        letter = "n" if status == grading.NON_STRICT else "i"
        return status, letter, (status.upper(), {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Each graded result, with the requirement it broke, after pytest's own summary."""
    titles = {
        grading.NON_STRICT: "non-strict results: a SHOULD broken (a failure with --iscsi-strict)",
        grading.INFORMATIONAL: "informational results: behaviour the RFC leaves open, as observed",
    }
    for status, title in titles.items():
        reports = terminalreporter.stats.get(status, [])
        if not reports:
            continue
        terminalreporter.section(title, sep="-", yellow=True)
        for rep in reports:
            crash = getattr(rep.longrepr, "reprcrash", None)
            text = (
                _crash_message(crash.message).strip().splitlines()[0] if crash is not None else ""
            )
            terminalreporter.write_line(f"{status.upper()} {rep.nodeid} - {text}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run: IscsiRun | None = session.config.stash.get(RUN_KEY, None)
    if run is None or run.is_worker or not run.results:
        return
    from iscsi_conformance.plugin.results import build_results, write_reports

    results = build_results(run)
    run.config.stash[RESULTS_KEY] = results
    if run.report_dir is not None:
        paths = write_reports(results, run.report_dir)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("")
            for kind, path in paths.items():
                tr.write_line(f"iscsi-conformance {kind}: {path}")


from iscsi_conformance.plugin.observed import observed  # noqa: E402, F401
