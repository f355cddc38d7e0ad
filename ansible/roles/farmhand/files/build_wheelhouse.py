#!/usr/bin/env python3
"""Build the wheelhouse the farmhand role installs from (runs on the controller).

    build_wheelhouse.py OUT --source CHECKOUT | --wheel FILE [--lock requirements.lock]
                        [--python-version 3.11.2 --arch x86_64 | --no-deps]

Writes farmhand's wheel (built from a clean copy of the checkout, byte-
reproducible under SOURCE_DATE_EPOCH) and every dependency as a binary wheel
for the *host's* Python into OUT, then prints the wheel's file name and a
digest of the whole wheelhouse (the role reinstalls only when it changes).

Why not plain `pip download --python-version`: pip evaluates dependency
markers with the controller's interpreter except for python_version, so a
requirement such as `async-timeout; python_full_version < "3.11.3"` (redis)
is left out for a 3.11.7 controller and then missing on Debian's 3.11.2.
Each downloaded wheel's Requires-Dist is therefore evaluated against the
host's environment, and what is missing is fetched, until nothing is.

With --lock (the checkout's worker/requirements.lock, `make lock`), nothing is
resolved: the lock's markers are evaluated for the host the same way, the
pinned wheels are fetched with pip's hash checking, OUT/requirements.txt
keeps the pins and hashes for the host's own `pip install --require-hashes`,
and a dependency the lock lacks is an error rather than a fetch, so two
deploys of one checkout install the same files.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.parser import Parser

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

SOURCES = ("pyproject.toml", "README.md", "worker")


def build_wheel(source, out):
    with tempfile.TemporaryDirectory() as tmp:
        # A clean copy: setuptools' in-tree build/ would ship modules deleted since.
        with tempfile.TemporaryFile() as buf:
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for name in SOURCES:
                    tar.add(os.path.join(source, name), arcname=name,
                            filter=lambda t: None if "__pycache__" in t.name or t.name.endswith(".egg-info") else t)
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tar:
                tar.extractall(tmp, filter="data")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir", "-w", out, tmp],
                       check=True)


def pip_download(out, reqs, pyver, arch):
    abi = "cp" + "".join(pyver.split(".")[:2])
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", out,
           "--python-version", pyver, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for plat in ("manylinux2014", "manylinux_2_28", "manylinux_2_34"):
        cmd += ["--platform", f"{plat}_{arch}"]
    subprocess.run(cmd + list(reqs), check=True)


def read_lock(path):
    """The lock's entries as (Requirement, [--hash=...]) in file order (pip's requirements syntax)."""
    entries = []
    with open(path) as fh:
        logical = fh.read().replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        hashes = [w for w in words if w.startswith("--hash=")]
        spec = " ".join(w for w in words if not w.startswith("--hash="))
        req = Requirement(spec)
        if not hashes or [str(s.operator) for s in req.specifier] != ["=="]:
            sys.exit(f"build_wheelhouse: {path}: {req.name} is not pinned with hashes (make lock)")
        entries.append((req, hashes))
    return entries


def host_requirements(lock, env, dest):
    """Write the lock's entries that apply to the host, markers resolved, to DEST."""
    with open(dest, "w") as fh:
        fh.write("# The host's part of the lock (markers evaluated for its Python), for pip --require-hashes.\n")
        for req, hashes in read_lock(lock):
            if req.marker and not req.marker.evaluate(env):
                continue
            req.marker = None
            fh.write(" ".join([str(req), *hashes]) + "\n")


def wheels(out):
    return {canonicalize_name(parse_wheel_filename(f)[0]): f for f in os.listdir(out) if f.endswith(".whl")}


def missing_for_host(out, env):
    have = wheels(out)
    missing = set()
    for fname in have.values():
        with zipfile.ZipFile(os.path.join(out, fname)) as zf:
            meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = Parser().parsestr(zf.read(meta_name).decode())
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate(env):
                continue
            if canonicalize_name(req.name) not in have:
                req.marker = None
                missing.add(str(req))
    return sorted(missing)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--source")
    ap.add_argument("--wheel")
    ap.add_argument("--python-version", default="%d.%d.%d" % sys.version_info[:3])
    ap.add_argument("--arch", default=os.uname().machine)
    ap.add_argument("--no-deps", action="store_true")
    ap.add_argument("--lock", help="pinned, hashed requirements (pip syntax) to fetch instead of resolving")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    if args.wheel:
        shutil.copy(args.wheel, args.out)
    else:
        build_wheel(args.source, args.out)
    (wheel,) = [f for f in os.listdir(args.out) if re.match(r"farmhand-.*\.whl$", f)]
    env = default_environment()
    env.update(python_version=".".join(args.python_version.split(".")[:2]),
               python_full_version=args.python_version, platform_machine=args.arch, extra="",
               implementation_name="cpython", platform_python_implementation="CPython",
               sys_platform="linux", platform_system="Linux", os_name="posix")
    if args.lock:
        reqs = os.path.join(args.out, "requirements.txt")
        host_requirements(args.lock, env, reqs)
        if not args.no_deps:
            pip_download(args.out, ["--no-deps", "--require-hashes", "-r", reqs], args.python_version, args.arch)
            todo = missing_for_host(args.out, env)
            if todo:
                sys.exit(f"build_wheelhouse: {args.lock} does not cover {todo}: run `make lock`")
    elif not args.no_deps:
        pip_download(args.out, [os.path.join(args.out, wheel)], args.python_version, args.arch)
        for _ in range(10):
            todo = missing_for_host(args.out, env)
            if not todo:
                break
            pip_download(args.out, todo, args.python_version, args.arch)
        else:
            sys.exit(f"build_wheelhouse: still missing for the host: {todo}")
    digest = hashlib.sha256()
    for f in sorted(os.listdir(args.out)):
        with open(os.path.join(args.out, f), "rb") as fh:
            digest.update(f.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    print(wheel)
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
