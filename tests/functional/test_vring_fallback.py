"""The vring engine's fallbacks: where it cannot run a virtio-blk
device's queues, the virtio core does, the trace says why, and the disk
works all the same.

One x86_64 TCG guest on q35 with an emulated Intel IOMMU and three disks
in one IOThread: one whose DMA goes through the vIOMMU
(iommu_platform=on), one that negotiates the packed ring (packed=on),
one with x-vring-engine=off.  The guest writes a random 16 MiB to each,
reads it back with O_DIRECT and compares checksums.
"""

import os
import re
import shutil
import sys
import tempfile
import unittest

from ferry.blkio import add_trace, read_trace
from ferry.linux import linux_guest

# (guest name, extra device properties, the fallback's reason)
DISKS = (
    ('vda', 'iommu_platform=on,disable-legacy=on', 'behind a vIOMMU'),
    ('vdb', 'packed=on,disable-legacy=on', 'packed ring negotiated'),
    ('vdc', 'x-vring-engine=off', 'x-vring-engine=off'),
)

SCRIPT = r'''
dd if=/dev/urandom of=/tmp/r bs=1M count=16 2>/dev/null
want=$(md5sum < /tmp/r)
for d in vda vdb vdc; do
    dd if=/tmp/r of=/dev/$d bs=1M oflag=direct conv=fsync 2>/dev/null
    got=$(dd if=/dev/$d bs=1M count=16 iflag=direct 2>/dev/null | md5sum)
    [ "$got" = "$want" ] && echo "DISK-OK $d" || echo "DISK-BAD $d"
done
echo ALL-DONE
'''


class VringFallback(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix='ferry-vring-fallback-')
        extra = ['-device', 'intel-iommu', '-object', 'iothread,id=io0']
        for n, (_, props, _) in enumerate(DISKS):
            path = os.path.join(cls.dir, 'disk%d.img' % n)
            with open(path, 'wb') as f:
                f.truncate(32 << 20)
            extra += ['-drive', 'if=none,id=d%d,file=%s,format=raw'
                      % (n, path),
                      '-device', 'virtio-blk-pci,drive=d%d,iothread=io0,%s'
                      % (n, props)]
        cls.guest = linux_guest(SCRIPT, name='vring-fallback',
                                machine=['-machine', 'q35', '-m', '256M'],
                                extra=extra)
        add_trace(cls.guest)
        try:
            cls.guest.launch()
            cls.guest.wait_serial('ALL-DONE', timeout=120)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.guest.shutdown(hard=True)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_disks_work(self):
        out = self.guest.serial()
        for dev, _, _ in DISKS:
            self.assertIn('DISK-OK ' + dev, out, out[-2000:])

    def test_each_fallback_traced_with_its_reason(self):
        """Linux's driver ends on the core's path, for the right reason.
        The firmware (SeaBIOS reads the boot disks) may have run a disk
        on the engine before: it negotiates neither the packed ring nor
        always the IOMMU; what counts is each device's last start."""
        trace = read_trace(self.guest)
        last = {}
        for m in re.finditer(r'virtio_blk_vring_(start|fallback) vblk '
                             r'(\S+?):? (?:nvqs \d+|the virtio core runs '
                             r'the queues: (.*))', trace):
            last[m.group(2)] = m.group(3)
        self.assertEqual(sorted(last.values()),
                         sorted(reason for _, _, reason in DISKS), trace)

if __name__ == '__main__':
    sys.exit(unittest.main())
