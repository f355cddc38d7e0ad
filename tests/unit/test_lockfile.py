"""worker/requirements.lock covers pyproject.toml's dependencies, pinned with hashes.

The lock is what `make`, the farmhand role's wheelhouse and so the Packer app
image install; a dependency added to pyproject.toml without `make lock` would
be missing from every deploy (the wheelhouse build refuses it), so it is
caught here first. The test tools' lock must agree with the worker's.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "worker/requirements.lock"
TEST_LOCK = REPO / "worker/requirements-test.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The hosts the lock serves: Debian 12's Python (and newer 3.11s), on Linux.
HOST_ENVS = [
    dict(default_environment(), python_version="3.11", python_full_version=v, sys_platform="linux",
         platform_system="Linux", os_name="posix", implementation_name="cpython",
         platform_python_implementation="CPython", platform_machine=m, extra="")
    for v in ("3.11.2", "3.11.9") for m in ("x86_64", "aarch64")
]


def read_lock(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    entries = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        req = Requirement(" ".join(w for w in words if not w.startswith("--hash=")))
        entries[canonicalize_name(req.name)] = (req, [w for w in words if w.startswith("--hash=")])
    return entries


def pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req.name} is not pinned: {req}"
    return spec.version


@pytest.mark.parametrize("path", [LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_every_entry_is_pinned_with_sha256_hashes(path: Path) -> None:
    entries = read_lock(path)
    assert len(entries) > 10
    for name, (req, hashes) in entries.items():
        pinned(req)
        assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), name


def covers(lock: dict[str, tuple[Requirement, list[str]]], deps: list[str]) -> list[str]:
    """The dependencies (with their extras' dependencies) the lock does not satisfy on a host."""
    problems = []
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        if name not in lock:
            problems.append(f"{dep.name}: not in the lock")
            continue
        version = pinned(lock[name][0])
        if not dep.specifier.contains(version, prereleases=True):
            problems.append(f"{dep.name}: the lock pins {version}, pyproject asks {dep.specifier}")
    return problems


def test_the_lock_covers_pyprojects_dependencies() -> None:
    assert covers(read_lock(LOCK), PYPROJECT["project"]["dependencies"]) == []


def test_the_test_lock_covers_the_test_extra_and_agrees_with_the_lock() -> None:
    test_lock = read_lock(TEST_LOCK)
    assert covers(test_lock, PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]) == []
    lock = read_lock(LOCK)
    assert {n: pinned(r) for n, (r, _) in lock.items()} == {n: pinned(r) for n, (r, _) in test_lock.items() if n in lock}


def test_the_coverage_check_sees_a_missing_or_outdated_pin() -> None:
    lock = read_lock(LOCK)
    assert covers(lock, ["not-a-locked-package>=1"]) == ["not-a-locked-package: not in the lock"]
    version = pinned(lock["docker"][0])
    assert covers(lock, [f"docker>{version}"]) == [f"docker: the lock pins {version}, pyproject asks >{version}"]


def test_extras_are_locked_too() -> None:
    # celery[redis] pulls redis in: the extra's own dependencies must be pinned.
    lock = read_lock(LOCK)
    for dep in map(Requirement, PYPROJECT["project"]["dependencies"]):
        for extra in dep.extras:
            for sub in metadata.requires(dep.name) or []:
                sub_req = Requirement(sub)
                if sub_req.marker and sub_req.marker.evaluate({**HOST_ENVS[0], "extra": extra}) \
                        and not sub_req.marker.evaluate(HOST_ENVS[0]):
                    assert canonicalize_name(sub_req.name) in lock, f"{dep.name}[{extra}] needs {sub_req.name}"


@pytest.mark.parametrize("env", HOST_ENVS, ids=lambda e: f"{e['python_full_version']}-{e['platform_machine']}")
def test_the_lock_is_closed_for_the_hosts(env: dict[str, str]) -> None:
    # Every locked package's own dependencies (as installed from the lock in
    # this venv) are locked too, for each host Python: nothing is left to resolve.
    lock = read_lock(LOCK)
    wanted = {n for n, (r, _) in lock.items() if not r.marker or r.marker.evaluate(env)}
    missing = set()
    for name in wanted:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not for this interpreter (e.g. async-timeout on 3.11.7)
        for sub in map(Requirement, requires):
            if (not sub.marker or sub.marker.evaluate(env)) and canonicalize_name(sub.name) not in wanted:
                missing.add(f"{name} -> {sub.name}")
    assert not missing, f"dependencies the lock leaves out: {sorted(missing)}"
