"""The layout the scripts promise their readers: one interface, shared blocks that are the same text in every
script, main's plumbing the same in all five, shared files that say what they hold, and no citation of a file our
users do not have."""
import ast
import glob
import inspect
import os
import re

import pytest

from conftest import ROOT

SCRIPTS = ("fql", "driftql", "dfp", "qam", "deflow")
SHARED_FILES = ("common.py", "loaders.py", "plumbing.py", "runfiles.py", "shards.py", "visual.py")
PIXELS = ("fql", "driftql", "deflow")  # the scripts whose official code has the visual hooks (visual.py)
# blocks that more than one script defines and that must stay the same text, so that `diff fql.py driftql.py` shows
# only the method
SAME_TEXT = ("mlp", "Critic", "VectorField", "OneStepActor", "Generator", "euler_integrate", "aggregate_q",
             "td_target", "soft_update_", "frozen", "act_bc_flow")


def source(name):
    return open(os.path.join(ROOT, f"{name}.py")).read()


def top_level(name):
    """{function or class name: its source} of a script."""
    text = source(name)
    return {n.name: ast.get_source_segment(text, n) for n in ast.parse(text).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("block", SAME_TEXT)
def test_shared_blocks_are_the_same_text_in_every_script_that_has_them(block):
    texts = {name: top_level(name)[block] for name in SCRIPTS if block in top_level(name)}
    assert len(texts) >= 2, f"{block} is no longer shared: take it off SAME_TEXT"
    first = next(iter(texts.values()))
    assert [name for name, text in texts.items() if text != first] == []


def plumbing_lines(name):
    """main's lines in its `# TRY NOT TO MODIFY` blocks (a block runs to the next `# ALGO LOGIC` or `# TRY NOT TO
    MODIFY` comment line)."""
    lines, keep = [], False
    for line in top_level(name)["main"].splitlines()[1:]:
        marker = line.strip()
        if marker.startswith(("# TRY NOT TO MODIFY", "# ALGO LOGIC")):
            keep = marker.startswith("# TRY NOT TO MODIFY")
        elif keep:
            lines.append(line)
    return lines


def test_main_is_the_same_text_in_every_script_outside_its_algorithm_blocks():
    want = plumbing_lines("fql")
    assert len(want) >= 12 and any("plumbing.Run(" in line for line in want)
    for name in SCRIPTS[1:]:
        assert plumbing_lines(name) == want, name


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_the_one_interface(name):
    mod = __import__(name)
    params = lambda fn: list(inspect.signature(fn).parameters)  # noqa: E731
    assert params(mod.make_nets) == ["args", "obs_dim", "action_dim"]
    assert params(mod.losses)[:3] == ["nets", "batch", "args"]
    assert all(p.kind == p.KEYWORD_ONLY for p in list(inspect.signature(mod.losses).parameters.values())[3:])
    assert params(mod.update) == ["nets", "opt", "batch", "args", "loss_fn", "phase"]
    assert params(mod.act) == ["nets", "obs", "args"] and params(mod.make_policy) == ["nets", "args"]
    assert inspect.signature(mod.act).parameters["args"].default is inspect.Parameter.empty  # no silent Args()
    # a script reads two shared modules: the protocol and the run machinery (and visual.py where it takes pixels)
    imported = {n.names[0].name for n in ast.parse(source(name)).body if isinstance(n, ast.Import)}
    assert imported & {path[:-3] for path in SHARED_FILES} == {"common", "plumbing"} | ({"visual"} if name in PIXELS
                                                                                         else set())


@pytest.mark.parametrize("path", SHARED_FILES)
def test_shared_files_stay_small_and_open_with_what_they_hold(path):
    text = open(os.path.join(ROOT, path)).read()
    assert len(text.splitlines()) <= 460
    doc = ast.get_docstring(ast.parse(text))
    assert doc and len(doc.splitlines()) >= 3 and "reader" in doc  # what it holds and what a method reader needs


def test_nothing_cites_files_our_users_do_not_have():
    files = [p for pattern in ("*.py", "*.md", "docs/*.md", "tests/*.py", "benchmarks/*.py", ".ci/*")
             for p in glob.glob(os.path.join(ROOT, pattern))]
    hits = [f"{os.path.relpath(p, ROOT)}: {m.group(0)}" for p in files if not p.endswith("test_layout.py")
            for m in re.finditer(r"specs/\w+|spec A\d+|specs?\.md", open(p).read())]
    assert hits == []
