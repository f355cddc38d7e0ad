"""`ansible-playbook --check` on the converged host must report 0 changed.

Idempotence (molecule's own step) proves a second real run changes nothing;
this proves check mode agrees, i.e. every task predicts its change correctly
and nothing fails for lack of a side effect in check mode.
"""

import os
import re
import subprocess
import sys

import pytest

SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))


@pytest.mark.skipif("MOLECULE_INVENTORY_FILE" not in os.environ, reason="runs under molecule verify")
def test_check_mode_reports_nothing_to_change():
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg")
    env["ANSIBLE_ROLES_PATH"] = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "ansible", "roles")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    playbook = os.path.join(SCENARIO, "converge.yml")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
         "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--check", playbook],
        env=env, capture_output=True, text=True, timeout=900,
    )
    recap = [line for line in proc.stdout.splitlines() if re.search(r"\bok=\d+ .*changed=\d+", line)]
    assert proc.returncode == 0 and recap, proc.stdout[-4000:] + proc.stderr[-2000:]
    for line in recap:
        assert " changed=0 " in line and " failed=0 " in line, proc.stdout[-6000:]
