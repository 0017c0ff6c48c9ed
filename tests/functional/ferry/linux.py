"""Linux test guests: Debian's kernel plus Ferry's busybox initramfs.

The test's shell script is appended to the initramfs as a second cpio
archive (/test.sh), which the kernel unpacks over the first one.
"""

import os
import re

from ferry import env, wait
from ferry.cpio import cpio_newc
from ferry.machine import Guest, incoming

KERNELS = {
    'x86_64': ('x86_64/vmlinuz', 'x86_64/initrd', 'ttyS0',
               ['-machine', 'pc', '-m', '256M']),
    'ppc64': ('ppc64/vmlinux', 'ppc64/initrd', 'hvc0',
              ['-machine', 'pseries,cap-cfpc=broken,cap-sbbc=broken,'
               'cap-ibs=broken,cap-ccf-assist=off', '-m', '512M']),
}


def linux_guest(script, target='x86_64', flavour='ferry', name='linux',
                extra=(), hold=False, machine=None, reboot=False, files=()):
    """A Guest booting Debian's TARGET kernel that runs SCRIPT (sh) as
    /test.sh; it powers off afterwards unless HOLD.  FILES, (path, bytes,
    mode) tuples, are added to the initramfs too.  MACHINE replaces
    the target's machine and memory options.  A reboot (or QMP
    system_reset) ends QEMU unless REBOOT, when it boots the guest
    again."""
    kernel, initrd, console, default_machine = KERNELS[target]
    machine = default_machine if machine is None else machine
    g = Guest(flavour, target, name)
    entries = [('file', 'test.sh', ('#!/bin/sh\n' + script).encode(), 0o755)]
    if hold:
        entries.append(('file', 'hold', b'', 0o644))
    entries += [('file', path, data, mode) for path, data, mode in files]
    combined = os.path.join(g.tmpdir, 'initrd')
    with open(env.guest(initrd), 'rb') as f, open(combined, 'wb') as out:
        base = f.read()
        # The kernel looks for the next archive at a 4-byte boundary.
        out.write(base + b'\0' * (-len(base) % 4))
        out.write(cpio_newc(entries))
    g.add_args(*machine, '-kernel', env.guest(kernel), '-initrd', combined,
               '-append', 'console=%s quiet panic=-1' % console,
               *([] if reboot else ['-no-reboot']), *extra)
    return g


# Debian's ppc64el kernel runs a pseries guest with the radix MMU on the
# default CPU (POWER10), with the hash MMU (a hash page table outside
# guest RAM, migrated in the spapr/htab section) on a POWER8; under TCG
# the hash guest is given 1 GiB.
PSERIES_MMU = {'radix': ('512M', ()), 'hash': ('1G', ('-cpu', 'POWER8'))}


def pseries_guest(script, mmu='radix', machine_opts=(), control=False, **kw):
    """linux_guest() for a pseries guest using the MMU mode MMU ('radix'
    or 'hash'), with the machine properties MACHINE_OPTS (such as
    'resize-hpt=enabled') added.  With CONTROL the guest has a second
    console, /dev/hvc1, on which send() writes lines to it (see
    add_control()); incoming_pseries() makes its destinations."""
    mem, cpu = PSERIES_MMU[mmu]
    props = KERNELS['ppc64'][3][1].split(',') + list(machine_opts)
    g = linux_guest(script, target='ppc64', machine=[
        '-machine', ','.join(props), '-m', mem, *cpu], **kw)
    g.mmu = mmu
    if control:
        g.add_args('-device', 'spapr-vty,chardev=ferry-control')
        add_control(g)
    return g


def add_control(guest):
    """Back GUEST's control console (the spapr-vty on chardev
    'ferry-control', part of the guest's options) by a pair of FIFOs of
    this process: the guest reads send()'s lines from /dev/hvc1."""
    path = os.path.join(guest.tmpdir, 'control')
    for end in ('.in', '.out'):
        os.mkfifo(path + end)
    # QEMU opens both FIFOs read-write, so neither open blocks, and the
    # guest's echo of what it reads fills .out's pipe buffer unread
    # (a few bytes per command).
    guest.add_process_args('-chardev', 'pipe,id=ferry-control,path=' + path)
    guest.control_path = path


def send(guest, line):
    """Write LINE to GUEST's control console (pseries_guest(control=True))."""
    fd = os.open(guest.control_path + '.in', os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (line + '\n').encode())
    finally:
        os.close(fd)


def incoming_pseries(src, flavour='ferry', name='dst', paused=False, **kw):
    """A destination for the pseries guest SRC (incoming(), KW as there),
    with its own control console if SRC has one, started with -S if
    PAUSED; not launched."""
    dst = incoming(src, flavour=flavour, name=name, **kw)
    dst.mmu = src.mmu
    if getattr(src, 'control_path', None):
        add_control(dst)
    if paused:
        dst.add_process_args('-S')
    return dst


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
