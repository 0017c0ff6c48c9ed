"""Starting guests and migrating them, over the base's python/qemu.

A thin layer over qemu.machine.QEMUMachine that knows Ferry's test guests
and the two binaries (Ferry's and Debian's stock one) so that a test reads
as the behaviour it checks.
"""

import os
import socket
import tempfile
import time

from ferry import env
from ferry.pattern import PASS_COUNTER, DIRTY_START, page_bytes, pages_written
from qemu.machine import QEMUMachine  # noqa: E402  (env sets sys.path)

DIRTY_END = {'x86-dirty.img': 100 << 20, 'x86-dirty-32m.img': 32 << 20,
             'x86-dirty-smp.img': 100 << 20}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Guest(QEMUMachine):
    """A QEMU process with its serial console written to a file."""

    def __init__(self, flavour='ferry', target='x86_64', name='vm', args=(),
                 accel='tcg'):
        self.flavour, self.target, self.accel = flavour, target, accel
        self.tmpdir = tempfile.mkdtemp(prefix='ferry-%s-' % name)
        self.serial_path = os.path.join(self.tmpdir, 'serial.log')
        super().__init__(env.binary(flavour, target), name=name,
                         base_temp_dir=self.tmpdir, sock_dir=self.tmpdir)
        self.set_machine(None)
        self.add_args('-accel', accel, '-nodefaults',
                      '-serial', 'file:' + self.serial_path, *args)

    def serial(self):
        try:
            with open(self.serial_path, 'rb') as f:
                return f.read().decode('latin-1')
        except FileNotFoundError:
            return ''

    def wait_serial(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.serial():
                return
            if not self.is_running() and text not in self.serial():
                raise AssertionError('%s exited (%s) before printing %r; log:\n%s'
                                     % (self._name, self.exitcode(), text,
                                        self.get_log()))
            time.sleep(0.1)
        raise AssertionError('%s did not print %r within %ds; serial:\n%s'
                             % (self._name, text, timeout, self.serial()[-2000:]))

    def read_memory(self, addr, size):
        """Guest-physical memory [ADDR, ADDR+SIZE) as bytes (pmemsave)."""
        path = os.path.join(self.tmpdir, 'mem-%x-%x.bin' % (addr, size))
        self.command('pmemsave', val=addr, size=size, filename=path)
        with open(path, 'rb') as f:
            data = f.read()
        os.unlink(path)
        return data


def dirty_guest(image='x86-dirty.img', flavour='ferry', name='src',
                machine='pc-i440fx-7.2', mem='150M', extra=(), accel='tcg'):
    """The boot-sector guest that dirties memory (tests/guests/x86-dirty.S);
    x86-dirty-smp.img runs on two vCPUs."""
    smp = ['-smp', '2'] if 'smp' in image else []
    g = Guest(flavour, 'x86_64', name, accel=accel, args=[
        '-machine', machine, '-m', mem, *smp,
        '-drive', 'file=%s,format=raw,if=ide,snapshot=on' % env.guest(image),
        *extra])
    g.dirty_end = DIRTY_END[image]
    return g


def dirty_pages(guest):
    """First byte of every page of the dirty range, read from GUEST."""
    size = guest.dirty_end - DIRTY_START
    return page_bytes(guest.read_memory(DIRTY_START, size), base=DIRTY_START)


def pass_counter(guest):
    return int.from_bytes(guest.read_memory(PASS_COUNTER, 4), 'little')


def incoming(like, flavour='ferry', name='dst', port=None):
    """A destination for LIKE: same command line, waiting on a TCP port."""
    port = port or free_port()
    dst = Guest(flavour, like.target, name)
    dst._args = list(like._args)  # same devices; the serial file is dst's own
    dst._args[dst._args.index('-serial') + 1] = 'file:' + dst.serial_path
    dst.add_args('-incoming', 'tcp:127.0.0.1:%d' % port)
    dst.dirty_end = getattr(like, 'dirty_end', None)
    dst.uri = 'tcp:127.0.0.1:%d' % port
    return dst


def wait_migration(src, timeout=120, until=('completed', 'failed', 'cancelled')):
    """Poll query-migrate on SRC until its status is one of UNTIL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = src.command('query-migrate')
        if info.get('status') in until:
            return info
        time.sleep(0.1)
    raise AssertionError('migration still %s after %ds' %
                         (src.command('query-migrate').get('status'), timeout))


def wait_running(vm, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.command('query-status')['status'] == 'running':
            return
        time.sleep(0.1)
    raise AssertionError('%s not running after %ds: %s'
                         % (vm._name, timeout, vm.command('query-status')))


def guest_progress(guest):
    """(seconds, bytes) the guest has dirtied so far by its own count: one
    4 KiB page per page write of tests/guests/x86-dirty.S."""
    passes = pass_counter(guest)
    return time.monotonic(), pages_written(dirty_pages(guest), passes) * 4096


def guest_rate(guest, seconds):
    """The guest's own dirty rate over SECONDS, in MB/s (MB = 2^20)."""
    t0, b0 = guest_progress(guest)
    time.sleep(seconds)
    t1, b1 = guest_progress(guest)
    return (b1 - b0) / (t1 - t0) / (1 << 20)


def vcpu_progress(guest, cpu):
    """(seconds, bytes) vCPU CPU of x86-dirty-smp.img has dirtied so far:
    vCPU 0 owns the lower half of the range, vCPU 1 the upper half."""
    half = (guest.dirty_end - DIRTY_START) // 2
    start = DIRTY_START + cpu * half
    passes = int.from_bytes(guest.read_memory(PASS_COUNTER + 4 * cpu, 4),
                            'little')
    values = page_bytes(guest.read_memory(start, half), start=start, base=start)
    return time.monotonic(), pages_written(values, passes) * 4096


def vcpu_rates(guest, seconds):
    """Each vCPU's own dirty rate over SECONDS, in MB/s."""
    before = [vcpu_progress(guest, c) for c in (0, 1)]
    time.sleep(seconds)
    after = [vcpu_progress(guest, c) for c in (0, 1)]
    return [(a[1] - b[1]) / (a[0] - b[0]) / (1 << 20)
            for a, b in zip(after, before)]
