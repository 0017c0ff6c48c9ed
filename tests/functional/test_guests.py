"""The project's test guests boot on Ferry under TCG and run a script."""

import unittest

from ferry.linux import linux_guest, script_output
from ferry.machine import dirty_guest, dirty_pages, pass_counter
from ferry.pattern import check_dirty_pattern


class X86DirtyGuest(unittest.TestCase):
    def test_dirties_memory_in_pattern_and_reports_progress(self):
        vm = dirty_guest('x86-dirty-32m.img')
        vm.launch()
        try:
            vm.wait_serial('FPP', timeout=30)
            vm.command('stop')
            first = pass_counter(vm)
            self.assertIsNone(check_dirty_pattern(dirty_pages(vm)))
            vm.command('cont')
            vm.wait_serial('P' * 8, timeout=30)
            vm.command('stop')
            self.assertGreater(pass_counter(vm), first)
            self.assertIsNone(check_dirty_pattern(dirty_pages(vm)))
        finally:
            vm.shutdown()


class LinuxGuests(unittest.TestCase):
    def boot(self, target, timeout):
        vm = linux_guest('echo "sum=$((6 * 7))"; uname -m', target=target)
        vm.launch()
        vm.wait(timeout=timeout)    # the guest powers off after its script
        out = script_output(vm)
        self.assertIsNotNone(out, vm.serial()[-2000:])
        self.assertIn('sum=42', out)
        return out

    def test_x86_64_debian_kernel_boots_to_script(self):
        self.assertIn('x86_64', self.boot('x86_64', 120))

    def test_ppc64_pseries_debian_kernel_boots_to_script(self):
        self.assertIn('ppc64le', self.boot('ppc64', 240))


if __name__ == '__main__':
    unittest.main()
