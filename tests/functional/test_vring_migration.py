"""Live migration and reset of a guest doing virtio-blk I/O on an
IOThread (SPEC section 3: the vring engine hands its indices back to the
virtio core when it stops, so migration and system_reset work with it).

The x86_64 TCG guest (2 vCPUs) has one raw disk on virtio-blk-pci with
IOThread io0 and two queues (FERRY_ARGS as in test_vring_io.py).  Its
script runs two endless writers (`blkio stream`, ferry/blkio.c), one
pinned to each vCPU and so to each queue, each in its own region of the
disk: a 1 MiB anchor written once, then numbered 4 KiB writes into a
ring of SLOTS slots, each read back and checked at once; every 64
writes it flushes, re-reads the anchor and every slot written so far
(so what was written before a switchover is checked after it) and
prints "IO <writer> <round> ok|BAD seq=<last write> boot=<n>".  A boot
count on the disk tells a boot after a reset, where each writer first
checks what the previous boot left ("RESUME ... ok") and carries on.

Both QEMUs of a migration open the same image file, the destination
with -incoming and -S; at the switchover (source stopped, destination
not yet running) the host checks the image itself: each writer's anchor
intact and its ring holding exactly its last SLOTS writes.  Then the
destination runs and the guest's I/O must go on, every check ok,
without a reboot, its rounds continuing the source's count.

The tests hand one guest on, in order: Ferry -> Ferry, a cancelled
migration (the source keeps running and writing), Ferry -> stock
Debian 7.2, stock -> Ferry, and a system_reset in the middle of the
I/O (the guest boots again and the disk works).  A test run alone, or
after one that left no usable guest, boots its own.  About 45 s on the
shared 2-core host at a load average of 5-7 (a boot there takes 15-25
s, two of them: the first and the reset's).
"""

import os
import re
import shutil
import tempfile
import time
import unittest

from ferry import blkio, env, wait
from ferry.blkio import add_trace, engine_in_build, read_trace
from ferry.linux import linux_guest
from ferry.machine import incoming, wait_migration, wait_running
from ferry.migrate import FAST_LINK, set_params, wait_loaded

# Options of Ferry's QEMUs only, such as the one selecting the base's
# generic path instead of the vring engine: ('-global',
# 'virtio-blk-device.x-vring-engine=off').  A -global and not a device
# option, so that a stock QEMU on the other side of a migration, which
# has no such property, gets the same guest options.
FERRY_ARGS = ()
MIB = 1 << 20
SLOTS = 512
REGION = 4 * MIB        # each writer's region: marker, anchor, slots
# (name, seed, vCPU): the writers, in regions 0 and 1.
WRITERS = (('a', 21, 0), ('b', 22, 1))
IMAGE = REGION * len(WRITERS)
BOOT_TIMEOUT = 180
CANCEL_LINK = 4 << 20   # bytes/s: RAM's first pass takes several seconds

IO = re.compile(r'IO (\w+) (\d+) (ok|BAD) seq=(\d+) boot=(\d+)')
RESUME = re.compile(r'RESUME (\w+) boot=(\d+) newest=(-?\d+) (ok|BAD)')
SKIP_STOCK = "Debian's qemu-system-x86_64 is not installed"


def guest_script():
    lines = ['taskset -c %d blkio stream /dev/vda %d %d %d %s &'
             % (cpu, n * REGION, SLOTS, seed, name)
             for n, (name, seed, cpu) in enumerate(WRITERS)]
    return '\n'.join(lines + ['wait']) + '\n'


def io_lines(guest):
    """[(writer, round, state, seq, boot)] GUEST printed so far."""
    return [(w, int(r), state, int(seq), int(boot))
            for w, r, state, seq, boot in IO.findall(guest.serial())]


def rounds(guest, writer):
    return [line for line in io_lines(guest) if line[0] == writer]


def guest_ok(guest):
    """True when GUEST runs and has printed no bad check."""
    try:
        return (guest.is_running()
                and guest.command('query-status')['status'] == 'running'
                and 'BAD' not in guest.serial())
    except Exception:       # QMP gone: the guest is of no further use
        return False


