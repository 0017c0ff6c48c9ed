"""The dirty limit engages within the first pass of a migration
(softmmu/dirtylimit-migration.c), at a quota derived from the link and
the downtime limit, and the busy guest is migrated in little more than
one pass over its non-zero pages at link speed.

The guest is tests/guests/x86-dirty.S (100 MiB rewritten at ~1 GB/s or
more); its RAM is shared, so the non-zero pages the first pass must send
are counted before the migration starts.  Every migration's destination
RAM is checked byte for byte.
"""

import time
import unittest

from ferry import env, wait
from ferry.migrate import MigrationPairs, check_destination, set_caps, set_params
from ferry.machine import nonzero_bytes, wait_migration

MiB = 1 << 20
SKIP_KVM = 'needs a usable /dev/kvm; this host has none'


class EarlyLimitChecks(MigrationPairs):
    accel = None
    hard_shutdown = True

    def migrate_watching(self, mem, link, downtime, **params):
        """Migrate a busy MEM guest over a LINK bytes/s link; return
        (one pass over its non-zero pages in s, query-migrate at the end,
        the first vCPU limits seen, query-migrate when they were seen,
        the seconds they took to appear)."""
        src, dst = self.pair(accel=self.accel, mem=mem, shared_ram=True)
        one_pass = nonzero_bytes(src) / link
        set_caps(src, dirty_limit=True)
        set_params(src, max_bandwidth=link, downtime_limit=downtime, **params)
        t0 = time.monotonic()
        src.command('migrate', uri=dst.uri)
        seen = {}

        def limited():
            info = src.command('query-migrate')
            limits = src.command('query-vcpu-dirty-limit')
            if limits and 'ram' in info:
                seen.update(limits=limits, info=info,
                            after=time.monotonic() - t0)
            return seen or info['status'] in ('completed', 'failed')

        wait.until(limited, 60, 'the dirty limit never engaged', 0.02)
        self.assertIn('limits', seen, 'migration ended unlimited')
        final = wait_migration(src, timeout=120)
        self.assertEqual(final['status'], 'completed', final)
        self.assertEqual(src.command('query-vcpu-dirty-limit'), [])
        check_destination(self, src, dst)
        return one_pass, final, seen['limits'], seen['info'], seen['after']

    def check_engaged_early(self, one_pass, info, after):
        # Engaged a few hundred ms in, with a tenth of the pass sent:
        # the plan's own bitmap sync makes it the second dirty sync.
        self.assertLess(after, max(1.0, one_pass / 4), info)
        self.assertLessEqual(info['ram']['dirty-sync-count'], 2, info)

    def test_demo_case_within_1_5_passes(self):
        """150 MiB guest, 16 MiB/s link, 500 ms downtime (make demo).
        A slow phase of the shared host once made it 2.15 passes: up to
        three tries, each with fresh guests (the destination of a try
        goes on dirtying memory, which would slow the next one)."""
        wait.retry_on_noise(self.check_demo_case,
                            prepare_retry=self.stop_guests)

    def stop_guests(self):
        for vm in self.vms:
            vm.shutdown(hard=True)
        self.vms = []

    def check_demo_case(self):
        link = 16 * MiB
        one_pass, final, limits, info, after = self.migrate_watching(
            '150M', link, 500)
        self.check_engaged_early(one_pass, info, after)
        # The quota is the plan's: a quarter of the link (4 MB/s, less
        # if the link measured slower), not the 1 MB/s default.
        self.assertTrue(all(1 < l['limit-rate'] <= link / 4 / MiB
                            for l in limits), limits)
        ratio = final['total-time'] / 1000 / one_pass
        print('demo case: %.2f s = %.2fx one pass (%.2f s), limited after '
              '%.2f s at %d MB/s' % (final['total-time'] / 1000, ratio,
                                     one_pass, after, limits[0]['limit-rate']))
        self.assertLessEqual(ratio, 1.5, final)

    def test_256MiB_over_100MiBps_within_2_passes(self):
        """A 256 MiB guest over a 100 MiB/s link, 300 ms downtime: the
        first pass is about a second, so the 200 ms of measuring weigh.
        At that scale a slow second of the shared host shows: CI once
        measured 2.13 s for a 0.99 s pass (6 dirty syncs).  Up to three
        tries, as for the demo case."""
        wait.retry_on_noise(self.check_256MiB_case,
                            prepare_retry=self.stop_guests)

    def check_256MiB_case(self):
        one_pass, final, limits, info, after = self.migrate_watching(
            '256M', 100 * MiB, 300)
        ratio = final['total-time'] / 1000 / one_pass
        print('256 MiB: %.2f s = %.2fx one pass (%.2f s), limited after '
              '%.2f s at %d MB/s' % (final['total-time'] / 1000, ratio,
                                     one_pass, after, limits[0]['limit-rate']))
        self.assertLessEqual(info['ram']['dirty-sync-count'], 2, info)
        self.assertLessEqual(ratio, 2.0, final)

    def test_vcpu_dirty_limit_overrides_the_plan(self):
        """An explicit vcpu-dirty-limit is the quota; still engaged early."""
        one_pass, final, limits, info, after = self.migrate_watching(
            '150M', 16 * MiB, 500, vcpu_dirty_limit=2)
        self.check_engaged_early(one_pass, info, after)
        self.assertEqual([l['limit-rate'] for l in limits], [2], limits)


class EarlyLimitTcg(EarlyLimitChecks, unittest.TestCase):
    accel = 'tcg'


@unittest.skipUnless(env.kvm_usable(), SKIP_KVM)
class EarlyLimitKvm(EarlyLimitChecks, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'


@unittest.skipUnless(env.kvm_usable(), SKIP_KVM)
class EarlyLimitKvmBitmap(EarlyLimitChecks, unittest.TestCase):
    accel = 'kvm'


if __name__ == '__main__':
    unittest.main()
