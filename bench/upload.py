"""Upload one large file to a real sshd on 127.0.0.1 with farmhand's sftp:// uploader and with OpenSSH's `sftp -b`.

Not a test: it prints figures (median, min, max over N interleaved runs, MB/s
and the throughput ratio to `sftp -b`), measured in the same run, on the same
file, to the same server. Each run includes connecting and authenticating,
for both; farmhand's also includes what makes its upload trustworthy (sha256
of the bytes sent, remote size check, sidecar, rename). The `sftp -b -c
aes128-gcm` row uses the cipher farmhand picks, for comparison. farmhand writes
the file over `sftp.channels` extra SFTP sessions: `ssh` processes when
OpenSSH's client is installed (the usual case, and the first row), else
channels of a paramiko connection (the "paramiko only" row). Usage:
    .venv/bin/python bench/upload.py [--size-mib 1024] [--runs 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_arg, emit, row, timed, use_test_helpers  # noqa: E402

use_test_helpers()  # the test suite's sshd launcher and helpers

from farmhand import keys  # noqa: E402
from farmhand.config import load_config  # noqa: E402
from farmhand.uploaders import UploadItem  # noqa: E402
from farmhand.uploaders import sftp as sftp_module  # noqa: E402
from farmhand.uploaders.sftp import SftpUploader  # noqa: E402
from sshd import Sshd  # noqa: E402
from support import random_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--channels", type=int, help="sftp.channels (default: farmhand's default)")
    add_json_arg(parser)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="farmhand-bench-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        server = Sshd(tmp / "sshd")
        key = tmp / "id_ed25519"
        keys.generate(key, "ed25519")
        server.authorize(key.with_name(key.name + ".pub").read_text())
        known = tmp / "known_hosts"
        known.write_text(server.known_hosts_line())
        dest = tmp / "warehouse"
        dest.mkdir()
        src = tmp / "payload.bin"
        print(f"writing a {args.size_mib} MiB random file...", file=sys.stderr)
        sha = random_file(src, size)
        (tmp / "config.yml").write_text(
            f"working_dir: {tmp}/work\nsftp:\n  private_key: {key}\n  known_hosts: {known}\n"
            + (f"  channels: {args.channels}\n" if args.channels else "")
        )
        config = load_config(tmp / "config.yml", environ={})
        uploader = SftpUploader(f"sftp://root@127.0.0.1:{server.port}{dest}/", config)
        item = UploadItem(src, src.name, size, sha)
        ssh_opts = ["-i", str(key), "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-P", str(server.port)]

        def openssh(cipher: list[str]) -> Callable[[], None]:
            def run() -> None:
                batch = tmp / "batch"
                batch.write_text(f"put {src} {dest}/openssh.bin\n")
                subprocess.run(["sftp", "-q", "-b", str(batch), *cipher, *ssh_opts, "root@127.0.0.1"], check=True, capture_output=True)
                (dest / "openssh.bin").unlink()

            return run

        counter = iter(range(1_000_000))

        def farmhand(openssh_client: bool = True) -> Callable[[], None]:
            def run() -> None:
                task = f"run-{next(counter)}"
                found = sftp_module.ssh_binary
                if not openssh_client:
                    sftp_module.ssh_binary = lambda: None  # type: ignore[assignment]
                try:
                    uploader.upload(task, [item], lambda m, **f: None)
                finally:
                    sftp_module.ssh_binary = found  # type: ignore[assignment]
                landed = dest / task / src.name
                assert landed.stat().st_size == size
                shutil.rmtree(dest / task)

            return run

        rows: dict[str, Callable[[], None]] = {
            "sftp -b": openssh([]),
            "sftp -b -c aes128-gcm": openssh(["-c", "aes128-gcm@openssh.com"]),
            "farmhand sftp://": farmhand(),
            "farmhand sftp://, paramiko only": farmhand(openssh_client=False),
        }
        server.start()
        try:
            for fn in rows.values():  # warm both paths (page cache, sshd)
                fn()
            samples: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):  # interleaved, so drift hits all alike
                for name, fn in rows.items():
                    samples[name].append(timed(fn))
            # One more farmhand upload, kept and checked byte for byte on the server side.
            uploader.upload("check", [item], lambda m, **f: None)
            with open(dest / "check" / src.name, "rb") as fh:
                assert hashlib.file_digest(fh, "sha256").hexdigest() == sha, "the uploaded copy differs"
        finally:
            server.stop()
    mb = args.size_mib * (1 << 20) / 1e6
    rates = {name: [mb / t for t in times] for name, times in samples.items()}
    # "In every run": each run's farmhand rate against the sftp -b run beside it (interleaved), not medians.
    per_run = [f / b for f, b in zip(rates["farmhand sftp://"], rates["sftp -b"])]
    per_run_gcm = [f / b for f, b in zip(rates["farmhand sftp://"], rates["sftp -b -c aes128-gcm"])]
    rows = [
        row(f"upload {args.size_mib} MiB over SFTP", rates["farmhand sftp://"], unit="MB/s", higher_is_better=True,
            baseline="sftp -b", baseline_samples=rates["sftp -b"], target=">= 1.2",
            note=f"each run connects and authenticates; farmhand's also hashes, checks the remote size, writes a sidecar, renames; "
                 f"{config.sftp.channels} channels ({'ssh processes' if sftp_module.ssh_binary() else 'paramiko: no ssh client here'}); "
                 f"per run {' '.join(f'{r:.2f}x' for r in per_run)} (lowest {min(per_run):.2f}x)"),
        row(f"upload {args.size_mib} MiB over SFTP (same cipher)", rates["farmhand sftp://"], unit="MB/s", higher_is_better=True,
            baseline="sftp -b -c aes128-gcm", baseline_samples=rates["sftp -b -c aes128-gcm"],
            note=f"per run {' '.join(f'{r:.2f}x' for r in per_run_gcm)}"),
        row(f"upload {args.size_mib} MiB over SFTP, paramiko only", rates["farmhand sftp://, paramiko only"], unit="MB/s", higher_is_better=True,
            baseline="sftp -b", baseline_samples=rates["sftp -b"],
            note="as without OpenSSH's client installed: the extra channels on a paramiko connection"),
    ]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
