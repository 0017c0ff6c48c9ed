"""scripts/ferry/install: meson's install plan, relocated to PREFIX.

A fake build directory (config-host.h, the built files) and a fake
`meson` that prints an install plan stand in for a real build.
"""

import json
import os
import subprocess

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
INSTALL = os.path.join(TOP, 'scripts', 'ferry', 'install')


def fake_build(tmp_path, plan_extra=None):
    qemu = tmp_path / 'build' / 'qemu'
    (qemu / 'storage-daemon').mkdir(parents=True)
    (qemu / 'config-host.h').write_text(
        '#define CONFIG_BINDIR "/usr/local/bin"\n'
        '#define CONFIG_PREFIX "/usr/local"\n')
    for name in ('qemu-system-x86_64', 'qemu-img'):
        (qemu / name).write_text('#!/bin/sh\n')
        (qemu / name).chmod(0o755)
    (qemu / 'trace-events-all').write_text('events\n')
    plan = {
        str(qemu / 'qemu-system-x86_64'): '/usr/local/bin/qemu-system-x86_64',
        str(qemu / 'qemu-img'): '/usr/local/bin/qemu-img',
        str(qemu / 'trace-events-all'): '/usr/local/share/qemu/trace-events-all',
        # a tool the build did not make
        str(qemu / 'storage-daemon' / 'qemu-storage-daemon'):
            '/usr/local/bin/qemu-storage-daemon',
    }
    plan.update(plan_extra or {})
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    meson = fake_bin / 'meson'
    meson.write_text('#!/bin/sh\n[ "$*" = "introspect --installed" ] || exit 9\n'
                     "cat <<'EOF'\n%s\nEOF\n" % json.dumps(plan))
    meson.chmod(0o755)
    env = dict(os.environ, FERRY_BUILD_DIR=str(tmp_path / 'build'),
               PATH='%s:%s' % (fake_bin, os.environ['PATH']))
    return env


def run(env, *args):
    return subprocess.run([INSTALL, *args], env=env, capture_output=True,
                          text=True)


def test_relocates_the_plan_into_prefix(tmp_path):
    env = fake_build(tmp_path)
    prefix = tmp_path / 'opt' / 'ferry'
    proc = run(env, str(prefix))
    assert proc.returncode == 0, proc.stderr
    assert os.access(prefix / 'bin' / 'qemu-system-x86_64', os.X_OK)
    assert (prefix / 'bin' / 'qemu-img').exists()
    assert (prefix / 'share' / 'qemu' / 'trace-events-all').read_text() == 'events\n'
    assert not (prefix / 'bin' / 'qemu-storage-daemon').exists()
    assert 'storage-daemon/qemu-storage-daemon' in proc.stdout


def test_destdir_stages_under_the_prefix(tmp_path):
    env = fake_build(tmp_path)
    stage = tmp_path / 'stage'
    proc = run(env, '/usr', '--destdir', str(stage))
    assert proc.returncode == 0, proc.stderr
    assert (stage / 'usr' / 'bin' / 'qemu-system-x86_64').exists()
    assert (stage / 'usr' / 'share' / 'qemu' / 'trace-events-all').exists()


def test_refuses_a_file_outside_the_configured_prefix(tmp_path):
    env = fake_build(tmp_path, {str(tmp_path / 'x'): '/etc/qemu/x'})
    proc = run(env, str(tmp_path / 'p'))
    assert proc.returncode != 0
    assert 'outside the prefix' in proc.stderr
