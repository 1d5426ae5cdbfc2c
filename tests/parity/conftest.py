"""Parity suite (tests/parity): prints the per-check lines collected by harness.Report and PASS/FAIL per script."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Report  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if not Report.lines:
        return
    tr = terminalreporter
    tr.section("parity against the official code")
    for _, text, _ in Report.lines:
        tr.write_line(text)
    scripts = dict.fromkeys(s for s, _, _ in Report.lines)
    for s in scripts:
        ok = all(o for t, _, o in Report.lines if t == s)
        tr.write_line(f"{s}: {'PASS' if ok else 'FAIL'}")
