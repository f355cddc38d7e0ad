"""Run the scenario's converge playbook again from a verify test.

Some promises are about what Ansible itself reports, not about the host:
check mode predicts no change on a converged host, a role says why it did
nothing. These tests rerun ansible-playbook with molecule's own inventory and
config and read the output.
"""

import os
import re
import subprocess
import sys


def run_playbook(*args, timeout=1800):
    """ansible-playbook ARGS SCENARIO/converge.yml -> (returncode, stdout, recap lines)."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg")
    env["ANSIBLE_ROLES_PATH"] = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "ansible", "roles")
    env["ANSIBLE_NOCOLOR"] = "1"
    env.pop("ANSIBLE_FORCE_COLOR", None)
    playbook = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
         "-i", os.environ["MOLECULE_INVENTORY_FILE"], *args, playbook],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    recap = [line for line in proc.stdout.splitlines() if re.search(r"\bok=\d+\s.*\bchanged=\d+", line)]
    return proc.returncode, proc.stdout + proc.stderr, recap
