"""Migration of a TCG guest loses none of its writes (SPEC section 5).

Under TCG a store to guest RAM is recorded in the dirty bitmaps only
while the page's TLB entry is marked not-dirty; once the page is dirty
for every client TCG drops the mark, and later stores go straight to
memory.  The base's migration sync (the word-at-a-time path of
cpu_physical_memory_sync_dirty_bitmap()) took the migration bits
without putting the mark back, so every later store through a TLB entry
that stayed resident was never recorded and the destination kept the
page as it was when last sent.  Ferry's patch "physmem: re-arm TCG's
dirty tracking when a migration sync takes dirty bits" re-arms it.

The guests (tests/guests/x86-hot.S and ppc64-hot.S) store their pass
number into each of 32 pages in a tight loop, so the pages' TLB entries
stay resident, and into their code's own page, whose stores TCG always
records: that page keeps a correct migration iterating.  The migration
runs over a 1 MiB/s link with a 1 ms downtime limit until SYNCS dirty
syncs have happened (or it ended by itself), then the limit is raised
and it completes.  With the source stopped (postmigrate) and the
destination paused (-S, never continued), the hot pages, and then all
of RAM, must be equal on both sides: a stale page on the destination is
a lost write.  Measured on this 2-core host: against a build without
the patch 10 runs out of 10 failed for both targets (20-32 of the 32
pages stale on the first migration, x86; 22-32, ppc64); with it 10 of
10 passed, in 26-38 s for the file.
"""

import unittest

from ferry import env, wait
from ferry.machine import Guest, incoming, wait_migration
from ferry.migrate import memory_matches, set_params, wait_loaded

PAGE = 4096
HOT_PAGES = 32
# 1 MiB/s x 1 ms is a threshold of about 1 KiB: the one page the guest
# always dirties (its counter) keeps the migration iterating.
LINK = 1 << 20
FAST_LINK = 1 << 30
SYNCS = 6                   # dirty syncs before the switch-over is allowed
ROUNDS = 2                  # migrations per target

GUESTS = {
    # target: (guest arguments, hot-set start, byte order of the values)
    'x86_64': (lambda: ['-machine', 'pc-i440fx-7.2', '-m', '16M', '-drive',
                        'file=%s,format=raw,if=ide,snapshot=on'
                        % env.guest('x86-hot.img')],
               0x108000, 'little'),
    # The Virtual Open Firmware boots the payload in well under a second
    # (SLOF takes 4-10 s here); 256 MiB is pseries' smallest RAM.
    'ppc64': (lambda: ['-machine', 'pseries,x-vof=on', '-m', '256M',
                       '-kernel', env.guest('ppc64-hot.elf')],
              0x1008000, 'big'),
}


class TcgDirtyTracking(unittest.TestCase):
    def setUp(self):
        self.vms = []

    def tearDown(self):
        self.stop_all()

    def stop_all(self):
        while self.vms:
            self.vms.pop().shutdown(hard=True)

    def launch(self, vm):
        self.vms.append(vm)
        vm.launch()
        return vm

    def hot_values(self, vm, start, order):
        data = vm.read_memory(start, HOT_PAGES * PAGE)
        return [int.from_bytes(data[i * PAGE:i * PAGE + 4], order)
                for i in range(HOT_PAGES)]

    def migrate_once(self, target, flavour='ferry'):
        args, start, order = GUESTS[target]
        src = self.launch(Guest(flavour, target, 'src', args=args()))
        wait.until(lambda: self.hot_values(src, start, order)[-1] > 1000, 60,
                   lambda: 'guest not running; serial:\n' + src.serial())
        dst = incoming(src, flavour)
        dst.add_process_args('-S')
        self.launch(dst)
        set_params(src, max_bandwidth=LINK, downtime_limit=1)
        src.command('migrate', uri=dst.uri)

        def iterated():
            info = src.command('query-migrate')
            if info['status'] not in ('setup', 'active'):
                return info
            return info.get('ram', {}).get('dirty-sync-count', 0) >= SYNCS
        wait.until(iterated, 60, lambda: 'no %d dirty syncs: %s'
                   % (SYNCS, src.command('query-migrate')))
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=2000)
        info = wait_migration(src, timeout=60)
        self.assertEqual(info['status'], 'completed', info)
        self.assertEqual(src.command('query-status')['status'], 'postmigrate')
        wait_loaded(dst)
        self.assertEqual(dst.command('query-status')['status'], 'paused')
        want = self.hot_values(src, start, order)
        got = self.hot_values(dst, start, order)
        stale = ['page 0x%x: %d passes behind (%d, source %d)'
                 % (start + i * PAGE, w - g, g, w)
                 for i, (w, g) in enumerate(zip(want, got)) if w != g]
        if stale:
            self.fail('%s: %d of %d hot pages lost writes after '
                      '%d dirty syncs:\n%s'
                      % (target, len(stale), HOT_PAGES,
                         info['ram']['dirty-sync-count'],
                         '\n'.join(stale[:4] + ['...'] * (len(stale) > 4))))
        differs = memory_matches(src, dst)
        self.assertIsNone(differs, '%s: destination RAM differs at 0x%x'
                          % (target, differs or 0))
        self.stop_all()

    def test_x86_64(self):
        for _ in range(ROUNDS):
            self.migrate_once('x86_64')

    def test_ppc64(self):
        for _ in range(ROUNDS):
            self.migrate_once('ppc64')


if __name__ == '__main__':
    unittest.main()
