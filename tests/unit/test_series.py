"""The series itself: patches/, owned files and the prepared tree agree.

These are the rules that keep the branch rebase-friendly (docs/devel/
ferry-branch.rst): every patch is listed once and applies as a small hook
to base files; owned files are never patched; no base file is committed
whole; and the prepared tree differs from the base by exactly the series.
"""

import os
import re
import subprocess

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
SRC = os.path.join(os.environ.get('FERRY_BUILD_DIR', os.path.join(TOP, 'build')), 'src')
OWNED_DIRS = ('accel', 'softmmu', 'migration', 'hw', 'include', 'qapi',
              'tests', 'docs', 'linux-headers')
# Base files so central that replacing them whole would make every
# rebase a merge: they may only ever be patched.
NEVER_OWNED = ('softmmu/vl.c', 'softmmu/physmem.c', 'hw/ppc/spapr.c',
               'migration/ram.c', 'accel/kvm/kvm-all.c', 'migration/migration.c')


def git(*args, cwd=TOP):
    return subprocess.run(['git', *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def series():
    with open(os.path.join(TOP, 'patches', 'series')) as f:
        return [l.split('#')[0].strip() for l in f if l.split('#')[0].strip()]


def patched_files(name):
    with open(os.path.join(TOP, 'patches', name)) as f:
        return re.findall(r'^diff --git a/(\S+) b/', f.read(), re.M)


def owned_files():
    return git('ls-files', '--cached', '--others', '--exclude-standard', '--',
               *OWNED_DIRS).split()


def test_series_lists_every_patch_once():
    listed = series()
    assert len(listed) == len(set(listed))
    on_disk = sorted(f for f in os.listdir(os.path.join(TOP, 'patches'))
                     if f.endswith('.patch'))
    assert sorted(listed) == on_disk


def test_patches_have_qemu_style_subjects_and_bodies():
    for name in series():
        with open(os.path.join(TOP, 'patches', name)) as f:
            text = f.read()
        subject = re.search(r'^Subject: \[PATCH\] (.*)$', text, re.M)
        assert subject, name
        assert re.match(r'^[\w/.,-]+: \S', subject.group(1)), name
        body = text.split('\n\n', 1)[1].split('\n---\n', 1)[0]
        assert len(body.strip()) > 40, '%s: explain why in the body' % name


def test_patches_never_touch_owned_files():
    owned = set(owned_files())
    for name in series():
        assert not owned & set(patched_files(name)), name


def test_central_base_files_are_not_owned():
    assert not set(NEVER_OWNED) & set(owned_files())


@pytest.mark.skipif(not os.path.isdir(os.path.join(SRC, '.git')),
                    reason='no prepared tree (run make first)')
def test_prepared_tree_differs_from_base_by_exactly_the_series():
    changed = set(git('diff', '--name-only', 'ferry/base', cwd=SRC).split())
    changed |= set(git('ls-files', '--others', '--exclude-standard', cwd=SRC).split())
    expected = set()
    for name in series():
        expected |= set(patched_files(name))
    base_files = set(git('ls-tree', '-r', '--name-only', 'ferry/base', cwd=SRC).split())
    # An owned file identical to its base file would not show in the diff.
    expected |= {f for f in owned_files() if f not in base_files}
    assert expected - changed == set(), 'series parts missing from build/src'
    assert changed - expected - set(owned_files()) == set(), \
        'build/src changes base files outside the series'


def prepared_patch_commits():
    """The prepared tree's commit of each patch, in series order."""
    commits = git('rev-list', '--reverse', 'ferry/base..ferry/patched',
                  cwd=SRC).split()
    assert len(commits) == len(series()), 'build/src is not this series'
    return commits


def hunks(commit, path):
    """(old start, old count, added lines) of each hunk COMMIT makes
    to PATH."""
    out = []
    diff = git('diff', '-U0', '--no-color', commit + '^', commit, '--', path,
               cwd=SRC)
    for m in re.finditer(r'^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@.*\n'
                         r'((?:[-+ \\].*\n?)*)', diff, re.M):
        added = [l[1:] for l in m.group(3).splitlines() if l.startswith('+')]
        out.append((int(m.group(1)), int(m.group(2) or 1), added))
    return out


@pytest.mark.skipif(not os.path.isdir(os.path.join(SRC, '.git')),
                    reason='no prepared tree (run make first)')
def test_no_patch_rewrites_lines_an_earlier_patch_added():
    """A fix to a hook is an edit of that hook's patch: no patch removes
    or changes a line that an earlier patch added (git blame of every
    line a patch deletes must name the base)."""
    commits = prepared_patch_commits()
    patches = set(commits)
    found = []
    for name, commit in zip(series(), commits):
        for path in patched_files(name):
            for start, count, _ in hunks(commit, path):
                if not count:
                    continue
                blame = git('blame', '--porcelain', '-L',
                            '%d,+%d' % (start, count), commit + '^', '--',
                            path, cwd=SRC)
                for line in re.findall(r'^([0-9a-f]{40}) \d+ (\d+)', blame,
                                       re.M):
                    if line[0] in patches:
                        found.append('%s: %s:%s was added by %s' % (
                            name, path, line[1],
                            series()[commits.index(line[0])]))
    assert found == []


# A hook is a call into owned code plus what only the base file can hold
# (code that needs the file's private types, such as kvm-all.c's KVMSlot).
# A function longer than an owned one may be (the longest is 41 lines)
# or more code than a few such functions in one base file is logic that
# belongs in an owned file.
HOOK_FUNCTION_LINES = 45
HOOK_CODE_LINES_PER_FILE = 120


def added_functions(lines):
    """Lengths of the function definitions wholly inside LINES."""
    lengths, start = [], None
    for i, line in enumerate(lines):
        if start is None and line == '{':
            start = i
        elif start is not None and line == '}':
            lengths.append(i - start + 2)   # with the signature line
            start = None
    return lengths


def code_lines(lines):
    """LINES without blank lines and comments."""
    code, in_comment = [], False
    for line in lines:
        text = line.strip()
        if in_comment:
            in_comment = '*/' not in text
            continue
        if text.startswith('/*'):
            in_comment = '*/' not in text
            continue
        if text and not text.startswith('//'):
            code.append(text)
    return code


@pytest.mark.skipif(not os.path.isdir(os.path.join(SRC, '.git')),
                    reason='no prepared tree (run make first)')
def test_patches_add_hooks_not_subsystems():
    commits = prepared_patch_commits()
    found = []
    for name, commit in zip(series(), commits):
        for path in patched_files(name):
            if not re.search(r'\.[ch]$', path):
                continue
            added = [l for _, _, lines in hunks(commit, path) for l in lines]
            longest = max(added_functions(added), default=0)
            code = len(code_lines(added))
            print('%s %s: %d lines of code, longest function %d'
                  % (name, path, code, longest))
            if longest > HOOK_FUNCTION_LINES:
                found.append('%s adds a %d-line function to %s'
                             % (name, longest, path))
            if code > HOOK_CODE_LINES_PER_FILE:
                found.append('%s adds %d lines of code to %s'
                             % (name, code, path))
    assert found == []


@pytest.mark.skipif(not os.path.isdir(os.path.join(SRC, '.git')),
                    reason='no prepared tree (run make first)')
def test_checkpatch_clean():
    """The base's scripts/checkpatch.pl passes over every patch and every
    owned C file (scripts/ferry/checkpatch, also `make checkpatch`)."""
    run = subprocess.run([os.path.join(TOP, 'scripts', 'ferry', 'checkpatch')],
                         capture_output=True, text=True)
    complaints = [l for l in run.stdout.splitlines()
                  if not l.startswith('== ')]
    assert run.returncode == 0 and not complaints, run.stdout + run.stderr