class VringMigration(unittest.TestCase):
    ferry_args = FERRY_ARGS
    guest = None

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix='ferry-vring-mig-')

    @classmethod
    def tearDownClass(cls):
        if cls.guest is not None:
            cls.guest.shutdown(hard=True)
            cls.guest = None
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.vms = []

    def tearDown(self):
        for vm in self.vms:
            if vm is not type(self).guest:
                vm.shutdown(hard=True)

    def boot(self, flavour):
        """A new guest on FLAVOUR's QEMU with a new image, writing."""
        fd, image = tempfile.mkstemp(suffix='.img', dir=self.dir)
        os.close(fd)
        blkio.make_image(image, IMAGE)
        g = linux_guest(
            guest_script(), flavour=flavour, name='vring-mig-%s' % flavour,
            machine=['-machine', 'pc-i440fx-7.2', '-m', '256M', '-smp', '2'],
            files=blkio.initramfs_files(), reboot=True,
            extra=['-object', 'iothread,id=io0',
                   '-drive', 'if=none,id=drive0,file=%s,format=raw,'
                   'discard=unmap' % image,
                   '-device', 'virtio-blk-pci,id=disk0,drive=drive0,'
                   'iothread=io0,num-queues=2'])
        g.image = image
        if flavour == 'ferry':
            g.add_process_args(*self.ferry_args)
        add_trace(g)
        self.vms.append(g)
        g.launch()
        self.wait_rounds(g, 3, timeout=BOOT_TIMEOUT)
        return g

    def running_guest(self, flavour):
        """The class's guest, on FLAVOUR's QEMU, booted if there is none
        there that runs with its checks all ok."""
        cls = type(self)
        if cls.guest is not None and (cls.guest.flavour != flavour
                                      or not guest_ok(cls.guest)):
            cls.guest.shutdown(hard=True)
            cls.guest = None
        if cls.guest is None:
            cls.guest = self.boot(flavour)
        return cls.guest

    def hand_on(self, dst):
        cls = type(self)
        old, cls.guest = cls.guest, dst
        if old is not None and old is not dst:
            old.shutdown(hard=True)

    def destination(self, src, flavour):
        dst = incoming(src, flavour=flavour, name='vring-mig-%s-dst' % flavour)
        dst.add_process_args('-S')
        if flavour == 'ferry':
            dst.add_process_args(*self.ferry_args)
        dst.image = src.image
        add_trace(dst)
        self.vms.append(dst)
        dst.launch()
        return dst

    def wait_rounds(self, guest, count, timeout=60):
        """Wait until each writer printed COUNT more rounds on GUEST than
        it had; fail at once on a bad check."""
        start = {w: len(rounds(guest, w)) for w, _, _ in WRITERS}

        def done():
            if 'BAD' in guest.serial():
                raise AssertionError('a check failed in the guest:\n'
                                     + guest.serial()[-3000:])
            if not guest.is_running():
                raise AssertionError('%s exited: %s\n%s' % (
                    guest._name, guest.get_log(), guest.serial()[-3000:]))
            return all(len(rounds(guest, w)) >= start[w] + count
                       for w, _, _ in WRITERS)
        wait.until(done, timeout, lambda: '%s: fewer than %d new rounds of '
                   'I/O:\n%s' % (guest._name, count, guest.serial()[-3000:]))

    def check_image(self, guest):
        """With GUEST's I/O stopped: its image holds each writer's anchor
        and exactly its last SLOTS writes, at least up to the last round
        the guest printed; {writer: (boots, newest seq)}."""
        found = {}
        for n, (name, seed, _) in enumerate(WRITERS):
            boots, newest = blkio.check_stream(guest.image, n * REGION,
                                               SLOTS, seed)
            printed = rounds(guest, name)
            if printed:
                self.assertGreaterEqual(newest, printed[-1][3])
            found[name] = boots, newest
        return found

    def check_engine_used(self, vm):
        """VM (a Ferry QEMU) ran the disk on the vring engine, unless
        FERRY_ARGS turned it off, and never fell back or failed."""
        trace = read_trace(vm)
        self.assertIn('virtio_blk_data_plane_start', trace)
        self.assertNotIn('virtio_blk_vring_error', trace)
        if not engine_in_build():
            return          # a build without the engine: nothing to see
        if 'x-vring-engine=off' in ' '.join(self.ferry_args):
            self.assertNotIn('virtio_blk_vring_start', trace)
        else:
            self.assertIn('virtio_blk_vring_start', trace)
            self.assertNotIn('virtio_blk_vring_fallback', trace)

    def migrate(self, src, dst):
        """Migrate SRC to the paused DST; the image is checked at the
        switchover, then DST runs and its I/O must go on where SRC's
        stopped, all checks ok, without a reboot."""
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=1000)
        src.command('migrate', uri=dst.uri)
        info = wait_migration(src, timeout=120)
        self.assertEqual(info['status'], 'completed', info)
        self.assertEqual(src.command('query-status')['status'], 'postmigrate')
        wait_loaded(dst)
        self.assertEqual(dst.command('query-status')['status'], 'paused')
        self.check_image(src)
        trace = read_trace(src)
        if 'virtio_blk_vring_start' in trace:
            # The engine stopped with the source and handed both queues'
            # indices back to the virtio core.
            since = trace.rsplit('virtio_blk_vring_start', 1)[1]
            self.assertEqual(set(re.findall(r'virtio_blk_vring_stop .*queue '
                                            r'(\d+)', since)),
                             {'0', '1'}, trace)
        last = {w: rounds(src, w)[-1] for w, _, _ in WRITERS}
        dst.command('cont')
        wait_running(dst)
        self.wait_rounds(dst, 3)
        log = dst.serial()[-3000:]
        self.assertNotIn('FERRY-GUEST-UP', dst.serial(),
                         'the guest rebooted on the destination:\n' + log)
        for w, _, _ in WRITERS:
            after = rounds(dst, w)
            # The rounds go on from the source's (a line the source had
            # begun may end on the destination's console, where the
            # pattern does not find it).
            self.assertLessEqual(after[0][1], last[w][1] + 2, log)
            first = after[0][1]
            self.assertEqual([r for _, r, _, _, _ in after],
                             list(range(first, first + len(after))), log)
            self.assertGreater(after[0][3], last[w][3], log)
            self.assertEqual({boot for *_, boot in after}, {last[w][4]}, log)
        if dst.flavour == 'ferry':
            self.check_engine_used(dst)
        self.hand_on(dst)

    def interop(self, src_flavour, dst_flavour):
        src = self.running_guest(src_flavour)
        if src.flavour == 'ferry':
            self.check_engine_used(src)
        self.migrate(src, self.destination(src, dst_flavour))

    def test_1_ferry_to_ferry(self):
        self.interop('ferry', 'ferry')

    def test_2_cancel_leaves_source_writing(self):
        src = self.running_guest('ferry')
        dst = self.destination(src, 'ferry')
        set_params(src, max_bandwidth=CANCEL_LINK, downtime_limit=1)
        src.command('migrate', uri=dst.uri)
        time.sleep(1)
        self.assertEqual(src.command('query-migrate')['status'], 'active')
        src.command('migrate_cancel')
        self.assertEqual(wait_migration(src)['status'], 'cancelled')
        wait_running(src)
        dst.wait(timeout=30)     # the destination gives up on its stream
        # The source writes on, its checks ok; then, stopped, its image
        # holds what it wrote; then it runs on.
        self.wait_rounds(src, 3)
        src.command('stop')
        self.check_image(src)
        src.command('cont')
        self.wait_rounds(src, 2)
        self.check_engine_used(src)

    @unittest.skipUnless(env.stock_binary('x86_64'), SKIP_STOCK)
    def test_3_ferry_to_stock(self):
        self.interop('ferry', 'stock')

    @unittest.skipUnless(env.stock_binary('x86_64'), SKIP_STOCK)
    def test_4_stock_to_ferry(self):
        self.interop('stock', 'ferry')

    def test_5_reset_mid_io(self):
        """system_reset while both writers write: the guest boots again,
        each writer finds the previous boot's writes intact on the disk
        and writes on."""
        g = self.running_guest('ferry')
        self.wait_rounds(g, 1)
        before = self.check_boots(g)
        g.command('system_reset')
        boot = before + 1

        def resumed():
            text = g.serial()
            if 'BAD' in text:
                raise AssertionError('a check failed in the guest:\n'
                                     + text[-3000:])
            found = [m for m in RESUME.findall(text) if int(m[1]) == boot]
            return len(found) == len(WRITERS) and found
        found = wait.until(resumed, BOOT_TIMEOUT, lambda: 'the guest did not '
                           'come back after system_reset:\n'
                           + g.serial()[-3000:])
        for name, _, newest, state in found:
            self.assertEqual(state, 'ok', g.serial()[-3000:])
            self.assertGreater(int(newest), 0)
        self.wait_rounds(g, 3)
        for w, _, _ in WRITERS:
            self.assertEqual(rounds(g, w)[-1][4], boot)
        g.command('stop')
        self.assertEqual({b for b, _ in self.check_image(g).values()}, {boot})
        g.command('cont')
        self.check_engine_used(g)

    def check_boots(self, guest):
        """The boot count the guest's writers are in (the last round of
        each)."""
        boots = {rounds(guest, w)[-1][4] for w, _, _ in WRITERS}
        self.assertEqual(len(boots), 1, boots)
        return boots.pop()


if __name__ == '__main__':
    unittest.main()
