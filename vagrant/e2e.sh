#!/usr/bin/env bash
# Vagrant provisioner (last, as root): run a task end to end on this VM.
# Builds the local busybox image (no registry), submits examples/hello.yml
# through the local RabbitMQ to the farmhand service, waits for its result and
# lists what reached the SFTP warehouse. Rerun: vagrant provision --provision-with e2e
set -euo pipefail
cd /vagrant
BUSYBOX_TAG=farmhand-test/busybox:latest bash scripts/build-test-images.sh
farmhand=/opt/farmhand/venv/bin/farmhand
out=$("$farmhand" --config /etc/farmhand/config.yml submit --wait --timeout 300 --json examples/hello.yml)
echo "$out"
state=$(python3 -c 'import json,sys; print((json.loads(sys.argv[1]).get("result") or {}).get("state"))' "$out")
task_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["task_id"])' "$out")
echo "warehouse: $(ls -R "/srv/warehouse/upload/$task_id" 2>/dev/null | tr '\n' ' ')"
[ "$state" = succeeded ] || { echo "e2e: task $task_id ended $state" >&2; exit 1; }
echo "e2e: task $task_id succeeded; artifacts in /srv/warehouse/upload/$task_id/"
