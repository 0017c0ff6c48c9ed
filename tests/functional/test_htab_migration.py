"""pseries guests migrate with their hash page table (SPEC section 5).

A Debian ppc64el kernel uses the hash MMU on a POWER8 CPU, its hash page
table (HTAB) living outside guest RAM and migrated in the spapr/htab
section; on the default CPU it uses radix and the section carries only
the "no HPT" header.  Both guests keep 16 MiB of random data in RAM and
check its digest in a loop (ferry.linux.data_check_script()); the hash
guest also keeps creating, changing and removing mappings, so HPTEs, in
the background (ferry.htab.workload_script()).

- Both MMU modes migrate from Debian's stock QEMU 7.2 to Ferry and from
  Ferry to stock, and the guest runs on with its data intact, its ticks
  continuing the source's count (this replaced test_pseries_migration.py,
  which did so for radix only).  Stock sends a paused guest: a live
  stock source under TCG loses guest writes (see interop()).
- Between two Ferry processes, over a slow link for several iterations,
  the destination's HTAB at switchover equals the source's
  (x-spapr-htab-dump on the stopped source and on the destination
  started with -S, before it runs), then the guest runs on.  The same
  with a system_reset of the source during the migration (it boots again
  while RAM's first pass is under way), and with the guest resizing its
  HPT during the migration (resize-hpt; if Ferry refuses the migration
  while a resize is pending, it must say so and the source run on).
- Ferry -> stock (paused) -> Ferry (paused) gives back the same HTAB: no
  entry is lost or changed through stock's loader and saver.

RadixInterop and HashMigration each boot one guest and hand it on from
test to test: their numbered tests run in that order, each migrating
the guest and keeping the destination, once checked, for the next.  A
test run alone, or after one that left no running guest, boots its own.
HashResize boots a fresh guest: its kernel sleeps between resize
requests, and a sleep in a TCG pseries guest may never end after a
migration (7.2's, stock -> stock too), so the resizing source must not
have been migrated before.  The file takes about two minutes on an idle
2-core host.
"""

import unittest

from ferry import env, htab, wait
from ferry.linux import (data_check_script, incoming_pseries, pseries_guest,
                         send, ticks, wait_ticks)
from ferry.machine import wait_migration, wait_running
from ferry.migrate import FAST_LINK, set_params, wait_loaded

BOOT_TIMEOUT = 240
# A slow link and a 1 ms downtime limit: the migration iterates, until
# the test opens the link (open_link()) or the guest has a quiet moment
# (under TCG it has them: its vCPU shares two host cores with both
# QEMUs' other threads, and a 1 ms switchover is 24 KiB on this link).
SLOW_LINK = 24 << 20
TIGHT_DOWNTIME = 1
ITERATIONS = 4      # dirty-sync-count before the link is opened
# The reset test's link: the first pass takes a few seconds longer than
# the guest needs to boot again.
RESET_LINK = 8 << 20

SKIP_STOCK = "Debian's qemu-system-ppc is not installed"


def guest_ok(guest):
    """True when GUEST is running and has printed no bad tick."""
    try:
        return (guest.is_running()
                and guest.command('query-status')['status'] == 'running'
                and all(state == 'ok' for _, state in ticks(guest)))
    except Exception:       # QMP gone: the guest is of no further use
        return False


