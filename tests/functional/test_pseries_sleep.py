"""A pseries guest sleeping in the kernel wakes up after a TCG migration.

/test.sh prints "TICK <n>" after every "sleep 1", so between ticks the
vCPU is idle in H_CEDE and only a decrementer interrupt wakes it.  7.2
neither migrates the TCG decrementer nor re-arms its timer on the
destination, so there the guest sleeps for ever (stock to stock too);
Ferry's patch "target/ppc: re-arm the decrementer after a TCG migration"
re-arms it in the CPU's post_load, from the value a Ferry source puts in
the stream's spr[SPR_DECR] slot or, from a stock source (whose slot
reads 0), at once.  One guest boots on stock QEMU and goes stock ->
Ferry -> Ferry; after each migration the destination must go on ticking
where the source stopped.

Ferry -> stock still hangs: the fix is on the load side and stock's
post_load never re-arms the timer.  That direction is not tested here
(test_htab_migration.py migrates busy guests, whose next mtdec
re-arms the timer).
"""

import re
import unittest

from ferry import env, wait
from ferry.linux import linux_guest
from ferry.machine import incoming, wait_migration
from ferry.migrate import FAST_LINK, set_params

SCRIPT = ('echo READY\n'
          'i=0\n'
          'while true; do\n'
          '    sleep 1\n'
          '    i=$((i + 1))\n'
          '    echo "TICK $i"\n'
          'done\n')

TICK = re.compile(r'TICK (\d+)')


def ticks(guest):
    return [int(n) for n in TICK.findall(guest.serial())]


@unittest.skipUnless(env.stock_binary('ppc64'),
                     "Debian's qemu-system-ppc is not installed")
class PseriesSleep(unittest.TestCase):
    def migrate(self, src, flavour):
        """Migrate SRC to a new FLAVOUR destination; it must print three
        more ticks that continue SRC's count."""
        dst = incoming(src, flavour=flavour, name='dst-' + flavour)
        dst.launch()
        self.addCleanup(dst.shutdown)
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=1000)
        src.command('migrate', uri=dst.uri)
        info = wait_migration(src, timeout=60)
        self.assertEqual(info['status'], 'completed', info)
        last = ticks(src)[-1]
        # 1 s sleeps: three ticks in 15 s, or the guest did not wake.
        after = wait.until(lambda: len(ticks(dst)) >= 3 and ticks(dst), 15,
                           lambda: '%s -> %s: the destination printed %s '
                           'after the source\'s TICK %d; serial:\n%s'
                           % (src.flavour, flavour, ticks(dst), last,
                              dst.serial()[-500:]))
        self.assertLessEqual(after[0], last + 1)
        self.assertEqual(after, list(range(after[0], after[0] + len(after))))
        return dst

    def test_stock_to_ferry_to_ferry(self):
        src = linux_guest(SCRIPT, target='ppc64', flavour='stock', name='src')
        src.launch()
        self.addCleanup(src.shutdown)
        src.wait_serial('TICK 2', timeout=120)
        mid = self.migrate(src, 'ferry')
        self.migrate(mid, 'ferry')


if __name__ == '__main__':
    unittest.main()
