"""`ansible-playbook --check` on the converged host must report 0 changed.

Molecule's idempotence step proves a second real run changes nothing; this
proves check mode agrees: every task predicts its change correctly and none
fails for want of a side effect that check mode skips. Shared by every
scenario (verifier.additional_files_or_dirs).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from playbook import run_playbook  # noqa: E402


@pytest.mark.skipif("MOLECULE_INVENTORY_FILE" not in os.environ, reason="runs under molecule verify")
def test_check_mode_reports_nothing_to_change():
    rc, out, recap = run_playbook("--check")
    assert rc == 0 and recap, out[-6000:]
    for line in recap:
        assert " changed=0 " in line and " failed=0 " in line, out[-6000:]
