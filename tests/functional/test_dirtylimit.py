"""vCPU dirty page rate limit (SPEC section 1), on the KVM dirty ring
and under TCG.

The guest is tests/guests/x86-dirty.S; its rate is measured from its own
progress (the page bytes it increments and its pass counter, read from
guest memory), not from QEMU's counters.  /dev/kvm here is PVM, which
emulates this guest and pushes a dirty-ring entry per write; Ferry must
neither livelock nor lose pages on it.  Under TCG, Ferry counts each
limited vCPU's writes in TCG's write path (softmmu/dirtylimit-tcg.c).
"""

import contextlib
import os
import signal
import statistics
import tempfile
import threading
import time
import unittest

import pytest

from ferry import env, wait
from ferry.machine import dirty_guest, guest_rate, vcpu_rates, wait_migration
from ferry.migrate import (MigrationPairs, check_destination, set_caps,
                           set_params, start_dirty_source)
from ferry.wait import ATTEMPTS, retry_on_noise

KVM = env.kvm_usable()
SKIP_KVM = 'needs a usable /dev/kvm (dirty ring); this host has none'
# Upstream's texts say "requires KVM with accelerator property
# 'dirty-ring-size' set", which is false for Ferry (the dirty bitmap and
# TCG work too), and garble the auto-converge conflict.
QERR_UNSUPPORTED = "dirty page limit requires KVM or multi-threaded TCG"
QERR_CAP_UNSUPPORTED = "dirty-limit requires KVM or multi-threaded TCG"
QERR_CAP_CONFLICT = ("dirty-limit conflicts with auto-converge: enable only "
                     "one of them")
# Seconds from set-vcpu-dirty-limit to the start of the window that must
# hold the quota: every accelerator is within 2 % from the first 0.5 s
# window on (shared-RAM samples, 2026-12-01).
SETTLE = 2


@contextlib.contextmanager
def host_stalls(vm, stall, every):
    """Stop VM's QEMU for STALL seconds at the start of every EVERY, as
    this cloud VM's hypervisor does now and then to all of it (steal
    time); the guest is read from shared RAM meanwhile."""
    done = threading.Event()

    def stall_now_and_then():
        while not done.is_set():
            os.kill(vm.get_pid(), signal.SIGSTOP)
            time.sleep(stall)
            os.kill(vm.get_pid(), signal.SIGCONT)
            done.wait(every - stall)

    thread = threading.Thread(target=stall_now_and_then)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def within(measured, quota):
    """SPEC tolerance: max(5 %, 1 MB/s)."""
    return abs(measured - quota) <= max(0.05 * quota, 1.0)


