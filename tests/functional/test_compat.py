"""Ferry and Debian's stock QEMU 7.2 migrate to each other.

Same machine type on both sides; the destination's RAM must equal the
source's, and the guest must run on.  Also checks that Ferry identifies
itself and keeps every QMP command and migration capability of stock.
"""

import unittest

from ferry import env
from ferry.machine import Guest
from ferry.migrate import (FAST_LINK, MigrationPairs, check_destination,
                           migrate)


@unittest.skipUnless(env.stock_binary('x86_64'),
                     "Debian's qemu-system-x86 is not installed")
class StockInterop(MigrationPairs, unittest.TestCase):
    def run_pair(self, src_flavour, dst_flavour):
        src, dst = self.pair(src_flavour, dst_flavour)
        info = migrate(src, dst, max_bandwidth=FAST_LINK, downtime_limit=2000)
        self.assertEqual(info['status'], 'completed', info)
        check_destination(self, src, dst)

    def test_stock_to_ferry(self):
        self.run_pair('stock', 'ferry')

    def test_ferry_to_stock(self):
        self.run_pair('ferry', 'stock')


class Identity(unittest.TestCase):
    def introspect(self, flavour, target):
        vm = Guest(flavour, target, 'id-' + flavour, args=['-machine', 'none'])
        vm.launch()
        try:
            version = vm.command('query-version')
            commands = {c['name'] for c in vm.command('query-commands')}
            caps = {c['capability'] for c in
                    vm.command('query-migrate-capabilities')}
            params = set(vm.command('query-migrate-parameters'))
        finally:
            vm.shutdown()
        return version, commands, caps, params

    def check_target(self, target):
        version, commands, caps, params = self.introspect('ferry', target)
        self.assertIn('Ferry', version['package'])
        self.assertEqual((version['qemu']['major'], version['qemu']['minor']),
                         (7, 2))
        if not env.stock_binary(target):
            self.skipTest("Debian's stock qemu-system-%s is not installed" % target)
        s_version, s_commands, s_caps, s_params = self.introspect('stock', target)
        self.assertEqual(version['qemu'], s_version['qemu'])
        self.assertEqual(s_commands - commands, set(), 'QMP commands lost')
        self.assertEqual(s_caps - caps, set(), 'migration capabilities lost')
        self.assertEqual(s_params - params, set(), 'migration parameters lost')

    def test_x86_64_keeps_stock_interface(self):
        self.check_target('x86_64')

    def test_ppc64_keeps_stock_interface(self):
        self.check_target('ppc64')


if __name__ == '__main__':
    unittest.main()
