"""Linux guest I/O on virtio-blk with an IOThread (SPEC section 3).

A virtio-blk device with iothread= runs on Ferry's vring engine by
default; FERRY_ARGS below is where the option selecting the base's
generic path goes, one variable, so that a class for each path can
share these tests.

One x86_64 TCG guest (4 vCPUs) boots once for the file with two raw
disks on virtio-blk-pci, both served by IOThread io0 with discard=unmap:
vda with one queue, vdb with four.  Its script (ferry/blkio.c, built
static and appended to the initramfs) runs:

- eight writers at once, four per disk, each pinned to its own vCPU (so
  that vdb's four queues all carry requests), each filling a quarter of
  its disk's first DATA bytes with the sector-tagged pattern of
  ferry/blkio.py and flushing its own way: O_DIRECT + fsync, page
  cache + fsync, O_SYNC, page cache + sync(1);
- a read-back of everything with O_DIRECT, checked in the guest;
- discards (busybox blkdiscard, the BLKDISCARD ioctl) and write-zeroes
  (the BLKZEROOUT ioctl), large and small, crossing the writers'
  boundaries, then a read-back of every range: zeros where discarded or
  zeroed, the pattern everywhere else.

The host then checks the image files themselves the same way, each
queue's interrupt count in the guest, query-block, query-iothreads and
HMP "info qtree", and the trace of the device's start (which path the
device used, on a build with the engine's trace events).  25-37 s on
the shared 2-core host at a load average of 5-7, most of it the boot.
"""

import os
import re
import shutil
import tempfile
import unittest

from ferry import blkio
from ferry.linux import linux_guest

# Options of Ferry's QEMU that select the vring path under test: none
# is Ferry's default (the engine, with iothread=); ('-global',
# 'virtio-blk-device.x-vring-engine=off') selects the base's generic
# path.  (A -global, as in test_vring_migration.py, where stock QEMUs,
# which have no such property, run the same guest.)
FERRY_ARGS = ()

MIB = 1 << 20
DATA = 128 * MIB                # written per disk, by WRITERS writers
IMAGE = DATA + 32 * MIB         # the rest stays unwritten
WRITERS = 4
MODES = ('direct', 'fsync', 'osync', 'nosync')
# (name, seed, num-queues): vda and vdb in the guest.  vda is a legacy
# device (disable-modern=on: rings in the guest's byte order, no
# VERSION_1), vdb a modern one.
DISKS = (('vda', 11, 1), ('vdb', 12, 4))
LEGACY = {'vda'}
# Ranges of [0, DATA) made zero after the write: (command, offset,
# length).  'blkdiscard' is busybox's tool, the others blkio's ioctls.
HOLES = (
    ('blkdiscard', 28 * MIB, 8 * MIB),              # across writers 0|1
    ('discard', 40 * MIB + 4096, 68 * 1024),        # small, 4 KiB aligned
    ('zeroout', 60 * MIB, 8 * MIB),                 # across writers 1|2
    ('zeroout', 100 * MIB + 512, 1536),             # three sectors
    ('discard', DATA - 4 * MIB, 4 * MIB),           # the data's end
)
BOOT_TIMEOUT = 180
RUN_TIMEOUT = 240


def segments():
    """[(offset, length, zero)] covering the whole image after HOLES."""
    out, pos = [], 0
    for _, off, length in sorted(HOLES, key=lambda h: h[1]):
        if off > pos:
            out.append((pos, off - pos, False))
        out.append((off, length, True))
        pos = off + length
    if pos < DATA:
        out.append((pos, DATA - pos, False))
    out.append((DATA, IMAGE - DATA, True))
    return out


