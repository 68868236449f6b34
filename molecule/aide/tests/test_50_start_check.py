"""The start check of a kit run (playbooks/aide-precheck.yml): drift from
outside the kit stops the run before anything changes; an interrupted kit
run's changes are attributed to it at the next run; --check writes nothing."""

from __future__ import annotations

import json
import os

from conftest import (
    CONTROLLER_DIR,
    DB,
    HOST,
    MODULE,
    controller_record,
    converge,
    lab,
    playbook,
    run_scheduled_check,
    said,
    sha256,
)

MARKER = os.path.join(CONTROLLER_DIR, f"{HOST}.pending")


def content(text: str) -> str:
    return json.dumps({"kit_change_content": text})


def test_start_check_stops_the_run_on_drift_made_by_hand():
    assert run_scheduled_check().exit == 0, "the lab must be clean before this test"
    lab().check_output(f"echo '# changed by hand' >> {MODULE}")
    before = sha256(DB)
    proc = playbook("kit_run.yml", "-e", content("# a kit change\n"))
    assert proc.returncode != 0
    assert said(proc, "before this kit run changed anything")
    assert said(proc, MODULE)
    # Nothing ran after the start check, nothing was absorbed, no marker.
    assert "# changed by hand" in lab().file(MODULE).content_string
    assert sha256(DB) == before == controller_record()
    assert not os.path.exists(MARKER)


def test_start_check_positive_twin_clean_run_goes_on_and_clears_its_marker():
    # The operator investigated and accepts the hand change explicitly.
    assert converge("-e", "aide_update_baseline=true").returncode == 0
    before = sha256(DB)
    proc = playbook("kit_run.yml", "-e", content("# kit change 1\n"))
    assert proc.returncode == 0
    assert said(proc, "another kit role changed protected files")
    assert sha256(DB) != before
    assert not os.path.exists(MARKER), "the aide play must remove the run's marker"
    assert run_scheduled_check().exit == 0


def test_interrupted_kit_run_leaves_its_marker():
    before = sha256(DB)
    proc = playbook("interrupted_run.yml", "-e", content("# kit change 2\n"))
    assert proc.returncode != 0 and said(proc, "interrupted on purpose")
    assert os.path.exists(MARKER)
    assert sha256(DB) == before
    assert lab().file(MODULE).content_string == "# kit change 2\n"


def test_next_run_accepts_the_interrupted_runs_change_with_a_warning():
    before = sha256(DB)
    # Same content: this run's kit role changes nothing itself.
    proc = playbook("kit_run.yml", "-e", content("# kit change 2\n"))
    assert proc.returncode == 0
    assert said(proc, "did not reach its aide play")
    assert said(proc, "changes of an interrupted earlier kit run (start check): " + MODULE)
    assert sha256(DB) != before and sha256(DB) == controller_record()
    assert not os.path.exists(MARKER)
    assert run_scheduled_check().exit == 0


def test_check_mode_reads_only_and_writes_no_marker():
    before = sha256(DB)
    proc = playbook("kit_run.yml", "--check", "-e", content("# kit change 2\n"))
    assert proc.returncode == 0
    assert said(proc, "Check the protected files before any kit role runs")
    assert not os.path.exists(MARKER)
    assert sha256(DB) == before
