"""Linux test guests: Debian's kernel plus Ferry's busybox initramfs.

The test's shell script is appended to the initramfs as a second cpio
archive (/test.sh), which the kernel unpacks over the first one.
"""

import os
import re

from ferry import env, wait
from ferry.cpio import cpio_newc
from ferry.machine import Guest

KERNELS = {
    'x86_64': ('x86_64/vmlinuz', 'x86_64/initrd', 'ttyS0',
               ['-machine', 'pc', '-m', '256M']),
    'ppc64': ('ppc64/vmlinux', 'ppc64/initrd', 'hvc0',
              ['-machine', 'pseries,cap-cfpc=broken,cap-sbbc=broken,'
               'cap-ibs=broken,cap-ccf-assist=off', '-m', '512M']),
}


def linux_guest(script, target='x86_64', flavour='ferry', name='linux',
                extra=(), hold=False):
    """A Guest booting Debian's TARGET kernel that runs SCRIPT (sh) as
    /test.sh; it powers off afterwards unless HOLD."""
    kernel, initrd, console, machine = KERNELS[target]
    g = Guest(flavour, target, name)
    entries = [('file', 'test.sh', ('#!/bin/sh\n' + script).encode(), 0o755)]
    if hold:
        entries.append(('file', 'hold', b'', 0o644))
    combined = os.path.join(g.tmpdir, 'initrd')
    with open(env.guest(initrd), 'rb') as f, open(combined, 'wb') as out:
        base = f.read()
        # The kernel looks for the next archive at a 4-byte boundary.
        out.write(base + b'\0' * (-len(base) % 4))
        out.write(cpio_newc(entries))
    g.add_args(*machine, '-kernel', env.guest(kernel), '-initrd', combined,
               '-append', 'console=%s quiet panic=-1' % console,
               '-no-reboot', *extra)
    return g


def script_output(guest):
    """The text /test.sh printed, between the init's markers."""
    text = guest.serial().replace('\r', '')
    if 'FERRY-TEST-BEGIN' not in text:
        return None
    return text.split('FERRY-TEST-BEGIN\n', 1)[1].split('FERRY-TEST-END', 1)[0]


def data_check_script(setup='', per_tick=''):
    """A /test.sh that keeps 16 MiB of random data in RAM and checks its
    digest in an endless loop, printing READY and then "TICK <n> ok|BAD"
    after each check (see ticks()).  SETUP runs once before READY,
    PER_TICK before every check.  The loop has no sleep: a stock 7.2
    destination does not re-arm a pseries TCG guest's decrementer, so a
    guest sleeping in the kernel across a migration to it never wakes
    (see test_pseries_sleep.py)."""
    return ('dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null\n'
            + setup +
            'want=$(md5sum < /tmp/data)\n'
            'echo READY\n'
            'i=0\n'
            'while true; do\n'
            '    i=$((i + 1))\n'
            + per_tick +
            '    if [ "$(md5sum < /tmp/data)" = "$want" ]; '
            'then echo "TICK $i ok"; else echo "TICK $i BAD"; fi\n'
            'done\n')


# The lines data_check_script() prints.
TICK = re.compile(r'TICK (\d+) (ok|BAD)')


def ticks(guest):
    """(count, state) of every TICK line GUEST printed so far."""
    return [(int(n), state) for n, state in TICK.findall(guest.serial())]


def wait_ticks(guest, count, timeout):
    """GUEST's ticks() once it printed at least COUNT of them."""
    return wait.until(lambda: len(ticks(guest)) >= count and ticks(guest),
                      timeout, lambda: '%s printed %d ticks, not %d:\n%s'
                      % (guest._name, len(ticks(guest)), count,
                         guest.serial()[-1000:]))
