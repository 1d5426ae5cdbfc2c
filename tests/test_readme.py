"""Every command in README.md and docs/*.md parses with the script's own CLI, and CI runs the README's test command."""
import dataclasses
import glob
import importlib
import os
import re
import shlex

import pytest
import tyro

import plumbing
from conftest import ROOT

METHODS = ["fql", "driftql", "dfp", "qam", "deflow"]


def commands(text):
    """The `python <script>.py ...` lines of the markdown's bash blocks, without their trailing comments."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("python ") and ".py" in line.split("#")[0]]


README = open(os.path.join(ROOT, "README.md")).read()
COMMANDS = commands(README)
DOC_COMMANDS = {os.path.basename(p): commands(open(p).read())
                for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))}


def test_readme_has_commands_for_every_script():
    scripts = {shlex.split(c)[1] for c in COMMANDS}
    on_disk = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    assert {"fql.py", "collect.py"} <= scripts and scripts <= on_disk


@pytest.mark.parametrize("algo", METHODS)
def test_every_method_page_gives_its_commands(algo):
    scripts = {shlex.split(c)[1] for c in DOC_COMMANDS.get(f"{algo}.md", [])}
    assert scripts == {f"{algo}.py"}


@pytest.mark.parametrize("command", COMMANDS + [c for cs in DOC_COMMANDS.values() for c in cs])
def test_readme_command_parses(command):
    argv = shlex.split(command)
    module = importlib.import_module(argv[1][:-3])
    args = tyro.cli(module.Args, args=argv[2:])  # exits (SystemExit) on an unknown flag or a bad value
    if hasattr(args, "resume"):  # every value lies in its allowed range too (the checkpoint need not exist here)
        args = dataclasses.replace(args, resume=None)
    plumbing.check_args(args, getattr(module, "LIMITS", {}))


def test_ci_runs_the_readme_test_command():
    test_cmd = re.search(r"^(python -m pytest[^\n#]*?)\s*#", README, re.M).group(1).strip()
    assert test_cmd in open(os.path.join(ROOT, ".ci", "run")).read()


def test_readme_tables_are_the_files_their_commands_write():
    """A table between `<!-- table: PATH -->` and `<!-- /table -->` is PATH as plot.py or benchmark.py wrote it."""
    blocks = re.findall(r"<!-- table: (\S+) -->\n(.*?)<!-- /table -->", README, re.S)
    assert blocks, "the README's result tables are generated files"
    for path, text in blocks:
        assert text.strip() == open(os.path.join(ROOT, path)).read().strip(), path