class PseriesMigration:
    """unittest mixin: one pseries guest (MMU, MACHINE_OPTS) handed on
    from test to test in self.guest (class-wide), and the migrations and
    checks the tests are made of.  Every VM a test starts other than the
    one it hands on is shut down after it."""
    mmu = None
    machine_opts = ()
    control = False
    script = None
    guest = None

    @classmethod
    def tearDownClass(cls):
        if cls.guest is not None:
            cls.guest.shutdown(hard=True)
            cls.guest = None

    def setUp(self):
        self.vms = []

    def tearDown(self):
        for vm in self.vms:
            if vm is not type(self).guest:
                vm.shutdown(hard=True)

    def running_guest(self, flavour):
        """The class's guest, on FLAVOUR's QEMU, booted if there is none
        there that runs with its data intact."""
        cls = type(self)
        if cls.guest is not None and (cls.guest.flavour != flavour
                                      or not guest_ok(cls.guest)):
            cls.guest.shutdown(hard=True)
            cls.guest = None
        if cls.guest is None:
            g = pseries_guest(self.script, mmu=self.mmu, flavour=flavour,
                              name='%s-%s' % (self.mmu, flavour),
                              machine_opts=self.machine_opts,
                              control=self.control, reboot=True)
            self.vms.append(g)
            g.launch()
            g.wait_serial('TICK 3 ok', timeout=BOOT_TIMEOUT)
            cls.guest = g
        return cls.guest

    def hand_on(self, dst):
        """DST, checked, carries the guest into the next test."""
        cls = type(self)
        old, cls.guest = cls.guest, dst
        if old is not None and old is not dst:
            old.shutdown(hard=True)

    def destination(self, src, flavour='ferry', paused=False):
        dst = incoming_pseries(src, flavour=flavour, name='%s-%s-dst'
                               % (self.mmu, flavour), paused=paused)
        self.vms.append(dst)
        dst.launch()
        return dst

    def migrate(self, src, dst, timeout=180):
        """Migrate SRC to DST over the loopback link; the completed
        query-migrate."""
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=1000)
        src.command('migrate', uri=dst.uri)
        info = wait_migration(src, timeout=timeout)
        self.assertEqual(info['status'], 'completed', info)
        return info

    def slow_migration(self, src, dst, link=SLOW_LINK):
        """Migrate SRC to DST over LINK with a 1 ms downtime limit, until
        ITERATIONS dirty syncs or completion, then over the loopback
        link; the last query-migrate, after several iterations."""
        set_params(src, max_bandwidth=link, downtime_limit=TIGHT_DOWNTIME)
        src.command('migrate', uri=dst.uri)
        self.wait_iterations(src, ITERATIONS, or_end=True)
        info = self.open_link(src)
        if info['status'] == 'completed':
            self.assertGreaterEqual(info['ram']['dirty-sync-count'], 3, info)
        return info

    def wait_iterations(self, src, count, timeout=120, or_end=False):
        def synced():
            info = src.command('query-migrate')
            if info.get('status') == 'setup':
                return None
            if info.get('status') != 'active':
                if or_end:
                    return info
                raise AssertionError('migration ended early: %s' % info)
            return info['ram']['dirty-sync-count'] >= count and info
        return wait.until(synced, timeout, lambda: 'migration did not reach '
                          '%d iterations: %s' % (count,
                                                 src.command('query-migrate')))

    def open_link(self, src, timeout=180):
        """Let SRC's migration converge; its last query-migrate."""
        set_params(src, max_bandwidth=FAST_LINK, downtime_limit=1000)
        return wait_migration(src, timeout=timeout)

    def check_runs_on(self, src, dst):
        """After a completed migration SRC -> DST (continued if it was
        paused): the guest runs on DST without rebooting, printing ticks
        that continue SRC's count, all with its data intact."""
        if dst.command('query-status')['status'] != 'running':
            wait_loaded(dst)
            dst.command('cont')
        wait_running(dst)
        last_src = ticks(src)[-1][0]
        after = wait_ticks(dst, 3, timeout=90)
        log = dst.serial()[-2000:]
        self.assertTrue(all(state == 'ok' for _, state in ticks(src)),
                        'guest data corrupted on the source:\n'
                        + src.serial()[-2000:])
        self.assertTrue(all(state == 'ok' for _, state in after),
                        'guest data corrupted on the destination:\n' + log)
        self.assertNotIn('FERRY-GUEST-UP', dst.serial(),
                         'the guest rebooted on the destination:\n' + log)
        self.assertLessEqual(after[0][0], last_src + 1, log)
        self.assertEqual([n for n, _ in after],
                         list(range(after[0][0], after[0][0] + len(after))),
                         log)

    def check_htab_at_switchover(self, src, dst):
        """SRC completed its migration to DST (started with -S, not yet
        continued): SRC's hash page table equals DST's; both dumps."""
        self.assertEqual(src.command('query-migrate')['status'], 'completed')
        self.assertEqual(src.command('query-status')['status'], 'postmigrate')
        wait_loaded(dst)
        self.assertEqual(dst.command('query-status')['status'], 'paused')
        before, after = htab.dump(src), htab.dump(dst)
        self.assertIsNone(htab.compare(before, after),
                          'the destination\'s HTAB is not the source\'s')
        return before, after

    def check_busy_table(self, table):
        """TABLE is the hash guest's: an HPT of a size it uses, with more
        than the kernel's bolted entries in it."""
        self.assertIn(table.shift, htab.RESIZE_ORDERS, table)
        self.assertGreater(len(table.entries), 1000, table)

    def check_source_alive(self, src):
        wait_running(src)
        count = len(ticks(src))
        wait_ticks(src, count + 2, timeout=60)
        self.assertTrue(guest_ok(src), src.serial()[-2000:])

    def interop(self, src_flavour, dst_flavour, check_source=None):
        """Migrate the running guest from SRC_FLAVOUR's QEMU to a running
        DST_FLAVOUR's, check it runs on, and hand it on; CHECK_SOURCE is
        called with the source once the migration completed."""
        src = self.running_guest(src_flavour)
        dst = self.destination(src, dst_flavour)
        if src_flavour == 'stock':
            # Stock 7.2's TCG loses guest writes made after a page was
            # sent or a dirty sync (the bug Ferry's physmem patch fixes,
            # test_tcg_dirty.py): a live stock source corrupts a busy
            # guest's memory now and then (seen: an oops on the Ferry
            # destination).  What this checks is the stream, so stock
            # sends a paused guest; Ferry continues it.
            src.command('stop')
        self.migrate(src, dst)
        if check_source:
            check_source(src)
        self.check_runs_on(src, dst)
        self.hand_on(dst)


