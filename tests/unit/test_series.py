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
