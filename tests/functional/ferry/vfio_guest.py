"""The x86_64-vfio test guest: a TCG guest with a real kernel VFIO device.

Debian's linux 6.12 kernel with the kernel's mtty sample (a mediated PCI
serial device whose driver implements the VFIO migration uAPI v2 with
PRE_COPY), built by tests/guests/build into x86_64-vfio/.  Its /init
(tests/guests/init-vfio) creates the mdevs below and prints what it
made; with host_root the host's / is mounted read-only at /host in the
guest (9p), so that Ferry's own binaries run there without being copied.
"""

import os
import re
import time
import unittest

from ferry import env
from ferry.cpio import cpio_newc
from ferry.machine import Guest
from qemu.machine.machine import AbnormalShutdown

DIR = 'x86_64-vfio'
# What init-vfio creates (tests/guests/build, VFIO_MDEVS).
MDEV_TYPE = 'mtty-2'
MDEV_LINE = re.compile(r'FERRY-VFIO-MDEV (\S+) type=(\S+) group=(\S*) '
                       r'dev=(\S+) driver=(\S*)')
HOST_ROOT_TAG = 'hostroot'


def unavailable():
    """Why the guest was not built (its packages could not be fetched),
    or None when it was."""
    try:
        with open(env.guest(os.path.join(DIR, 'UNAVAILABLE'))) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def built():
    return os.path.exists(env.guest(os.path.join(DIR, 'initrd')))


def needs_guest(cls):
    """Class decorator of the tests that boot the guest: they skip only
    when its packages could not be fetched, and say why."""
    reason = unavailable()
    return unittest.skipIf(reason, 'x86_64-vfio guest not built, kernel '
                           'packages not fetchable: %s' % reason)(cls)


def run_script(script, timeout, **kw):
    """Boot the guest (vfio_guest(), KW as there) to run SCRIPT and wait
    until it powers off, at most TIMEOUT seconds; (the guest, seconds it
    took, whether it timed out and was killed)."""
    if not built():
        raise AssertionError('%s missing: run "make guests" (tests/guests/'
                             'build)' % env.guest(DIR))
    vm = vfio_guest(script, **kw)
    start = time.monotonic()
    vm.launch()
    try:
        vm.wait(timeout=timeout)
        timed_out = False
    except AbnormalShutdown:    # wait() timed out and killed it
        timed_out = True
    return vm, time.monotonic() - start, timed_out


def vfio_guest(script, flavour='ferry', name='vfio', mem='512M',
               host_root=False, extra=(), hold=False):
    """A Guest booting the x86_64-vfio kernel under TCG that runs SCRIPT
    (sh) as /test.sh after init-vfio has set the mdevs up; it powers off
    afterwards unless HOLD.  With HOST_ROOT the host's / is exported
    read-only (mounted at /host in the guest)."""
    g = Guest(flavour, 'x86_64', name)
    entries = [('file', 'test.sh', ('#!/bin/sh\n' + script).encode(), 0o755)]
    if hold:
        entries.append(('file', 'hold', b'', 0o644))
    combined = os.path.join(g.tmpdir, 'initrd')
    with open(env.guest(os.path.join(DIR, 'initrd')), 'rb') as f, \
            open(combined, 'wb') as out:
        base = f.read()
        # The kernel looks for the next archive at a 4-byte boundary.
        out.write(base + b'\0' * (-len(base) % 4))
        out.write(cpio_newc(entries))
    if host_root:
        g.add_args('-virtfs', 'local,path=/,mount_tag=%s,readonly=on,'
                   'security_model=none' % HOST_ROOT_TAG)
    g.add_args('-machine', 'pc', '-m', mem,
               '-kernel', env.guest(os.path.join(DIR, 'vmlinuz')),
               '-initrd', combined,
               '-append', 'console=ttyS0 quiet panic=-1', '-no-reboot', *extra)
    return g


def mdevs(guest):
    """[(uuid, type, group, /dev/vfio node, driver)] init-vfio printed."""
    return MDEV_LINE.findall(guest.serial().replace('\r', ''))


def probe_values(text):
    """The key=value pairs vfio-probe (tests/functional/ferry/
    vfio_probe.c) printed, as a dict (words after a value are kept
    with it: 'migration_flags' -> '0x7 STOP_COPY P2P PRE_COPY')."""
    values = {}
    for line in text.splitlines():
        for m in re.finditer(r'(\w+)=(\S+(?: [A-Z_0-9]+)*)', line):
            values[m.group(1)] = m.group(2)
    return values
