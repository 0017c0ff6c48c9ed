"""Migration scenarios shared by the functional tests and the demo."""

import time

from ferry import wait
from ferry.machine import (dirty_guest, dirty_pages, incoming, pass_counter,
                           wait_migration, wait_running)
from ferry.pattern import check_dirty_pattern

FAST_LINK = 1 << 30        # bytes/s: loopback, effectively unlimited


def start_dirty_source(flavour='ferry', image='x86-dirty.img', **kw):
    """The busy guest (dirty_guest(), KW as there), running its writer."""
    src = dirty_guest(image, flavour=flavour, **kw)
    src.launch()
    try:
        src.wait_serial('FP', timeout=60)
    except BaseException:
        src.shutdown(hard=True)
        raise
    return src


def start_destination(src, flavour='ferry', paused=True, **kw):
    """A destination for SRC (incoming(), KW as there), started."""
    dst = incoming(src, flavour=flavour, **kw)
    if paused:
        dst.add_process_args('-S')
    dst.launch()
    return dst


class MigrationPairs:
    """unittest mixin: pair() starts the busy source and a paused
    destination for it, destination() another destination; every VM in
    self.vms is shut down after the test, with HARD_SHUTDOWN killed (a
    process quit mid-migration may close QMP before it answers)."""
    hard_shutdown = False

    def setUp(self):
        self.vms = []

    def tearDown(self):
        for vm in self.vms:
            vm.shutdown(hard=self.hard_shutdown)

    def source(self, flavour='ferry', **kw):
        src = start_dirty_source(flavour, **kw)
        self.vms.append(src)
        return src

    def destination(self, src, flavour='ferry', **kw):
        dst = start_destination(src, flavour, **kw)
        self.vms.append(dst)
        return dst

    def pair(self, src_flavour='ferry', dst_flavour='ferry', **kw):
        src = self.source(src_flavour, **kw)
        return src, self.destination(src, dst_flavour)


def set_params(vm, **params):
    vm.command('migrate-set-parameters',
               **{k.replace('_', '-'): v for k, v in params.items()})


def set_caps(vm, **caps):
    vm.command('migrate-set-capabilities', capabilities=[
        {'capability': k.replace('_', '-'), 'state': v} for k, v in caps.items()])


def migrate(src, dst, timeout=180, **params):
    set_params(src, **params)
    src.command('migrate', uri=dst.uri)
    return wait_migration(src, timeout=timeout)


def kill_destination_midway(src, dst, bandwidth, after):
    """Migrate SRC to DST over a BANDWIDTH bytes/s link, kill DST AFTER
    seconds in; SRC's query-migrate once it has given up."""
    set_params(src, max_bandwidth=bandwidth)
    src.command('migrate', uri=dst.uri)
    time.sleep(after)
    dst.kill()
    return wait_migration(src, timeout=60)


# Under KVM, SeaBIOS enables kvmclock and places the pvclock structure in
# its low-memory data; the destination's KVM rewrites it (its version
# field) when the clock state is loaded, before the guest runs again.
KVMCLOCK_FIRMWARE_AREA = (0xe0000, 0x100000)


def memory_matches(src, dst, chunk=16 << 20, ignore=()):
    """None if all of SRC's RAM equals DST's (outside the [start, end)
    ranges in IGNORE), else the first differing address.  Both must be
    stopped."""
    size = src.command('query-memory-size-summary')['base-memory']
    for addr in range(0, size, chunk):
        n = min(chunk, size - addr)
        a, b = bytearray(src.read_memory(addr, n)), bytearray(dst.read_memory(addr, n))
        for start, end in ignore:
            lo, hi = max(start, addr), min(end, addr + n)
            if lo < hi:
                a[lo - addr:hi - addr] = b[lo - addr:hi - addr]
        if a != b:
            i = next(i for i in range(n) if a[i] != b[i])
            return addr + i
    return None


def wait_loaded(dst, timeout=60):
    """Wait until DST has loaded the whole stream: the source reports
    'completed' once it has sent the last byte, while the destination may
    still be loading (stock 7.2 decompresses in threads), and reading its
    RAM then finds the last pages old."""
    wait.until(lambda: dst.command('query-status')['status'] != 'inmigrate',
               timeout, 'destination still loading')


def check_destination(test, src, dst):
    """The checks every completed migration of the dirty guest must pass:
    the destination's RAM is the source's final RAM byte for byte, the
    pattern is intact, and the guest runs on after 'cont'."""
    test.assertEqual(src.command('query-status')['status'], 'postmigrate')
    wait_loaded(dst)
    ignore = [KVMCLOCK_FIRMWARE_AREA] if 'kvm' in src.accel else []
    test.assertIsNone(memory_matches(src, dst, ignore=ignore),
                      'destination RAM differs')
    test.assertIsNone(check_dirty_pattern(dirty_pages(dst)))
    before = pass_counter(dst)
    dst.command('cont')
    wait_running(dst)
    wait.until(lambda: pass_counter(dst) != before, 30,
               'guest made no progress on the destination', interval=0.2)
    dst.command('stop')
    test.assertIsNone(check_dirty_pattern(dirty_pages(dst)))


def check_source_alive(test, src):
    """After a failed or cancelled migration the source runs on, intact."""
    wait_running(src)
    before = pass_counter(src)
    wait.until(lambda: pass_counter(src) != before, 30,
               'source guest stopped', interval=0.2)
    src.command('stop')
    test.assertIsNone(check_dirty_pattern(dirty_pages(src)))
    src.command('cont')
