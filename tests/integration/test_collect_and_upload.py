"""Collect and upload: artifacts cannot reach host files, missing ones fail the task, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from support import BUSYBOX, busybox_task, read_decompressed, read_log

HOST_SHADOW = Path("/etc/shadow")


def _all_bytes_under(root: Path) -> list[bytes]:
    return [read_decompressed(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _host_only_shadow_lines(client) -> list[bytes]:
    """Lines of the host's /etc/shadow that the image's own /etc/shadow does not have."""
    image_lines = set(client.containers.run(BUSYBOX, ["cat", "/etc/shadow"], remove=True).splitlines())
    lines = [line for line in HOST_SHADOW.read_bytes().splitlines() if line.strip() and line not in image_lines]
    assert lines, "the host's /etc/shadow must differ from the image's for this test to mean anything"
    return lines


def test_symlink_artifact_to_etc_shadow_yields_no_host_data(run_task, workdir, client):
    marker_lines = _host_only_shadow_lines(client)
    result = run_task(
        busybox_task(
            "mkdir -p /out/dir; ln -s /etc/shadow /out/shadow; ln -s /etc/shadow /out/dir/shadow-link;"
            "ln -s ../../../../../../etc/shadow /out/dir/climb; echo fine > /out/dir/ok.txt",
            task_id="symlink-1",
            artifacts=[
                {"path": "/out/shadow", "name": "shadow"},
                {"path": "/out/dir", "name": "dir", "type": "directory"},
            ],
        )
    )
    assert (result.state, result.reason) == ("failed", "artifact-invalid")
    assert "symbolic link" in result.message
    shadow, directory = result.artifacts
    assert shadow.present is False and shadow.location is None
    assert [f.path for f in directory.files] == ["ok.txt"]
    assert any("shadow-link" in s for s in directory.skipped) and any("climb" in s for s in directory.skipped)
    everything = _all_bytes_under(workdir)
    assert everything, "the workspace and warehouse hold the task's files"
    for blob in everything:
        for line in marker_lines:
            assert line not in blob
    for path in workdir.rglob("*"):
        assert not path.is_symlink(), f"a link was recreated on the host: {path}"


def test_missing_required_artifact_fails_optional_does_not(run_task):
    result = run_task(
        busybox_task(
            "echo hi > /tmp/present",
            artifacts=[
                {"path": "/tmp/present", "name": "present"},
                {"path": "/tmp/nope-optional", "name": "opt", "optional": True},
                {"path": "/tmp/nope-required", "name": "req"},
            ],
        )
    )
    assert (result.state, result.reason) == ("failed", "artifact-missing")
    assert "/tmp/nope-required" in result.message and "nope-optional" not in result.message
    present = result.artifacts[0]
    assert present.present and present.location and Path(urlsplit(present.location).path).read_text() == "hi\n"


def test_artifact_of_the_wrong_type_is_invalid(run_task):
    result = run_task(busybox_task("mkdir -p /out/d", artifacts=[{"path": "/out/d", "name": "d", "type": "file"}]))
    assert (result.state, result.reason) == ("failed", "artifact-invalid")


def test_failed_upload_keeps_every_file(run_task, make_config, tmp_path, workdir):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the warehouse should be")
    cfg = make_config(upload={"default": blocker.as_uri() + "/warehouse/"})
    result = run_task(
        busybox_task("echo precious-log; echo precious-data > /tmp/data.txt", task_id="upfail-1", artifacts=[{"path": "/tmp/data.txt", "name": "data.txt"}]),
        cfg,
    )
    assert (result.state, result.reason) == ("exception", "upload-failed")
    ws = workdir / "tasks" / "upfail-1"
    assert str(ws) in result.message
    assert "precious-log" in (ws / "task.log").read_text()
    assert (ws / "artifacts" / "data.txt").read_text() == "precious-data\n"
    stored = json.loads((ws / "result.json").read_text())
    assert stored["reason"] == "upload-failed" and stored["artifacts"][0]["location"] is None


def test_task_upload_target_allowed_by_policy(run_task, make_config, tmp_path):
    shared = tmp_path / "shared-warehouse"
    cfg = make_config(upload={"allowed_targets": [shared.as_uri() + "/"]})
    result = run_task(busybox_task("echo to-shared", task_id="shared-1", upload=shared.as_uri() + "/zim/"), cfg)
    assert result.state == "succeeded", result.message
    assert read_log((shared / "zim" / "shared-1" / "task.log.zst").as_uri()).decode().endswith("to-shared\n")


def test_same_task_id_twice_is_refused(run_task, workdir):
    first = run_task(busybox_task("echo once", task_id="twice-1"))
    assert first.state == "succeeded"
    second = run_task(busybox_task("echo again", task_id="twice-1"))
    assert (second.state, second.reason) == ("exception", "duplicate-task-id")
    stored = json.loads((workdir / "tasks" / "twice-1" / "result.json").read_text())
    assert stored["state"] == "succeeded", "the first task's result is not overwritten"


def test_artifacts_over_the_workers_disk_budget_fail_without_filling_the_disk(run_task, make_config, workdir):
    cfg = make_config(limits={"artifacts_max_bytes": "1m", "kill_grace": 1, "max_run_time": 3600})
    result = run_task(
        busybox_task(
            "mkdir -p /out/big; head -c 700000 /dev/zero > /out/small.bin; head -c 600000 /dev/zero > /out/big/a.bin",
            task_id="budget-1",
            artifacts=[{"path": "/out/small.bin", "name": "small.bin"}, {"path": "/out/big", "name": "big", "type": "directory"}],
        ),
        cfg,
    )
    assert (result.state, result.reason) == ("failed", "artifact-too-large")
    assert "limits.artifacts_max_bytes" in result.message
    small, big = result.artifacts
    assert small.present and small.size == 700000
    assert big.present is False and big.location is None
    warehouse = workdir / "warehouse" / "budget-1"
    assert (warehouse / "small.bin").stat().st_size == 700000
    assert not (warehouse / "big").exists()


def test_a_link_anywhere_on_an_artifact_path_is_refused_never_followed(run_task, workdir):
    """A trailing slash makes Docker resolve a link before archiving; an inner link is resolved too."""
    result = run_task(
        busybox_task(
            "mkdir -p /out/real; echo inside > /out/real/f.txt; ln -s / /out/link_root; ln -s /out/real /out/inner",
            task_id="links-1",
            artifacts=[
                {"path": "/out/link_root/", "name": "root", "type": "directory", "optional": True},
                {"path": "/out/link_root/etc/passwd", "name": "passwd", "optional": True},
                {"path": "/out/inner/f.txt", "name": "via-inner", "optional": True},
                {"path": "/out/real/", "name": "real", "type": "directory"},
            ],
        )
    )
    assert (result.state, result.reason) == ("succeeded", None), result.message
    root, passwd, inner, real = result.artifacts
    for refused in (root, passwd, inner):
        assert refused.present is False and "symbolic link" in refused.problem, refused
    assert [f.path for f in real.files] == ["f.txt"]
    warehouse = workdir / "warehouse" / "links-1"
    assert sorted(p.name for p in warehouse.iterdir()) == ["real", "task.log.zst"], "nothing of the container's root came out"


def test_a_file_name_the_warehouse_refuses_fails_at_collection_and_waits_nowhere(run_task, workdir):
    result = run_task(
        busybox_task(
            "mkdir -p /out/d; echo ok > /out/d/fine.txt; echo bad > \"/out/d/$(printf 'bad\\001name')\"",
            task_id="ctrl-1",
            artifacts=[{"path": "/out/d", "name": "d", "type": "directory"}],
        )
    )
    assert (result.state, result.reason) == ("failed", "artifact-invalid")
    assert "bad\\x01name" in result.message and "control characters" in result.message
    assert not (workdir / "pending").exists() or list((workdir / "pending").iterdir()) == [], "nothing is parked to be retried forever"
    assert (workdir / "warehouse" / "ctrl-1" / "task.log.zst").is_file(), "the log still travels"


def test_hard_linked_files_in_a_directory_artifact_are_collected(run_task, workdir):
    result = run_task(
        busybox_task(
            "mkdir -p /out/d/sub; echo same-bytes > /out/d/a.txt; ln /out/d/a.txt /out/d/sub/b.txt",
            task_id="hardlink-1",
            artifacts=[{"path": "/out/d", "name": "d", "type": "directory"}],
        )
    )
    assert (result.state, result.reason) == ("succeeded", None), result.message
    (d,) = result.artifacts
    assert sorted(f.path for f in d.files) == ["a.txt", "sub/b.txt"] and not d.skipped
    warehouse = workdir / "warehouse" / "hardlink-1" / "d"
    assert (warehouse / "a.txt").read_text() == (warehouse / "sub" / "b.txt").read_text() == "same-bytes\n"
    assert not result.warnings
