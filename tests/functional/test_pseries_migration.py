"""pseries guests migrate between Ferry and Debian's stock QEMU 7.2 (TCG).

A Debian ppc64el kernel keeps 16 MiB of random data in RAM and checks its
digest in a loop; after migration the destination must go on printing
"ok" ticks that continue the source's count.  The pseries stream includes
the spapr/htab section (a radix guest sends the -1 "no HPT" header).
"""

import unittest

from ferry import env
from ferry.linux import data_check_script, linux_guest, ticks, wait_ticks
from ferry.machine import incoming, wait_migration
from ferry.migrate import FAST_LINK, set_params

SCRIPT = data_check_script()


@unittest.skipUnless(env.stock_binary('ppc64'),
                     "Debian's qemu-system-ppc is not installed")
class PseriesInterop(unittest.TestCase):
    def migrate_between(self, src_flavour, dst_flavour):
        src = linux_guest(SCRIPT, target='ppc64', flavour=src_flavour, name='src')
        src.launch()
        self.addCleanup(src.shutdown)
        src.wait_serial('TICK 3 ok', timeout=240)
        dst = incoming(src, flavour=dst_flavour)
        dst.launch()
        self.addCleanup(dst.shutdown)
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=1000)
        src.command('migrate', uri=dst.uri)
        info = wait_migration(src, timeout=120)
        self.assertEqual(info['status'], 'completed', info)
        last_src = ticks(src)[-1][0]
        after = wait_ticks(dst, 3, timeout=60)
        self.assertTrue(all(state == 'ok' for _, state in ticks(src) + after),
                        'guest data corrupted:\n' + dst.serial()[-1000:])
        self.assertLessEqual(after[0][0], last_src + 1)
        self.assertEqual([n for n, _ in after],
                         list(range(after[0][0], after[0][0] + len(after))))

    def test_ferry_to_stock(self):
        self.migrate_between('ferry', 'stock')

    def test_stock_to_ferry(self):
        self.migrate_between('stock', 'ferry')


if __name__ == '__main__':
    unittest.main()