@unittest.skipUnless(env.stock_binary('ppc64'), SKIP_STOCK)
class RadixInterop(PseriesMigration, unittest.TestCase):
    """A radix guest, Debian's stock 7.2 -> Ferry -> stock."""
    mmu = 'radix'
    script = data_check_script()

    def test_1_stock_to_ferry(self):
        self.interop('stock', 'ferry')

    def test_2_ferry_to_stock(self):
        self.interop('ferry', 'stock', check_source=self.check_no_htab)

    def check_no_htab(self, src):
        """A radix guest has no hash page table."""
        table = htab.dump(src)
        self.assertEqual((table.shift, table.entries), (0, {}))


@unittest.skipUnless(env.stock_binary('ppc64'), SKIP_STOCK)
class HashMigration(PseriesMigration, unittest.TestCase):
    """A hash guest: stock -> Ferry, two Ferry -> Ferry migrations with
    the HTAB compared at switchover (busy, reset), then Ferry -> stock
    and back."""
    mmu = 'hash'
    script = htab.workload_script()

    def test_1_stock_to_ferry(self):
        self.interop('stock', 'ferry')

    def test_2_iterations_end_with_equal_htab(self):
        src = self.running_guest('ferry')
        dst = self.destination(src, paused=True)
        churn = htab.churn_rounds(src)
        info = self.slow_migration(src, dst)
        self.assertEqual(info['status'], 'completed', info)
        self.assertGreater(htab.churn_rounds(src), churn,
                           'the guest did not churn during the migration')
        table, _ = self.check_htab_at_switchover(src, dst)
        self.check_busy_table(table)
        self.check_runs_on(src, dst)
        self.hand_on(dst)

    def test_3_system_reset_during_migration(self):
        src = self.running_guest('ferry')
        dst = self.destination(src, paused=True)
        set_params(src, max_bandwidth=RESET_LINK,
                   downtime_limit=TIGHT_DOWNTIME)
        src.command('migrate', uri=dst.uri)
        # Reset once the table's first pass is out, mid-way through RAM's.
        wait.until(lambda: src.command('query-migrate').get(
            'ram', {}).get('transferred', 0) > 2 * RESET_LINK, 60,
            lambda: 'migration not under way: %s'
            % src.command('query-migrate'))
        boots = src.serial().count('FERRY-GUEST-UP')
        src.command('system_reset')
        # The guest boots again and fills a fresh table while the
        # migration goes on.
        wait.until(lambda: src.serial().count('FERRY-GUEST-UP') > boots,
                   BOOT_TIMEOUT, 'the source did not reboot')
        wait.until(lambda: 'TICK 2 ok' in src.serial().rsplit(
            'FERRY-GUEST-UP', 1)[1], BOOT_TIMEOUT,
            lambda: 'the source did not run its script again:\n'
            + src.serial()[-2000:])
        info = src.command('query-migrate')
        self.assertEqual(info['status'], 'active',
                         'migration ended before the guest was back:\n%s\n%s'
                         % (info, src.serial()[-2000:]))
        self.wait_iterations(src, info['ram']['dirty-sync-count'] + 1)
        info = self.open_link(src)
        self.assertEqual(info['status'], 'completed', info)
        table, _ = self.check_htab_at_switchover(src, dst)
        self.check_busy_table(table)
        self.check_runs_on(src, dst)
        self.hand_on(dst)

    def test_4_ferry_to_stock_and_back(self):
        # Ferry -> stock, paused: the guest does not run there, so
        # the HTAB Ferry loads back from stock must be the one it sent.
        src = self.running_guest('ferry')
        stock = self.destination(src, 'stock', paused=True)
        self.migrate(src, stock)
        wait_loaded(stock)
        back = self.destination(stock, 'ferry', paused=True)
        self.migrate(stock, back)
        wait_loaded(back)
        sent, returned = htab.dump(src), htab.dump(back)
        self.check_busy_table(sent)
        self.assertIsNone(htab.compare(sent, returned),
                          'HTAB changed on the way through stock 7.2')
        self.check_runs_on(src, back)
        self.hand_on(back)
        # ... and Ferry -> stock with the guest running on stock.
        self.interop('ferry', 'stock')


