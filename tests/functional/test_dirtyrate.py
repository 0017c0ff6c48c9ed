"""calc-dirty-rate / query-dirty-rate (SPEC section 1) in every mode
under every accelerator: TCG, KVM with its dirty bitmap (plain
-accel kvm) and KVM with a dirty ring.

Each mode either measures the guest's known dirty rate or refuses with
the base's clear error; none may crash QEMU (under TCG stock 7.2's
dirty-ring and dirty-bitmap modes do).  The guest is
x86-dirty-smp.img, whose two vCPUs each rewrite half of 1..100 MiB in a
loop; its progress is read from its shared RAM during the measurement,
so the expected rate is measured over the same window:
  - dirty-ring counts every page write per vCPU (a ring harvested more
    often than a vCPU comes back to a page), so each vCPU's rate is the
    rate the guest's own counters show;
  - dirty-bitmap and page-sampling see which pages changed during the
    window, so they report the pages the guest wrote at least once
    (here the whole range, as it does many passes a second) per second.
"""

import os
import re
import tempfile
import time
import unittest
import warnings

from ferry import env, wait
from ferry.machine import dirty_guest, vcpu_progress
from ferry.pattern import DIRTY_START

KVM = env.kvm_usable()
SKIP_KVM = 'needs a usable /dev/kvm; this host has none'
CALC_TIME = 2                       # seconds, calc-dirty-rate's window
MARGIN = 0.2                        # seconds of it the guest is not read
MIB = 1 << 20
TOLERANCE = 0.15                    # sane for a 2 s window on a noisy host
QERR_MODE = 'mode %s is not enabled, use other method instead.'
QERR_BITMAP_LIMIT = ("mode dirty-bitmap can't measure while a dirty page "
                     "limit is set, use mode page-sampling instead.")
# Rate checks get this many measurements: on this shared 2-core host
# (load average 8 while other builds ran) one 2 s window in a few came
# out 20 % apart from the guest's own count, in a TCG run that agreed
# within 5 % before and after.  A real error fails every one.
ATTEMPTS = 3