def guest_script():
    lines = ['irqs() { grep -E "virtio[0-9]+-req" /proc/interrupts'
             ' | sed "s/^/IRQ $1 /"; }']
    for dev, _, _ in DISKS:
        lines += ['echo "MQ %s $(ls /sys/block/%s/mq | tr "\\n" " ")"'
                  % (dev, dev),
                  'echo "VIRTIO %s $(basename $(readlink '
                  '/sys/block/%s/device))"' % (dev, dev)]
        for q in ('discard_max_bytes', 'write_zeroes_max_bytes'):
            lines.append('echo "QUEUE %s %s $(cat /sys/block/%s/queue/%s)"'
                         % (dev, q, dev, q))
    lines.append('irqs before')
    # The writers, all at once; sync(1) for the page-cache-only ones.
    quarter = DATA // WRITERS
    for dev, seed, _ in DISKS:
        for i in range(WRITERS):
            lines.append('taskset -c %d blkio write /dev/%s %d %d %d %s &'
                         % (i, dev, i * quarter, quarter, seed, MODES[i]))
    lines += ['wait', 'sync', 'echo SYNCED', 'irqs written']
    # (Page-cache writes reach the device from whichever vCPU writes
    # them back, so the read-back below, O_DIRECT on each writer's vCPU,
    # is what is sure to use each queue.)
    for dev, seed, _ in DISKS:
        for i in range(WRITERS):
            lines.append('taskset -c %d blkio verify /dev/%s %d %d %d &'
                         % (i, dev, i * quarter, quarter, seed))
    lines += ['wait', 'irqs read']
    for dev, _, _ in DISKS:
        for cmd, off, length in HOLES:
            if cmd == 'blkdiscard':
                lines.append('blkdiscard -o %d -l %d /dev/%s && echo '
                             '"BLKDISCARD /dev/%s %d %d ok"'
                             % (off, length, dev, dev, off, length))
            else:
                lines.append('blkio %s /dev/%s %d %d' % (cmd, dev, off,
                                                         length))
    for dev, seed, _ in DISKS:
        for off, length, zero in segments():
            lines.append('blkio zero /dev/%s %d %d' % (dev, off, length)
                         if zero else 'blkio verify /dev/%s %d %d %d'
                         % (dev, off, length, seed))
    # Every blkio command prints a line with ok or BAD; the tests check
    # that each one ran and said ok.
    lines += ['irqs end', 'echo ALL-DONE',
              'while true; do sleep 60; done']
    return '\n'.join(lines) + '\n'


