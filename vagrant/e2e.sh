#!/usr/bin/env bash
# Vagrant provisioner (last, as root): run a task end to end on this VM.
# Builds the local busybox image (no registry), submits examples/hello.yml
# through the local RabbitMQ to the farmhand service, waits for its result and
# lists what reached the SFTP warehouse. Rerun: vagrant provision --provision-with e2e
set -euo pipefail
cd /vagrant
BUSYBOX_TAG=farmhand-test/busybox:latest bash scripts/build-test-images.sh
farmhand=/opt/farmhand/venv/bin/farmhand
# stdout: the result document (--json); exit code: 0 succeeded, 1 failed, 3 exception.
rc=0
out=$("$farmhand" --config /etc/farmhand/config.yml submit --wait --timeout 300 --json examples/hello.yml) || rc=$?
echo "$out"
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2]))' "$out" "$1"; }
task_id=$(field task_id)
state=$(field state)
echo "warehouse: $(ls -R "/srv/warehouse/upload/$task_id" 2>/dev/null | tr '\n' ' ')"
if [ "$rc" != 0 ] || [ "$state" != succeeded ]; then
  echo "e2e: task $task_id ended $state (exit $rc)" >&2
  exit 1
fi
test -s "/srv/warehouse/upload/$task_id/answer.txt"
echo "e2e: task $task_id succeeded; artifacts in /srv/warehouse/upload/$task_id/"