def attempts(check):
    """Run CHECK up to ATTEMPTS times, warning for each failed try."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return check()
        except AssertionError as failure:
            if attempt == ATTEMPTS:
                raise
            warnings.warn('ATTEMPT %d FAILED, measuring again: %s'
                          % (attempt, failure))


def close(measured, expected, tolerance=TOLERANCE):
    return abs(measured - expected) <= max(tolerance * expected, 2.0)


class DirtyRateModes:
    """One guest per accelerator; REFUSED names the modes that must give
    the base's error under it."""
    accel = None
    refused = ()

    @classmethod
    def setUpClass(cls):
        cls.trace = os.path.join(tempfile.mkdtemp(prefix='ferry-dr-'),
                                 'trace.log')
        cls.vm = dirty_guest(image='x86-dirty-smp.img', accel=cls.accel,
                             shared_ram=True, extra=(
                                 '-trace', 'enable=dirtylimit_tcg_st*,file=%s'
                                 % cls.trace))
        cls.vm.launch()
        cls.vm.wait_serial('P', timeout=60)
        cls.half = (cls.vm.dirty_end - DIRTY_START) // 2

    @classmethod
    def tearDownClass(cls):
        cls.vm.shutdown(hard=True)

    def tearDown(self):
        # Whatever a check did, QEMU answers and the guest runs on.
        self.assertEqual(self.vm.command('query-status')['status'],
                         'running')
        before = [vcpu_progress(self.vm, c)[1] for c in (0, 1)]
        time.sleep(0.2)
        after = [vcpu_progress(self.vm, c)[1] for c in (0, 1)]
        self.assertTrue(all(a > b for a, b in zip(after, before)),
                        'a vCPU stopped dirtying: %s -> %s' % (before, after))

    def measure(self, mode, **args):
        """Run calc-dirty-rate in MODE; (query-dirty-rate's answer, each
        vCPU's bytes written and the seconds over which they were), or
        the QMP error reply."""
        reply = self.vm.qmp('calc-dirty-rate', **{'calc-time': CALC_TIME,
                                                  'mode': mode}, **args)
        if 'error' in reply:
            return reply
        # The measurement starts just after the command returns and lasts
        # CALC_TIME; the guest is read over its middle, from MARGIN after
        # the command to MARGIN before its end: under TCG the guest runs
        # ten times faster or more while it is not counted, so even a few
        # milliseconds of it would skew its rate.
        time.sleep(MARGIN)
        before = [vcpu_progress(self.vm, c) for c in (0, 1)]
        time.sleep(max(0, before[0][0] + CALC_TIME - 2 * MARGIN -
                       time.monotonic()))
        after = [vcpu_progress(self.vm, c) for c in (0, 1)]
        def measured():
            info = self.vm.command('query-dirty-rate')
            return info if info['status'] == 'measured' else None

        info = wait.until(measured, 20, lambda: 'calc-dirty-rate never '
                          'finished: %s' % self.vm.command('query-dirty-rate'),
                          interval=0.05)
        self.assertEqual(info['mode'], mode)
        written = [(a[1] - b[1], a[0] - b[0]) for a, b in zip(after, before)]
        print('%s %s: %s; guest wrote %s' % (
            self.accel, mode, {k: info.get(k) for k in
                               ('dirty-rate', 'vcpu-dirty-rate', 'calc-time')},
            ['%.0f MB/s' % (w / s / MIB) for w, s in written]))
        return info, written

    def distinct_rate(self, written):
        """MB/s of pages written at least once in the window: what each
        vCPU wrote at its rate over the window, up to its half."""
        return sum(min(w / s * CALC_TIME, self.half)
                   for w, s in written) / MIB / CALC_TIME

    def check_refused(self, mode):
        reply = self.measure(mode)
        self.assertIn('error', reply, 'mode %s measured under %s'
                      % (mode, self.accel))
        self.assertEqual(reply['error']['class'], 'GenericError')
        self.assertEqual(reply['error']['desc'], QERR_MODE % mode)
        # The refusal leaves no measurement running: the next one starts.
        self.assertNotEqual(self.vm.command('query-dirty-rate')['status'],
                            'measuring')

    def check_counting_stopped(self):
        """Under TCG, the write counting the measurement needed stopped
        with it (its last trace event is the stop)."""
        if self.accel != 'tcg':
            return
        time.sleep(0.2)
        with open(self.trace) as f:
            events = re.findall(r'dirtylimit_tcg_(start|stop)', f.read())
        self.assertTrue(events, 'no counting traced under TCG')
        self.assertEqual(events[-1], 'stop', 'TCG still counts writes')

    def check_distinct_rate(self, info, written, how):
        """calc-dirty-rate's INFO matches the distinct pages the guest
        WROTE, as measured HOW (in the message)."""
        distinct = self.distinct_rate(written)
        self.assertTrue(close(info['dirty-rate'], distinct),
                        '%s MB/s %s, the guest wrote %.1f MB/s of distinct '
                        'pages' % (info['dirty-rate'], how, distinct))

    def test_page_sampling(self):
        attempts(self.check_page_sampling)

    def check_page_sampling(self):
        info, written = self.measure('page-sampling', **{'sample-pages': 4096})
        self.assertEqual(info['sample-pages'], 4096)
        self.check_distinct_rate(info, written, 'sampled')

    def test_dirty_bitmap(self):
        if 'dirty-bitmap' in self.refused:
            return self.check_refused('dirty-bitmap')
        attempts(self.check_dirty_bitmap)

    def check_dirty_bitmap(self):
        info, written = self.measure('dirty-bitmap')
        self.assertEqual(info['sample-pages'], 0)
        self.check_distinct_rate(info, written, 'by the bitmap')
        self.check_counting_stopped()

    def test_dirty_bitmap_beside_a_limit(self):
        """Under TCG the bitmap mode counts beside a dirty limit on vCPU
        1, which holds its quota; KVM's dirty log is harvested by the
        limit itself, so there the mode refuses while a limit is set."""
        if 'dirty-bitmap' in self.refused:
            return
        quota = 200

        def check():
            if self.accel == 'kvm':
                reply = self.measure('dirty-bitmap')
                self.assertEqual(reply.get('error', {}).get('desc'),
                                 QERR_BITMAP_LIMIT, reply)
            else:
                time.sleep(2)       # the controller settles
                attempts(lambda: self.check_bitmap_beside_limit(quota))
        self.beside_a_limit(quota, check)

    def beside_a_limit(self, quota, check):
        """CHECK() while vCPU 1 is dirty-limited to QUOTA: the limit is
        intact after it, and once cancelled no limit and no counting is
        left."""
        self.vm.command('set-vcpu-dirty-limit', cpu_index=1, dirty_rate=quota)
        try:
            check()
            limits = self.vm.command('query-vcpu-dirty-limit')
            self.assertEqual([(l['cpu-index'], l['limit-rate'])
                              for l in limits], [(1, quota)])
        finally:
            self.vm.command('cancel-vcpu-dirty-limit')
        self.assertEqual(self.vm.command('query-vcpu-dirty-limit'), [])
        self.check_counting_stopped()

    def check_vcpu1_held(self, written, quota):
        held = written[1][0] / written[1][1] / MIB
        self.assertTrue(close(held, quota, 0.05),
                        'vCPU 1 at %.1f MB/s under a %d MB/s limit while '
                        'measured' % (held, quota))

    def check_bitmap_beside_limit(self, quota):
        info, written = self.measure('dirty-bitmap')
        self.check_vcpu1_held(written, quota)
        self.check_distinct_rate(info, written, 'by the bitmap')

    def check_ring_rates(self, info, written, cpus=(0, 1)):
        rates = {r['id']: r['dirty-rate'] for r in info['vcpu-dirty-rate']}
        self.assertEqual(sorted(rates), [0, 1])
        self.assertEqual(info['dirty-rate'], sum(rates.values()))
        for cpu in cpus:
            guest = written[cpu][0] / written[cpu][1] / MIB
            self.assertTrue(close(rates[cpu], guest),
                            'vCPU %d: %d MB/s by the ring, %.0f MB/s by the '
                            'guest' % (cpu, rates[cpu], guest))
        return rates

    def test_dirty_ring(self):
        if 'dirty-ring' in self.refused:
            return self.check_refused('dirty-ring')

        def check():
            info, written = self.measure('dirty-ring')
            self.check_ring_rates(info, written)
        attempts(check)
        self.check_counting_stopped()

    def test_dirty_ring_beside_a_limit(self):
        """A measurement while vCPU 1 is dirty-limited leaves the limit
        alone: the vCPU stays at its quota throughout and keeps its limit
        afterwards; the measurement still reads its rate."""
        if 'dirty-ring' in self.refused:
            return
        quota = 200

        def check():
            time.sleep(2)           # the controller settles
            attempts(lambda: self.check_beside_limit(quota))
        self.beside_a_limit(quota, check)

    def check_beside_limit(self, quota):
        info, written = self.measure('dirty-ring')
        self.check_vcpu1_held(written, quota)
        rates = self.check_ring_rates(info, written, cpus=(1,))
        guest0 = written[0][0] / written[0][1] / MIB
        if self.accel != 'tcg':
            self.check_ring_rates(info, written, cpus=(0,))
            return
        # vCPU 0 is unlimited; under TCG it is counted in the limit's
        # epochs then (5 ms, longer on a loaded host), once per page per
        # epoch: never more than it wrote, and at least half of what one
        # count per page per 10 ms would give.
        self.assertLessEqual(rates[0], guest0 * (1 + TOLERANCE) + 2,
                             'vCPU 0 counted above its writes')
        floor = 0.5 * min(guest0, self.half / MIB / 0.010)
        self.assertGreaterEqual(rates[0], floor,
                                'vCPU 0: %d MB/s measured, it wrote %.0f MB/s'
                                % (rates[0], guest0))

    def test_hmp(self):
        """HMP's calc_dirty_rate goes through the same command."""
        flag = '-b ' if 'dirty-bitmap' not in self.refused else '-r '
        out = self.vm.command('human-monitor-command',
                              command_line='calc_dirty_rate %s1' % flag)
        self.assertIn('Starting dirty rate measurement', out)
        wait.until(lambda: 'Dirty rate: (not ready)' not in self.vm.command(
            'human-monitor-command', command_line='info dirty_rate'), 20,
            'info dirty_rate never became ready')
        out = self.vm.command('human-monitor-command',
                              command_line='info dirty_rate')
        self.assertRegex(out, r'Dirty rate: [1-9][0-9]* \(MB/s\)')


class DirtyRateTcg(DirtyRateModes, unittest.TestCase):
    accel = 'tcg'


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyRateKvmBitmap(DirtyRateModes, unittest.TestCase):
    accel = 'kvm'
    refused = ('dirty-ring',)


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyRateKvmRing(DirtyRateModes, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'
    refused = ('dirty-bitmap',)