class VringIO(unittest.TestCase):
    ferry_args = FERRY_ARGS
    guest = None

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix='ferry-vring-io-')
        cls.images = {}
        extra = ['-smp', '4', '-object', 'iothread,id=io0']
        for n, (dev, _, queues) in enumerate(DISKS):
            path = blkio.make_image(os.path.join(cls.dir, dev + '.img'), IMAGE)
            cls.images[dev] = path
            extra += ['-drive', 'if=none,id=drive%d,file=%s,format=raw,'
                      'discard=unmap' % (n, path),
                      '-device', 'virtio-blk-pci,id=disk%d,drive=drive%d,'
                      'iothread=io0,num-queues=%d%s'
                      % (n, n, queues,
                         ',disable-modern=on' if dev in LEGACY else '')]
        cls.guest = linux_guest(guest_script(), name='vring-io-guest',
                                machine=['-machine', 'pc-i440fx-7.2',
                                         '-m', '384M'],
                                files=blkio.initramfs_files(), extra=extra)
        cls.guest.add_process_args(*cls.ferry_args)
        blkio.add_trace(cls.guest)
        try:
            cls.guest.launch()
            cls.guest.wait_serial('FERRY-TEST-BEGIN', timeout=BOOT_TIMEOUT)
            cls.guest.wait_serial('ALL-DONE', timeout=RUN_TIMEOUT)
        except BaseException:
            cls.tearDownClass()
            raise
        cls.out = cls.guest.serial().replace('\r', '')

    @classmethod
    def tearDownClass(cls):
        if cls.guest is not None:
            cls.guest.shutdown(hard=True)
            cls.guest = None
        shutil.rmtree(cls.dir, ignore_errors=True)

    def lines(self, word):
        return [line.split()[1:] for line in self.out.splitlines()
                if line.startswith(word + ' ')]

    def test_writes_flushed_and_read_back_in_guest(self):
        for word, count in (('WRITE', WRITERS), ('VERIFY', WRITERS)):
            for dev, _, _ in DISKS:
                done = [w for w in self.lines(word) if w[0] == '/dev/' + dev]
                self.assertGreaterEqual(len(done), count, (word, dev))
                for w in done:
                    self.assertIn('ok', w, (word, w, self.out[-3000:]))
        self.assertIn('SYNCED', self.out)

    def test_queues(self):
        """vdb has four queues and every one of them completed requests
        (its interrupt count rose while the writers and readers ran); vda
        has one."""
        mq = {w[0]: w[1:] for w in self.lines('MQ')}
        virtio = {w[0]: w[1] for w in self.lines('VIRTIO')}
        irqs = {}
        for w in self.lines('IRQ'):
            # IRQ <phase> <n>: <count per CPU>... <chip> <...> virtioN-req.Q
            phase, name = w[0], w[-1]
            counts = [int(c) for c in w[2:] if c.isdigit()]
            irqs[phase, name] = sum(counts)
        for dev, _, queues in DISKS:
            self.assertEqual(mq.get(dev), [str(q) for q in range(queues)],
                             self.out[:3000])
            for q in range(queues):
                name = '%s-req.%d' % (virtio[dev], q)
                self.assertIn(('before', name), irqs, self.out[:3000])
                self.assertGreater(irqs['read', name],
                                   irqs['before', name],
                                   '%s queue %d carried no requests'
                                   % (dev, q))

    def test_discard_and_write_zeroes_in_guest(self):
        """The device offers both commands and the guest used them: its
        queues say so, the ioctls succeeded and the ranges read back as
        zeros, the rest as the pattern."""
        limits = {(w[0], w[1]): int(w[2]) for w in self.lines('QUEUE')}
        for dev, _, _ in DISKS:
            self.assertGreater(limits[dev, 'discard_max_bytes'], 0)
            self.assertGreater(limits[dev, 'write_zeroes_max_bytes'], 0)
            for word in ('BLKDISCARD', 'DISCARD', 'ZEROOUT', 'ZERO'):
                done = [w for w in self.lines(word) if w[0] == '/dev/' + dev]
                self.assertTrue(done, (word, dev, self.out[-3000:]))
                for w in done:
                    self.assertIn('ok', w, (word, w))
            # The read-back after the holes: every segment, in order.
            got = [(int(w[1]), int(w[2])) for w in
                   self.lines('VERIFY') + self.lines('ZERO')
                   if w[0] == '/dev/' + dev and 'ok' in w]
            for off, length, _ in segments():
                self.assertIn((off, length), got, self.out[-3000:])

    def test_image_content_on_host(self):
        """The image files hold what the guest wrote and flushed: the
        pattern of each disk's writer outside the holes, zeros in them
        and past the data."""
        for dev, seed, _ in DISKS:
            path = self.images[dev]
            self.assertEqual(os.path.getsize(path), IMAGE)
            for off, length, zero in segments():
                bad = (blkio.check_zero(path, off, length) if zero else
                       blkio.check_pattern(path, off, length, seed))
                self.assertIsNone(bad, '%s [%d, +%d) %s: %s'
                                  % (dev, off, length,
                                     'zero' if zero else 'data', bad))

    def test_query_block(self):
        blocks = {b['device']: b for b in self.guest.command('query-block')}
        for n, (dev, _, _) in enumerate(DISKS):
            b = blocks['drive%d' % n]
            self.assertEqual(b['qdev'],
                             '/machine/peripheral/disk%d/virtio-backend' % n)
            self.assertFalse(b['locked'])
            ins = b['inserted']
            self.assertEqual(ins['file'], self.images[dev])
            self.assertEqual(ins['drv'], 'raw')
            self.assertFalse(ins['ro'])
            self.assertEqual(ins['image']['virtual-size'], IMAGE)
            self.assertTrue(ins['cache']['writeback'])

    def test_blockstats(self):
        """The device accounted what the guest did: the data written (and
        the write-zeroes, which virtio-blk accounts as writes) and read
        back twice, flushes, no failures.  (7.2's virtio-blk does not
        account discards: unmap_operations stays 0, with the base's
        generic path too.)"""
        stats = {s['device']: s['stats']
                 for s in self.guest.command('query-blockstats')}
        zeroed = sum(length for cmd, _, length in HOLES if cmd == 'zeroout')
        for n in range(len(DISKS)):
            st = stats['drive%d' % n]
            self.assertGreaterEqual(st['wr_bytes'], DATA + zeroed, st)
            self.assertGreaterEqual(st['rd_bytes'], 2 * DATA, st)
            self.assertGreater(st['flush_operations'], 0, st)
            for op in ('wr', 'rd', 'flush', 'unmap'):
                self.assertEqual(st['failed_%s_operations' % op], 0, st)
                self.assertEqual(st['invalid_%s_operations' % op], 0, st)

    def test_iothread(self):
        threads = {t['id']: t for t in self.guest.command('query-iothreads')}
        self.assertIn('io0', threads)
        self.assertGreater(threads['io0']['thread-id'], 0)
        for n in range(len(DISKS)):
            link = self.guest.command(
                'qom-get', property='iothread',
                path='/machine/peripheral/disk%d/virtio-backend' % n)
            self.assertEqual(link, '/objects/io0')

    def test_info_qtree(self):
        qtree = self.guest.command('human-monitor-command',
                                   command_line='info qtree')
        for n, (_, _, queues) in enumerate(DISKS):
            block = qtree_device(qtree, 'virtio-blk-pci', 'disk%d' % n)
            self.assertIsNotNone(block, qtree)
            self.assertIn('dev: virtio-blk-device', block)
            # (qtree shows no link properties: the IOThread is checked
            # by test_iothread.)
            for prop in ('drive = "drive%d"' % n,
                         'num-queues = %d ' % queues, 'discard = true',
                         'write-zeroes = true'):
                self.assertIn(prop, block, block)

    def test_vring_engine_trace(self):
        """Both devices started their dataplane; on a build with the
        vring engine, on the engine with all their queues unless
        FERRY_ARGS turned it off, with no fallback and no error."""
        trace = blkio.read_trace(self.guest)
        starts = re.findall(r'virtio_blk_data_plane_start', trace)
        self.assertGreaterEqual(len(starts), len(DISKS), trace)
        if not blkio.engine_in_build():
            self.skipTest('this build has no virtio_blk_vring_start trace '
                          'event: the vring engine is not wired in yet')
        self.assertNotIn('virtio_blk_vring_error', trace)
        # The driver's probe starts, stops and starts each dataplane:
        # each device's queue count, once.
        nvqs = sorted(set(re.findall(
            r'virtio_blk_vring_start vblk (\S+) nvqs (\d+)', trace)))
        nvqs = [int(n) for _, n in nvqs]
        fallback = re.findall(r'virtio_blk_vring_fallback.*', trace)
        if 'x-vring-engine=off' in ' '.join(self.ferry_args):
            self.assertEqual(nvqs, [], trace)
        else:
            self.assertEqual(nvqs, sorted(q for _, _, q in DISKS), trace)
            self.assertEqual(fallback, [], trace)


def qtree_device(qtree, driver, dev_id):
    """The lines of `info qtree` under the device DRIVER with id DEV_ID
    (its properties and everything on its buses), or None."""
    lines = qtree.splitlines()
    head = 'dev: %s, id "%s"' % (driver, dev_id)
    for i, line in enumerate(lines):
        if line.strip() == head:
            indent = len(line) - len(line.lstrip())
            block = [line]
            for more in lines[i + 1:]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                block.append(more)
            return '\n'.join(block) + '\n'
    return None


if __name__ == '__main__':
    unittest.main()