class HashResize(PseriesMigration, unittest.TestCase):
    """A hash guest resizing its HPT while it migrates between two
    Ferry processes."""
    mmu = 'hash'
    machine_opts = ('resize-hpt=enabled',)
    control = True
    script = htab.workload_script()

    def test_hpt_resize_during_migration(self):
        # A fresh guest: its kernel sleeps between its resize requests,
        # and after a migration a sleep in this TCG guest may never end
        # (7.2's decrementer; stock -> stock too), so the destination is
        # not asked to resize.
        src = self.running_guest('ferry')
        send(src, 'resize on')
        wait.until(lambda: htab.resizes(src)[0] >= 4, 60,
                   lambda: 'the guest does not resize its HPT:\n'
                   + src.serial()[-2000:])
        dst = self.destination(src, paused=True)
        before = htab.resizes(src)
        info = self.slow_migration(src, dst)
        done, failed = htab.resizes(src)
        self.assertGreater(done, before[0],
                           'no resize during the migration:\n'
                           + src.serial()[-2000:])
        self.assertEqual(failed, before[1], 'resizes failed during the '
                         'migration:\n' + src.serial()[-2000:])
        if info['status'] == 'failed':
            # Ferry may refuse a migration while a resize is pending:
            # then it says so, and the source runs on; without resizes
            # the guest migrates.
            self.assertRegex(info.get('error-desc', ''), '(?i)resiz|HPT|hash page table',
                             info)
            self.check_source_alive(src)
            send(src, 'resize off')
            src.wait_serial('RESIZE-OFF', timeout=30)
            dst = self.destination(src, paused=True)
            info = self.slow_migration(src, dst)
        self.assertEqual(info['status'], 'completed', info)
        table, _ = self.check_htab_at_switchover(src, dst)
        self.check_busy_table(table)
        self.check_runs_on(src, dst)


if __name__ == '__main__':
    unittest.main()
