"""Starting guests and migrating them, over the base's python/qemu.

A thin layer over qemu.machine.QEMUMachine that knows Ferry's test guests
and the two binaries (Ferry's and Debian's stock one) so that a test reads
as the behaviour it checks.
"""

import mmap
import os
import socket
import tempfile
import time

from ferry import env
from ferry.pattern import (PAGE, PASS_COUNTER, DIRTY_START, page_bytes,
                           pages_written)
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

    ram_path = None     # dirty_guest(shared_ram=True): RAM file
    _ram = None

    def share_ram(self):
        """Name this guest's RAM file in /dev/shm (tmpfs: a file on disk
        would be written back) and return its path."""
        self.ram_path = os.path.join('/dev/shm', os.path.basename(self.tmpdir))
        return self.ram_path

    def ram(self):
        """The guest's RAM file, mapped read-only: guest-physical address
        A is offset A below the PCI hole (pc machines)."""
        if self._ram is None:
            with open(self.ram_path, 'rb') as f:
                self._ram = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        return self._ram

    def _post_shutdown(self):
        super()._post_shutdown()
        if self._ram is not None:
            self._ram.close()
            self._ram = None
        if self.ram_path and os.path.exists(self.ram_path):
            os.unlink(self.ram_path)

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
        return self.read_memory_timed(addr, size)[0]

    def read_memory_timed(self, addr, size):
        """(bytes, start, end): read_memory(), with the monotonic times
        the pmemsave command was sent and answered, between which QEMU
        copied the memory in address order while the guest ran."""
        path = os.path.join(self.tmpdir, 'mem-%x-%x.bin' % (addr, size))
        start = time.monotonic()
        self.command('pmemsave', val=addr, size=size, filename=path)
        end = time.monotonic()
        with open(path, 'rb') as f:
            data = f.read()
        os.unlink(path)
        return data, start, end


def dirty_guest(image='x86-dirty.img', flavour='ferry', name='src',
                machine='pc-i440fx-7.2', mem='150M', extra=(), accel='tcg',
                shared_ram=False):
    """The boot-sector guest that dirties memory (tests/guests/x86-dirty.S);
    x86-dirty-smp.img runs on two vCPUs.  With SHARED_RAM its RAM is a
    file in /dev/shm that the test maps, so that the guest's progress is
    read without asking QEMU (see progress_sample())."""
    smp = ['-smp', '2'] if 'smp' in image else []
    ram = []
    g = Guest(flavour, 'x86_64', name, accel=accel)
    if shared_ram:
        ram = ['-object', 'memory-backend-file,id=ferry-ram,size=%s,'
               'mem-path=%s,share=on' % (mem, g.share_ram())]
        machine += ',memory-backend=ferry-ram'
    g.add_args('-machine', machine, '-m', mem, *smp, *ram,
               '-drive', 'file=%s,format=raw,if=ide,snapshot=on'
               % env.guest(image), *extra)
    g.dirty_end = DIRTY_END[image]
    return g


def dirty_pages(guest):
    """First byte of every page of the dirty range, read from GUEST."""
    size = guest.dirty_end - DIRTY_START
    return page_bytes(guest.read_memory(DIRTY_START, size), base=DIRTY_START)


def pass_counter(guest, counter=PASS_COUNTER):
    return int.from_bytes(guest.read_memory(counter, 4), 'little')


def incoming(like, flavour='ferry', name='dst', port=None):
    """A destination for LIKE: same command line, waiting on a TCP port."""
    port = port or free_port()
    dst = Guest(flavour, like.target, name)
    dst._args = list(like._args)  # same devices; the serial file is dst's own
    dst._args[dst._args.index('-serial') + 1] = 'file:' + dst.serial_path
    if like.ram_path:
        dst._args = [a.replace(like.ram_path, dst.share_ram())
                     for a in dst._args]
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


def shared_progress_sample(guest, counter, start, end):
    """progress_sample() from the guest's mapped RAM: no QMP, no BQL, so
    the guest runs undisturbed, and the sample takes microseconds.  The
    pages' bytes read "pass + 1" up to the writer's position, so a
    binary search finds it; a pass that ends meanwhile is retried."""
    ram = guest.ram()
    npages = (end - start) // PAGE

    def passes_now():
        return int.from_bytes(ram[counter:counter + 4], 'little')

    for _ in range(100):
        passes = passes_now()
        ahead = (passes + 1) & 0xff
        t0 = time.monotonic()
        low, high = 0, npages
        while low < high:
            mid = (low + high) // 2
            if ram[start + mid * PAGE] == ahead:
                low = mid + 1
            else:
                high = mid
        t1 = time.monotonic()
        if passes_now() == passes:
            return (t0 + t1) / 2, (passes * npages + low) * PAGE
    raise AssertionError('%s: a pass ended during each of 100 samples'
                         % guest._name)


def progress_sample(guest, counter, start, end):
    """(seconds, bytes) a guest's writer has dirtied so far by its own
    count: one 4 KiB page per page write, COUNTER its pass counter and
    [START, END) the pages it writes, while it runs.

    pmemsave copies the pages in address order, so it saw the writer's
    position (the end of the prefix one pass ahead) at about the
    matching fraction of its run.  A writer fast enough to finish a pass
    during the copy (2 GB/s does one in 40 ms here, the copy takes 150)
    leaves no consistent prefix; then the count is the pass counter read
    right after, which is within one pass of the truth.  pmemsave holds
    the BQL for its 150 ms; a guest with shared RAM is read without it."""
    if guest.ram_path:
        return shared_progress_sample(guest, counter, start, end)
    passes = pass_counter(guest, counter)
    data, t0, t1 = guest.read_memory_timed(start, end - start)
    values = page_bytes(data, start=start, base=start)
    t2 = time.monotonic()
    after = pass_counter(guest, counter)
    if after != passes:
        return (t2 + time.monotonic()) / 2, after * len(values) * PAGE
    written = pages_written(values, passes)
    position = (written - passes * len(values)) / len(values)
    return t0 + (t1 - t0) * position, written * PAGE


def guest_progress(guest):
    """(seconds, bytes) the guest has dirtied so far by its own count: one
    4 KiB page per page write of tests/guests/x86-dirty.S."""
    return progress_sample(guest, PASS_COUNTER, DIRTY_START, guest.dirty_end)


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
    return progress_sample(guest, PASS_COUNTER + 4 * cpu, start, start + half)


def vcpu_rates(guest, seconds):
    """Each vCPU's own dirty rate over SECONDS, in MB/s."""
    before = [vcpu_progress(guest, c) for c in (0, 1)]
    time.sleep(seconds)
    after = [vcpu_progress(guest, c) for c in (0, 1)]
    return [(a[1] - b[1]) / (a[0] - b[0]) / (1 << 20)
            for a, b in zip(after, before)]
