"""Bad input stops the play before anything changes, with a clear message."""

from __future__ import annotations

import pytest
from kit_testlib import Case, Verdict, assert_refused_and_unchanged, assert_verdict, run_preflight_cases

from conftest import CONFIG, DB, HOST, converge, lab, sha256


def _case(name: str, variables: dict, refused: str | None) -> Case:
    return Case(name, "aide", HOST, variables, refused)


# All cases run the role's argument spec and preflight only, in one
# ansible-playbook run (facts: the minimal subset the OS check reads); the
# good cases show the probe sees acceptance.
CASES = [
    _case("good-defaults", {}, None),
    _case("good-extra-path", {"aide_extra_paths": ["/etc/celery-kit-extra"]}, None),
    _case("relative-path", {"aide_extra_paths": ["etc/relative"]}, "is not a usable path"),
    _case("dotdot-path", {"aide_extra_paths": ["/etc/../root"]}, "is not a usable path"),
    _case("glob-exclusion", {"aide_extra_excluded_paths": ["/var/log/*"]}, "is not a usable path"),
    _case("database-inside-protected-path", {"aide_database_dir": "/etc/celery-kit/db"},
          "neither below nor above the protected path"),
    _case("bad-calendar", {"aide_check_on_calendar": "every tuesday-ish"},
          "not a valid systemd OnCalendar expression"),
    _case("changed-flag-not-boolean", {"celery_kit_protected_files_changed": "yes"}, "must be true or false"),
    _case("kernel-facility", {"aide_syslog_facility": "kern"}, "aide_syslog_facility"),
    _case("zero-report-files", {"aide_report_max_files": 0}, "aide_report_max_files must be at least 1"),
]


@pytest.fixture(scope="module")
def verdicts() -> dict[str, Verdict]:
    return run_preflight_cases(CASES, gather={HOST: "!all"})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_preflight_refuses_bad_input_and_accepts_good(case, verdicts):
    assert_verdict(case, verdicts[case.name])


def test_bad_input_stops_the_real_play_before_any_change():
    """The role's entry point runs those checks first: the config and the database stay as they were."""
    assert_refused_and_unchanged(
        lambda: converge("-e", '{"aide_report_max_files": 0}'),
        "aide_report_max_files must be at least 1",
        HOST,
        lambda: (sha256(CONFIG), sha256(DB), lab().file(CONFIG).exists),
    )
