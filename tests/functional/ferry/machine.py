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

from ferry import env, wait
from ferry.pattern import PAGE, PASS_COUNTER, DIRTY_START, page_bytes
from qemu.machine import QEMUMachine  # noqa: E402  (env sets sys.path)

DIRTY_END = {'x86-dirty.img': 100 << 20, 'x86-dirty-32m.img': 32 << 20,
             'x86-dirty-smp.img': 100 << 20}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Guest(QEMUMachine):
    """A QEMU process with its serial console written to a file.

    ARGS (and whatever add_args() adds later) describe the guest: its
    machine, memory and devices.  They are kept in guest_args, so that a
    destination for it (incoming()) repeats them with its own serial
    file and RAM file; add_process_args() adds options of this process
    only (-incoming, -S).  With SHARED_RAM (a size such as '150M') the
    machine's RAM is a file in /dev/shm that the test maps (ram()), for
    the machine's 'memory-backend=ferry-ram' to use.  WRAPPER runs QEMU
    under another program (env, valgrind)."""

    def __init__(self, flavour='ferry', target='x86_64', name='vm', args=(),
                 accel='tcg', shared_ram=None, wrapper=()):
        self.flavour, self.target, self.accel = flavour, target, accel
        self.shared_ram = shared_ram
        self.tmpdir = tempfile.mkdtemp(prefix='ferry-%s-' % name)
        self.serial_path = os.path.join(self.tmpdir, 'serial.log')
        super().__init__(env.binary(flavour, target), name=name,
                         base_temp_dir=self.tmpdir, sock_dir=self.tmpdir,
                         wrapper=list(wrapper))
        self.set_machine(None)
        self.guest_args = []
        self.add_process_args('-accel', accel, '-nodefaults',
                              '-serial', 'file:' + self.serial_path)
        if shared_ram:
            self.add_process_args(
                '-object', 'memory-backend-file,id=ferry-ram,size=%s,'
                'mem-path=%s,share=on' % (shared_ram, self.share_ram()))
        self.add_args(*args)

    ram_path = None     # shared_ram: the RAM file
    dirty_end = None    # dirty_guest(): end of the pages the guest writes
    _ram = None

    def add_args(self, *args):
        """Options that describe the guest, repeated by a destination."""
        self.guest_args.extend(args)
        super().add_args(*args)

    def add_process_args(self, *args):
        """Options of this QEMU process only."""
        super().add_args(*args)

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
        def printed():
            if text in self.serial():
                return True
            if not self.is_running():
                raise AssertionError('%s exited (%s) before printing %r; log:'
                                     '\n%s' % (self._name, self.exitcode(),
                                               text, self.get_log()))
            return False
        wait.until(printed, timeout, lambda: '%s did not print %r; serial:'
                   '\n%s' % (self._name, text, self.serial()[-2000:]))

    def read_memory(self, addr, size):
        """Guest-physical memory [ADDR, ADDR+SIZE) as bytes (pmemsave:
        QEMU copies it under the BQL, so the guest is best stopped)."""
        path = os.path.join(self.tmpdir, 'mem-%x-%x.bin' % (addr, size))
        self.command('pmemsave', val=addr, size=size, filename=path)
        with open(path, 'rb') as f:
            data = f.read()
        os.unlink(path)
        return data


def dirty_guest(image='x86-dirty.img', flavour='ferry', name='src',
                machine='pc-i440fx-7.2', mem='150M', extra=(), accel='tcg',
                shared_ram=False, wrapper=()):
    """The boot-sector guest that dirties memory (tests/guests/x86-dirty.S);
    x86-dirty-smp.img runs on two vCPUs.  With SHARED_RAM its RAM is a
    file in /dev/shm that the test maps, so that the guest's progress is
    read without asking QEMU (see progress_sample())."""
    smp = ['-smp', '2'] if 'smp' in image else []
    g = Guest(flavour, 'x86_64', name, accel=accel,
              shared_ram=mem if shared_ram else None, wrapper=wrapper)
    if shared_ram:
        machine += ',memory-backend=ferry-ram'
    g.add_args('-machine', machine, '-m', mem, *smp,
               '-drive', 'file=%s,format=raw,if=ide,snapshot=on'
               % env.guest(image), *extra)
    g.dirty_end = DIRTY_END[image]
    return g


