"""Every command in README.md parses with the script's own CLI, and CI runs the README's test command."""
import importlib
import os
import re
import shlex

import pytest
import tyro

from conftest import ROOT

README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
COMMANDS = [line.split("#")[0].strip() for block in BLOCKS for line in block.splitlines()
            if line.strip().startswith("python ") and ".py" in line.split("#")[0]]


def test_readme_has_commands_for_every_script():
    scripts = {shlex.split(c)[1] for c in COMMANDS}
    on_disk = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    assert {"fql.py", "collect.py"} <= scripts and scripts <= on_disk


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    argv = shlex.split(command)
    module = importlib.import_module(argv[1][:-3])
    args = tyro.cli(module.Args, args=argv[2:])
    assert isinstance(args, module.Args)


def test_ci_runs_the_readme_test_command():
    test_cmd = re.search(r"^(python -m pytest[^\n#]*?)\s*#", README, re.M).group(1).strip()
    assert test_cmd in open(os.path.join(ROOT, ".ci", "run")).read()
