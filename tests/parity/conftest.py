"""Parity suite (tests/parity): prints the per-check lines collected by harness.Report and PASS/FAIL per script;
with PARITY_REPORT=<file> also writes them there (results/parity/report.txt is made this way, docs/parity.md)."""
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
    table = ["worst relative error per configuration (all checks, all steps):"]
    for (script, config, dtype), err in sorted(Report.worst.items(), key=lambda kv: list(scripts).index(kv[0][0])):
        table.append(f"  {script:8s} {config:30s} {dtype:8s} {err:9.2e}")
    verdicts = table + [f"{s}: {'PASS' if all(o for t, _, o in Report.lines if t == s) else 'FAIL'}"
                        for s in scripts]
    for v in verdicts:
        tr.write_line(v)
    if os.environ.get("PARITY_REPORT"):
        with open(os.environ["PARITY_REPORT"], "w") as f:
            f.write("\n".join([text for _, text, _ in Report.lines] + verdicts) + "\n")