def dirty_pages(guest):
    """First byte of every page of the dirty range, read from GUEST."""
    size = guest.dirty_end - DIRTY_START
    return page_bytes(guest.read_memory(DIRTY_START, size), base=DIRTY_START)


def nonzero_bytes(guest):
    """Bytes of GUEST's (shared) RAM in pages that are not all zero: what
    a first migration pass must send as whole pages."""
    ram, zero = guest.ram(), bytes(PAGE)
    return PAGE * sum(ram[off:off + PAGE] != zero
                      for off in range(0, len(ram), PAGE))


def pass_counter(guest, counter=PASS_COUNTER):
    return int.from_bytes(guest.read_memory(counter, 4), 'little')


def incoming(like, flavour='ferry', name='dst', port=None, uri=None,
             wrapper=()):
    """A destination for LIKE: the same guest (LIKE's guest_args, its
    accelerator, its RAM shared if LIKE's is), waiting on a TCP port, or
    on URI (e.g. 'defer') if given; dst.uri is where to migrate."""
    dst = Guest(flavour, like.target, name, args=like.guest_args,
                accel=like.accel, shared_ram=like.shared_ram, wrapper=wrapper)
    dst.uri = uri or 'tcp:127.0.0.1:%d' % (port or free_port())
    dst.add_process_args('-incoming', dst.uri)
    dst.dirty_end = like.dirty_end
    return dst


def wait_migration(src, timeout=120, until=('completed', 'failed', 'cancelled')):
    """Poll query-migrate on SRC until its status is one of UNTIL; the
    last answer."""
    def ended():
        info = src.command('query-migrate')
        return info if info.get('status') in until else None
    return wait.until(ended, timeout, lambda: 'migration still %s' %
                      src.command('query-migrate').get('status'))


def wait_running(vm, timeout=30):
    wait.until(lambda: vm.command('query-status')['status'] == 'running',
               timeout, lambda: '%s not running: %s'
               % (vm._name, vm.command('query-status')))


def progress_sample(guest, counter, start, end):
    """(seconds, bytes) a guest's writer has dirtied so far by its own
    count: one 4 KiB page per page write, COUNTER its pass counter and
    [START, END) the pages it writes, while it runs.

    Read from the guest's mapped RAM (dirty_guest(shared_ram=True)): no
    QMP, no BQL, so the guest runs undisturbed and the sample takes
    microseconds.  The pages' bytes read "pass + 1" up to the writer's
    position, so a binary search finds it; a pass that ends meanwhile
    is retried.  (QMP pmemsave, the reader before, held the BQL for
    0.15 s and could not place a writer that finished a pass during the
    copy; see docs/devel/ferry-dirtylimit.rst.)"""
    if not guest.ram_path:
        raise ValueError('%s: progress is read from shared RAM; boot the '
                         'guest with dirty_guest(shared_ram=True)'
                         % guest._name)
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


# The name progress_sample() had while a pmemsave reader existed too.
shared_progress_sample = progress_sample


def guest_progress(guest):
    """(seconds, bytes) the guest has dirtied so far by its own count: one
    4 KiB page per page write of tests/guests/x86-dirty.S."""
    return progress_sample(guest, PASS_COUNTER, DIRTY_START, guest.dirty_end)


def rate_between(before, after):
    """MB/s (MB = 2^20) between two (seconds, bytes) samples."""
    return (after[1] - before[1]) / (after[0] - before[0]) / (1 << 20)


def guest_rate(guest, seconds):
    """The guest's own dirty rate over SECONDS, in MB/s (MB = 2^20)."""
    before = guest_progress(guest)
    time.sleep(seconds)
    return rate_between(before, guest_progress(guest))


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
    return [rate_between(b, vcpu_progress(guest, c))
            for c, b in zip((0, 1), before)]