def high_quota(counted):
    """The high quota a guest dirtying COUNTED MB/s while counted is held
    at: 1000 MB/s where it does at least 1.5 times that, else half its
    counted rate, in steps of 50 MB/s; a quota is only testable well
    below what the guest reaches.  Hosts differ: this guest dirties
    1.1-1.2 GB/s counted on some of the project's machines, 2-3 GB/s on
    others."""
    if counted >= 1500:
        return 1000
    return max(50, int(counted / 2) // 50 * 50)


def median_rate(vm, window, count=3):
    """Median of COUNT consecutive WINDOW-second rates: the free rate
    swings by up to +-20 % from one 0.5 s window to the next."""
    return statistics.median(guest_rate(vm, window) for _ in range(count))


class BootedOnce:
    """unittest mixin: one guest for the whole class, booted by boot()
    (a classmethod that sets cls.vm), reused by every test; a test finds
    it running and without any dirty limit, or gets a fresh one (after
    a test that failed, or one that migrated it away)."""
    vm = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.vm = None       # this class's own, not a base class's
        cls.reboot()

    @classmethod
    def tearDownClass(cls):
        if cls.vm:
            cls.vm.shutdown(hard=True)
            cls.vm = None
        super().tearDownClass()

    @classmethod
    def reboot(cls):
        if cls.vm:
            cls.vm.shutdown(hard=True)
            cls.vm = None
        try:
            cls.boot()
        except BaseException:
            if cls.vm:
                cls.vm.shutdown(hard=True)
                cls.vm = None
            raise

    def setUp(self):
        super().setUp()
        if not self.ready():
            self.reboot()

    def ready(self):
        if not self.vm or not self.vm.is_running():
            return False
        if self.vm.command('query-status')['status'] != 'running':
            return False
        return self.vm.command('query-vcpu-dirty-limit') == []


class DirtyLimitHolds(BootedOnce):
    """Quotas held, cancel, re-convergence, errors and HMP, for any
    accelerator that supports the dirty limit (ACCEL), on one guest."""
    accel = None
    # Shortest window a held rate is measured over, and the window at
    # 10 MB/s (longer quotas' windows scale down to the shortest): a
    # limited vCPU dirties in bursts, whatever it wrote between two
    # harvests.  Measured in 0.5 s windows at 10 MB/s (2026-12-01):
    # 4096-entry ring 0-24 MB/s, dirty bitmap 0-34 MB/s, where 5 s
    # windows read 7.7-11.5 MB/s and 10 s ones 9.96-10.44; 1024-entry
    # ring 7.5-17 MB/s (5 s windows 10.2-10.7).  At 100 MB/s and over
    # every 4 s window is within 2 %.
    window = 4.0
    window_10MBps = 10.0
    # The share of the free rate a vCPU must be back at 1 s after its
    # limit is cancelled (the free rate swings by up to 20 % between two
    # measurements).
    restored_share = 0.7

    @classmethod
    def boot(cls):
        # Every penalty a vCPU serves is traced, so a test can tell that
        # none was served.
        cls.penalties = os.path.join(tempfile.mkdtemp(prefix='ferry-dl-'),
                                     'penalties.log')
        vm = dirty_guest(accel=cls.accel, shared_ram=True, extra=(
            '-trace', 'enable=dirtylimit_vcpu_execute,file=%s'
            % cls.penalties, '-trace', 'enable=dirtylimit_tcg_stop,file=%s'
            % cls.penalties))
        vm.launch()
        cls.vm = vm
        vm.wait_serial('FP', timeout=60)

    def hold_window(self, quota):
        # A burst's share of a window must stay within the tolerance,
        # max(5 %, 1 MB/s): at 10 and 20 MB/s that is the same 1 MB/s.
        return max(self.window, self.window_10MBps / max(0.05 * quota, 1.0))

    def limit(self, rate, **kw):
        self.vm.command('set-vcpu-dirty-limit', dirty_rate=rate, **kw)

    def counted_rate(self, window=1):
        """The guest's rate while its dirty pages are counted (dirty
        logging under KVM, write traps under TCG) but never penalised:
        what a quota is measured against."""
        self.limit(1 << 20)
        rate = median_rate(self.vm, window)
        self.vm.command('cancel-vcpu-dirty-limit')
        return rate

    def check_held(self, quota, note=''):
        time.sleep(SETTLE)
        held = guest_rate(self.vm, self.hold_window(quota))
        info = self.vm.command('query-vcpu-dirty-limit')
        self.assertTrue(within(held, quota), 'quota %d MB/s%s, guest '
                        'dirtied %.2f MB/s' % (quota, note, held))
        self.assertEqual(info[0]['limit-rate'], quota)
        self.assertTrue(abs(info[0]['current-rate'] - quota) <=
                        max(quota * 0.2, 2), info)

    def traced_since(self, offset, event):
        """The trace lines of EVENT written since OFFSET of the log."""
        with open(self.penalties) as f:
            f.seek(offset)
            return [line for line in f if event in line]

    def check_cancel_restores(self, free, quota):
        cancelled = os.path.getsize(self.penalties)
        self.vm.command('cancel-vcpu-dirty-limit')
        time.sleep(1)
        settled = os.path.getsize(self.penalties)
        after = median_rate(self.vm, 0.5)
        self.assertEqual(self.vm.command('query-vcpu-dirty-limit'), [])
        self.assertEqual(self.traced_since(settled, 'dirtylimit_vcpu_execute'),
                         [], 'penalised 1 s after a %d MB/s quota was '
                         'cancelled' % quota)
        if self.accel == 'tcg':
            self.assertTrue(self.traced_since(cancelled, 'dirtylimit_tcg_stop'),
                            'TCG still counts writes after the cancel')
        self.assertGreater(after, free * self.restored_share,
                           'free rate %.0f not restored (%.0f) after a %d '
                           'MB/s quota' % (free, after, quota))

    def check_sweep(self):
        free = median_rate(self.vm, 0.5)
        counted = self.counted_rate(0.5)
        high = high_quota(counted)
        print('%s: free %.0f MB/s, counted %.0f MB/s: high quota %d MB/s'
              % (self.accel, free, counted, high))
        self.limit(high)
        self.check_held(high, ' (counted rate %.0f MB/s)' % counted)
        self.check_cancel_restores(free, high)
        self.limit(100)
        self.check_held(100)
        self.limit(10)                  # a quota change re-converges
        self.check_held(10, ' (changed from 100 MB/s)')
        self.check_cancel_restores(free, 10)

    def test_holds_1000_100_10MBps_and_reconverges_on_change(self):
        """1000 MB/s (or half the counted rate, on a host where the guest
        cannot do 1500 MB/s while counted), 100 MB/s, then 10 MB/s set
        while 100 holds: each held within max(5 %, 1 MB/s) from 2 s
        after it was set; cancel restores the free rate within 1 s, from
        the highest quota and from the lowest."""
        retry_on_noise(self.check_sweep, prepare_retry=self.reboot)

    def check_holds_through_stalls(self, quota):
        with host_stalls(self.vm, 0.04, 0.2):
            self.limit(quota)
            time.sleep(SETTLE)
            held = guest_rate(self.vm, self.hold_window(quota))
        self.vm.command('cancel-vcpu-dirty-limit')
        self.assertTrue(within(held, quota), 'quota %d MB/s, guest dirtied '
                        '%.2f MB/s while QEMU was stopped 40 ms of every 200'
                        % (quota, held))

    def test_holds_100MBps_through_host_stalls(self):
        # A vCPU that can go faster than its quota makes up for the time
        # the host took away, so the average holds: credit for a stall
        # shorter than the burst (100 ms of quota) is kept.  With a 20 ms
        # burst, TCG held 100 MB/s at 91 here (KVM's coarser harvests
        # hid it at 100 MB/s, but held 1000 MB/s at 901).
        retry_on_noise(self.check_holds_through_stalls, 100,
                       prepare_retry=self.reboot)

    def test_bad_arguments_change_nothing(self):
        err = self.vm.qmp('set-vcpu-dirty-limit', cpu_index=1, dirty_rate=10)
        self.assertEqual(err['error']['desc'], 'incorrect cpu index specified')
        err = self.vm.qmp('set-vcpu-dirty-limit', cpu_index=-1, dirty_rate=10)
        self.assertEqual(err['error']['desc'], 'incorrect cpu index specified')
        err = self.vm.qmp('set-vcpu-dirty-limit', dirty_rate=1 << 62)
        self.assertIn('dirty-rate', err['error']['desc'])
        err = self.vm.qmp('set-vcpu-dirty-limit', dirty_rate=-5)
        self.assertIn('error', err)
        err = self.vm.qmp('cancel-vcpu-dirty-limit', cpu_index=7)
        self.assertEqual(err['error']['desc'], 'incorrect cpu index specified')
        self.assertEqual(self.vm.command('query-vcpu-dirty-limit'), [])
        self.assertGreater(guest_rate(self.vm, 1), 100)

    def test_vcpu_below_its_quota_is_not_penalised(self):
        # The host's load swings: with other builds running (load 8 on
        # two cores) a 1024-entry-ring guest counted at 1453 MB/s ran at
        # 232 MB/s under the quota, with no penalty served, and at full
        # speed again when counted once more.
        retry_on_noise(self.check_not_penalised, prepare_retry=self.reboot)

    def check_not_penalised(self):
        # A quota well above what the vCPU dirties (while counted) must
        # never make it sleep: no penalty in the trace, and no loss of
        # speed beyond host noise.  Four times, as this shared host's
        # speed has been seen to change by 1.85x within two minutes.
        counted = self.counted_rate()
        quota = int(4 * counted) + 1
        start = os.path.getsize(self.penalties)
        self.limit(quota)
        time.sleep(0.5)
        limited = median_rate(self.vm, 1)
        with open(self.penalties) as f:
            f.seek(start)
            served = [l for l in f if 'dirtylimit_vcpu_execute' in l]
        self.assertEqual(served, [], 'penalised under a %d MB/s quota while '
                         'dirtying %.0f MB/s' % (quota, limited))
        self.vm.command('cancel-vcpu-dirty-limit')
        # The host's speed can drop between the two measurements (e.g.
        # 3321 MB/s counted, then 2071 limited, with no penalty served):
        # measure the counted rate again and compare with the slower one.
        if limited <= 0.7 * counted:
            counted = min(counted, self.counted_rate())
        self.assertGreater(limited, 0.7 * counted)

    def test_hmp_commands(self):
        hmp = lambda cmd: self.vm.command('human-monitor-command',
                                          command_line=cmd)
        self.assertIn('not enabled', hmp('info vcpu_dirty_limit'))
        hmp('set_vcpu_dirty_limit 50')
        self.assertRegex(hmp('info vcpu_dirty_limit'),
                         r'vcpu\[0\], limit rate 50 \(MB/s\), current rate \d+')
        hmp('cancel_vcpu_dirty_limit 0')
        self.assertIn('not enabled', hmp('info vcpu_dirty_limit'))


class TwoVcpusChecks(BootedOnce):
    """A limit on one vCPU leaves the other alone (x86-dirty-smp.img)."""
    accel = None
    # How close vCPU 1 must be held to its quota, relative (SPEC: 5 %).
    vcpu1_tolerance = 0.05
    # Whether vCPU 0 carries a limit it never reaches throughout, so that
    # both phases count its pages alike, or none at all.
    vcpu0_limited = True
    # Seconds of each of the three free and three held windows.  vCPU 1
    # held at 10 or 100 MB/s averages within 3 % over any 2 s (0.5 s
    # windows read 8.3-11.7 and 83-126 MB/s on the ring, 2026-12-01);
    # vCPU 0, free, swings by 3x from one 0.5 s to the next, which the
    # medians absorb.
    window = 2.0

    @classmethod
    def boot(cls):
        vm = dirty_guest('x86-dirty-smp.img', accel=cls.accel,
                         shared_ram=True)
        vm.launch()
        cls.vm = vm
        vm.wait_serial('Q', timeout=60)

    # Tries of each check: a known defect (xfail) is not the host's noise.
    attempts = ATTEMPTS

    def test_10_and_100MBps_on_vcpu1_spare_vcpu0(self):
        retry_on_noise(self.check_spares, (10, 100),
                       prepare_retry=self.reboot, attempts=self.attempts)

    def check_spares(self, quotas):
        # vCPU 1 alternates between no limit (or, with vcpu0_limited, a
        # quota it cannot reach, so that dirty logging and harvesting are
        # alike in all phases) and each quota in turn; medians of three
        # windows each absorb host noise.
        vm = self.vm
        expect = {0: 1 << 20} if self.vcpu0_limited else {}
        if self.vcpu0_limited:
            vm.command('set-vcpu-dirty-limit', dirty_rate=1 << 20)
        free, held = [], {quota: [] for quota in quotas}
        for _ in range(3):
            if self.vcpu0_limited:
                vm.command('set-vcpu-dirty-limit', cpu_index=1,
                           dirty_rate=1 << 20)
            else:
                vm.command('cancel-vcpu-dirty-limit', cpu_index=1)
            time.sleep(self.window / 4)
            free.append(vcpu_rates(vm, self.window))
            for quota in quotas:
                vm.command('set-vcpu-dirty-limit', cpu_index=1,
                           dirty_rate=quota)
                time.sleep(self.window / 2)
                held[quota].append(vcpu_rates(vm, self.window))
                limits = {l['cpu-index']: l['limit-rate']
                          for l in vm.command('query-vcpu-dirty-limit')}
                self.assertEqual(limits, {**expect, 1: quota})
        vm.command('cancel-vcpu-dirty-limit')
        free0 = statistics.median(r[0] for r in free)
        free1 = statistics.median(r[1] for r in free)
        for quota in quotas:
            cpu0 = statistics.median(r[0] for r in held[quota])
            # vCPU 1's accuracy is its average over all the time it was
            # held, as SPEC measures it: at 10 MB/s it dirties in batches
            # of a few MB (whatever it writes between two harvests), so
            # one window may hold a batch more or less than the next.
            cpu1 = statistics.fmean(r[1] for r in held[quota])
            self.assertTrue(abs(cpu1 - quota) <=
                            max(self.vcpu1_tolerance * quota, 1.0),
                            'quota %d MB/s: vCPU 1 dirtied %.2f MB/s (free '
                            '%.0f, vCPU 0 %.0f -> %.0f)'
                            % (quota, cpu1, free1, free0, cpu0))
            self.assertGreater(free1, 3 * quota)
            # Both vCPUs share this machine's two cores with the rest of
            # the test run, so vCPU 0 speeds up when vCPU 1 sleeps; what
            # must hold is that limiting vCPU 1 never slows vCPU 0.
            self.assertGreater(cpu0, 0.95 * free0,
                               'vCPU 0: %.0f MB/s before, %.0f MB/s with '
                               'vCPU 1 limited to %d MB/s'
                               % (free0, cpu0, quota))


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitTwoVcpusKvm(TwoVcpusChecks, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'


# 1024-entry rings fill in under 3 ms at this guest's speed, so a late
# harvest lets the PVM emulator overrun them.  Unless the overrun
# recovery resyncs such a ring's stuck reset index, an unlimited vCPU 0
# exits ring-full once per lap (400-600 times a second) whenever vCPU 1
# is held, and loses 7-13 % of its speed.
@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitTwoVcpusKvmSmallRing(TwoVcpusChecks, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=1024'


# Known defect: the dirty log does not say which vCPU dirtied
# a page; Ferry shares it by the vCPUs' CPU time, which over-charges a
# throttled vCPU on PVM (it pays for re-entering the guest): 100 MB/s is
# usually held at 90-91, and on a busy host the free vCPU 0 has been seen
# to lose 13% while vCPU 1 was held.  Run and reported, not yet required.
@unittest.skipUnless(KVM, SKIP_KVM)
@pytest.mark.xfail(strict=False, reason='on the KVM dirty bitmap, the '
                   'CPU-time share of a harvest misattributes pages '
                   'between the two vCPUs on a busy host')
class DirtyLimitTwoVcpusKvmBitmap(TwoVcpusChecks, unittest.TestCase):
    accel = 'kvm'
    vcpu1_tolerance = 0.15
    attempts = 1


class DirtyLimitTwoVcpusTcg(TwoVcpusChecks, unittest.TestCase):
    """Under TCG only limited vCPUs' writes are counted, so an unlimited
    vCPU 0 runs the same code whether vCPU 1 is limited or not."""
    accel = 'tcg'
    vcpu0_limited = False


class DirtyLimitTwoVcpusTcgBothLimited(TwoVcpusChecks, unittest.TestCase):
    """vCPU 0 limited too, at a rate it cannot reach: its writes are
    counted in both phases."""
    accel = 'tcg'


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitKvm(DirtyLimitHolds, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitKvmBitmap(DirtyLimitHolds, unittest.TestCase):
    """KVM without a dirty ring: the VM's dirty log, shared by CPU time."""
    accel = 'kvm'


class DirtyLimitTcg(DirtyLimitHolds, unittest.TestCase):
    """Without a dirty ring: TCG counts the writes (one vCPU, MTTCG)."""
    accel = 'tcg'
    # TCG charges every write as it happens: 10, 100 and 1000 MB/s read
    # 10.0, 100.0 (+-0.4) and 1000 (+-4) in every 0.5 s window.
    window, window_10MBps = 2.0, 5.0
    # An unlimited TCG vCPU runs this guest at one of two speeds, a factor
    # of 2 apart, and stays at one for seconds: its rate is bound by TLB
    # fills (tlb_set_page_full ~30 % of its thread), and TCG resizes the
    # TLB at flushes.  Measured 2026-12-08: free 31.6 or 64 GB/s, never
    # limited, and each set/cancel cycle of a 1000 MB/s quota lands on
    # either (10 cycles: 4 at 0.56x, 6 at 1.0x, each stable for 2 s).
    # That the limit is gone is shown by no penalty and the end of the
    # counting (both traced); the rate then only has to be the free one
    # in either mode.
    restored_share = 0.35


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitKvmSmallRing(DirtyLimitKvm):
    """A 1024-entry ring fills within 1.5 ms here, so its vCPU exits
    KVM_EXIT_DIRTY_RING_FULL often; those exits must not wait for the
    BQL that each of this test's memory reads holds."""
    accel = 'kvm,dirty-ring-size=1024'
    window_10MBps = 5.0


class DirtyLimitErrors(unittest.TestCase):
    def check_unsupported(self, accel):
        vm = dirty_guest('x86-dirty-32m.img', accel=accel)
        vm.launch()
        self.addCleanup(vm.shutdown)
        err = vm.qmp('set-vcpu-dirty-limit', dirty_rate=10)
        self.assertEqual(err['error']['desc'], QERR_UNSUPPORTED)
        err = vm.qmp('migrate-set-capabilities', capabilities=[
            {'capability': 'dirty-limit', 'state': True}])
        self.assertEqual(err['error']['desc'], QERR_CAP_UNSUPPORTED)
        err = vm.qmp('migrate-set-capabilities', capabilities=[
            {'capability': 'dirty-limit', 'state': True},
            {'capability': 'auto-converge', 'state': True}])
        self.assertEqual(err['error']['desc'], QERR_CAP_CONFLICT)
        self.assertEqual(vm.command('query-vcpu-dirty-limit'), [])

    def test_no_vcpu_execution_reports_what_is_required(self):
        self.check_unsupported('qtest')

    def test_single_threaded_tcg_is_refused(self):
        vm = dirty_guest('x86-dirty-32m.img', accel='tcg,thread=single')
        vm.launch()
        self.addCleanup(vm.shutdown)
        err = vm.qmp('set-vcpu-dirty-limit', dirty_rate=10)
        self.assertIn('thread=multi', err['error']['desc'])
        self.assertEqual(vm.command('query-vcpu-dirty-limit'), [])

    def test_parameters_validated(self):
        vm = dirty_guest('x86-dirty-32m.img')
        vm.launch()
        self.addCleanup(vm.shutdown)
        params = vm.command('query-migrate-parameters')
        self.assertEqual(params['vcpu-dirty-limit'], 1)
        self.assertEqual(params['x-vcpu-dirty-limit-period'], 1000)
        for bad in ({'vcpu-dirty-limit': 0},
                    {'x-vcpu-dirty-limit-period': 0},
                    {'x-vcpu-dirty-limit-period': 1001}):
            err = vm.qmp('migrate-set-parameters', **bad)
            self.assertIn('expects', err['error']['desc'], bad)
        vm.command('migrate-set-parameters', **{'vcpu-dirty-limit': 10,
                                                'x-vcpu-dirty-limit-period': 200})
        params = vm.command('query-migrate-parameters')
        self.assertEqual(params['vcpu-dirty-limit'], 10)
        self.assertEqual(params['x-vcpu-dirty-limit-period'], 200)


class MigrationChecks(BootedOnce, MigrationPairs):
    """A guest dirtying faster than the link converges only when
    throttled; whether the migration completes, is cancelled or fails,
    no limit is left behind.  One source for the class, migrated to a
    fresh destination by each test (and rebooted after it migrated)."""
    accel = None
    hard_shutdown = True
    # The link the guest outruns (it dirties 1-3 GB/s here).
    LINK = 16 << 20
    # The cancel and failure checks only need the limit acting: over a
    # faster link it engages after 2-3 s instead of 10-12, and a 1 ms
    # downtime limit keeps the limited migration from converging before
    # the test cancels or breaks it.
    ENGAGE_LINK = 128 << 20

    @classmethod
    def boot(cls):
        cls.vm = start_dirty_source(accel=cls.accel, shared_ram=True)

    def test_converges_with_dirty_limit_and_releases_limits(self):
        src = self.vm
        dst = self.destination(src)
        set_params(src, max_bandwidth=self.LINK, downtime_limit=300)
        set_caps(src, dirty_limit=True)
        set_params(src, vcpu_dirty_limit=2, x_vcpu_dirty_limit_period=200)
        src.command('migrate', uri=dst.uri)
        seen = []

        def ended():
            info = src.command('query-migrate')
            if 'dirty-limit-throttle-time-per-round' in info:
                seen.append(info)
            return info if info['status'] in ('completed', 'failed',
                                              'cancelled') else None
        info = wait.until(ended, 120, lambda: 'migration did not end: %s'
                          % src.command('query-migrate'))
        self.assertEqual(info['status'], 'completed', info)
        self.assertTrue(seen, 'dirty limit never reported acting')
        self.assertIn('dirty-limit-ring-full-time', seen[-1])
        self.assertEqual(src.command('query-vcpu-dirty-limit'), [])
        check_destination(self, src, dst)

    def migrate_until_limited(self):
        """Start a dirty-limited migration; return once it limits."""
        src = self.vm
        dst = self.destination(src)
        set_params(src, max_bandwidth=self.ENGAGE_LINK, downtime_limit=1)
        set_caps(src, dirty_limit=True)
        set_params(src, vcpu_dirty_limit=5, x_vcpu_dirty_limit_period=1000)
        src.command('migrate', uri=dst.uri)
        wait.until(lambda: src.command('query-vcpu-dirty-limit'), 90,
                   lambda: 'limit never engaged: %s'
                   % src.command('query-migrate'), interval=0.2)
        return src, dst

    def test_cancel_releases_limits_and_source_runs_free(self):
        src, dst = self.migrate_until_limited()
        err = src.qmp('cancel-vcpu-dirty-limit')
        self.assertIn('migration is running', err['error']['desc'])
        src.command('migrate_cancel')
        self.assertEqual(wait_migration(src)['status'], 'cancelled')
        self.assertEqual(src.command('query-vcpu-dirty-limit'), [])
        self.assertGreater(guest_rate(src, 1), 100)

    def test_failure_releases_limits_and_source_runs_free(self):
        src, dst = self.migrate_until_limited()
        dst.kill()
        self.assertEqual(wait_migration(src, timeout=60)['status'], 'failed')
        self.assertEqual(src.command('query-vcpu-dirty-limit'), [])
        self.assertEqual(src.command('query-status')['status'], 'running')
        self.assertGreater(guest_rate(src, 1), 100)

@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitMigrationKvm(MigrationChecks, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'


# 1024-entry rings overrun on PVM whenever a harvest comes late: the
# destination's memory checks that the recovery loses no page.
@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitMigrationKvmSmallRing(MigrationChecks, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=1024'


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimitMigrationKvmBitmap(MigrationChecks, unittest.TestCase):
    accel = 'kvm'


class DirtyLimitMigrationTcg(MigrationChecks, unittest.TestCase):
    accel = 'tcg'


MIGRATION_ACCELS = [c.accel for c in (
    DirtyLimitMigrationKvm, DirtyLimitMigrationKvmSmallRing,
    DirtyLimitMigrationKvmBitmap, DirtyLimitMigrationTcg)]


class DirtyLimitMigrationUnthrottled(MigrationPairs, unittest.TestCase):
    """The premise of MigrationChecks: without throttling, the guest does
    not converge over the same link, on any accelerator.  No rate is
    measured here, so the accelerators' migrations run side by side over
    the same 30 s; sharing the two cores slows their guests, which could
    only help a migration converge."""
    hard_shutdown = True

    def test_without_throttling_never_converges(self):
        accels = [a for a in MIGRATION_ACCELS if KVM or 'kvm' not in a]
        sources = [dirty_guest(accel=accel) for accel in accels]
        for src in sources:         # booted side by side
            self.vms.append(src)
            src.launch()
        for src in sources:
            src.wait_serial('FP', timeout=60)
        pairs = [(src, self.destination(src)) for src in sources]
        for src, dst in pairs:
            set_params(src, max_bandwidth=MigrationChecks.LINK,
                       downtime_limit=300)
            src.command('migrate', uri=dst.uri)
        time.sleep(30)
        for accel, (src, dst) in zip(accels, pairs):
            info = src.command('query-migrate')
            self.assertEqual(info['status'], 'active', (accel, info))
            self.assertGreaterEqual(info['ram']['dirty-sync-count'], 3,
                                    (accel, info))
        for accel, (src, dst) in zip(accels, pairs):
            src.command('migrate_cancel')
            self.assertEqual(wait_migration(src)['status'], 'cancelled',
                             accel)


if __name__ == '__main__':
    unittest.main()
