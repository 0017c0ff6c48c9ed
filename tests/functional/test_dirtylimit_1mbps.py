"""A 1 MB/s dirty limit, migration's default vcpu-dirty-limit, held
within 5 %, on the KVM dirty ring (4096 and 1024 entries),
KVM's dirty bitmap and TCG.

SPEC section 1 asks max(5 %, 1 MB/s), which at 1 MB/s allows anything
up to 2 MB/s; here the guest's own rate must be 0.95-1.05 MB/s.  A
vCPU charged only at its harvests would dirty seconds of this quota at
once (a 2 ms run at 2.7 GB/s is 5 MB) and then sleep it off, so a window
of 10-15 s would hold one such batch more or less: 0.6-1.4 MB/s; the run
budget keeps each batch small.  Each class
boots one guest (tests/guests/x86-dirty.S), reads its progress from its
shared RAM and holds 1 MB/s over one 12 s window.
"""

import time
import unittest

from ferry import env
from ferry.machine import dirty_guest, guest_rate

KVM = env.kvm_usable()
SKIP_KVM = 'needs a usable /dev/kvm; this host has none'
QUOTA = 1               # MB/s
TOLERANCE = 0.05        # of the quota, both ways
# Seconds from set-vcpu-dirty-limit to the window, and the window: from
# the first batch on, a vCPU dirties at most 50 ms of its allowance at a
# time (dirtylimit_controller_run_budget()), so 12 s are exact to well
# within 1 %; the settle covers the credit a fresh limit starts with.
SETTLE = 2
WINDOW = 12


class Holds1MBps:
    """One guest under ACCEL, limited to 1 MB/s."""
    accel = None

    def test_holds_1MBps_within_5_percent(self):
        vm = dirty_guest(accel=self.accel, shared_ram=True)
        vm.launch()
        self.addCleanup(vm.shutdown, hard=True)
        vm.wait_serial('FP', timeout=60)
        free = guest_rate(vm, 0.5)
        # Far above the quota, or the limit is not what holds it.
        self.assertGreater(free, 50 * QUOTA, 'the guest runs free at only '
                           '%.1f MB/s' % free)
        vm.command('set-vcpu-dirty-limit', dirty_rate=QUOTA)
        time.sleep(SETTLE)
        held = guest_rate(vm, WINDOW)
        info = vm.command('query-vcpu-dirty-limit')
        self.assertLessEqual(abs(held - QUOTA), TOLERANCE * QUOTA,
                             '%s: quota %d MB/s, the guest dirtied %.3f MB/s '
                             'over %d s (free: %.0f MB/s)'
                             % (self.accel, QUOTA, held, WINDOW, free))
        self.assertEqual(info[0]['limit-rate'], QUOTA)
        vm.command('cancel-vcpu-dirty-limit')
        self.assertEqual(vm.command('query-vcpu-dirty-limit'), [])


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimit1MBpsKvmRing(Holds1MBps, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimit1MBpsKvmSmallRing(Holds1MBps, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=1024'


@unittest.skipUnless(KVM, SKIP_KVM)
class DirtyLimit1MBpsKvmBitmap(Holds1MBps, unittest.TestCase):
    accel = 'kvm'


class DirtyLimit1MBpsTcg(Holds1MBps, unittest.TestCase):
    accel = 'tcg'
