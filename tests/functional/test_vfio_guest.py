"""The x86_64-vfio guest has real kernel VFIO devices that can migrate.

Ferry's VFIO migration (SPEC section 4) is tested end to end on the
kernel's mtty sample inside a TCG guest (the host kernel has no VFIO).
This checks the guest itself: Debian's 6.12 kernel boots on Ferry, the
two mtty mdevs exist and are VFIO devices with their group node in
/dev/vfio, mtty advertises the migration uAPI v2 with PRE_COPY and
behaves as Ferry's implementation will expect (vfio-probe walks the
states), and the host's root is usable in the guest over 9p: a host
program runs there in a chroot, and so does Ferry's own QEMU with an
mdev as its vfio-pci device.

Skips only when tests/guests/build could not fetch the kernel packages
(x86_64-vfio/UNAVAILABLE says why).
"""

import json
import os
import unittest

from ferry import env
from ferry.linux import script_output
from ferry.vfio_guest import (DIR, MDEV_TYPE, mdevs, needs_guest,
                              probe_values, run_script)

# VFIO_DEVICE_STATE_RUNNING in the uAPI.
RUNNING = '2'

# The test script: the first mdev through vfio-probe, then the host's
# root as a later step will use it: a host binary in a chroot, and
# Ferry's QEMU (@QEMU@) with the mdev as a vfio-pci device.
SCRIPT = r'''
uuid=$(ls /sys/bus/mdev/devices | head -n 1)
group=$(basename "$(readlink /sys/bus/mdev/devices/$uuid/iommu_group)")
echo "module mtty: $(cat /sys/module/mtty/initstate 2>/dev/null)"
echo "PROBE-BEGIN $uuid group $group"
vfio-probe "$group" "$uuid"
echo "PROBE-END rc=$?"
if [ -d /host/usr/bin ]; then
    echo "chroot: $(chroot /host /bin/sh -c 'echo ok from $(uname -r)')"
fi
# Ferry's own QEMU, from the host's root, opens the mdev (no vCPUs run).
echo INNER-BEGIN
timeout 60 chroot /host @QEMU@ -accel qtest -machine pc -nodefaults \
    -display none -m 32M -qmp stdio \
    -device vfio-pci,sysfsdev=/sys/bus/mdev/devices/$uuid,id=mtty0 <<QMP 2>&1
{"execute": "qmp_capabilities"}
{"execute": "query-pci"}
{"execute": "quit"}
QMP
echo "INNER-END rc=$?"
'''


@needs_guest
class VfioGuest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        script = SCRIPT.replace('@QEMU@', env.ferry_binary('x86_64'))
        vm, cls.seconds, _ = run_script(script, 120, host_root=True)
        cls.serial = vm.serial().replace('\r', '')
        cls.out = script_output(vm)
        cls.devices = mdevs(vm)

    def test_boots_and_runs_script(self):
        self.assertIn('FERRY-GUEST-UP x86_64 6.12', self.serial)
        self.assertIsNotNone(self.out, self.serial[-3000:])
        self.assertNotIn('FERRY-VFIO-ERROR', self.serial)
        self.assertIn('FERRY-TEST-END rc=0', self.serial)

    def test_two_mtty_mdevs_bound_to_vfio(self):
        self.assertEqual(len(self.devices), 2, self.serial[-3000:])
        groups = set()
        for uuid, mtype, group, node, driver in self.devices:
            self.assertEqual(mtype, MDEV_TYPE)
            self.assertEqual(driver, 'mtty')
            self.assertTrue(group.isdigit(), (uuid, group))
            self.assertEqual(node, '/dev/vfio/' + group)
            groups.add(group)
        self.assertEqual(len(groups), 2)
        ready = [l for l in self.serial.splitlines()
                 if l.startswith('FERRY-VFIO-READY')]
        self.assertEqual(len(ready), 1)
        for uuid, *_ in self.devices:
            self.assertIn(uuid, ready[0])

    def test_mtty_migration_uapi_v2_with_precopy(self):
        out = self.out or ''
        self.assertIn('module mtty: live', out)
        self.assertIn('PROBE-END rc=0', out, out)
        probe = out.split('PROBE-BEGIN', 1)[1].split('PROBE-END', 1)[0]
        v = probe_values(probe)
        self.assertEqual(v.get('probe'), 'ok', probe)
        flags = v['migration_flags'].split()
        for flag in ('STOP_COPY', 'P2P', 'PRE_COPY'):
            self.assertIn(flag, flags)
        self.assertEqual(v['initial_state'], RUNNING)
        # mtty's pre-copy data is its stream header; PRECOPY_INFO says
        # so, the read ends with 0 (not ENOMSG), and the stop-copy size
        # from MIG_DATA_SIZE counts the pre-copy bytes too.
        self.assertGreater(int(v['precopy_initial_bytes']), 0)
        self.assertEqual(v['precopy_bytes'], v['precopy_initial_bytes'])
        self.assertEqual(v['precopy_end'], 'eof')
        self.assertEqual(v['precopy_after_initial_bytes'], '0')
        self.assertEqual(v['stopcopy_end'], 'eof')
        self.assertEqual(int(v['precopy_bytes']) + int(v['stopcopy_bytes']),
                         int(v['stop_copy_length']))
        self.assertIn('state=STOP_COPY data_fd=no', probe)
        self.assertEqual(v['final_state'], RUNNING)

    def test_mtty_source_has_precopy(self):
        with open(env.guest(os.path.join(DIR, 'mtty.c'))) as f:
            src = f.read()
        self.assertIn('VFIO_MIGRATION_PRE_COPY', src)
        self.assertIn('VFIO_MIG_GET_PRECOPY_INFO', src)

    def test_host_root_over_9p(self):
        self.assertIn('FERRY-VFIO-HOSTROOT /host', self.serial)
        self.assertIn('chroot: ok from 6.12', self.out or '')

    def test_ferry_qemu_in_guest_opens_mtty(self):
        out = self.out or ''
        inner = out.split('INNER-BEGIN', 1)[-1].split('INNER-END', 1)[0]
        self.assertIn('INNER-END rc=0', out, inner)
        pci = [json.loads(l)['return'] for l in inner.splitlines()
               if l.startswith('{"return": [')]
        self.assertEqual(len(pci), 1, inner)
        dev = [d for bus in pci[0] for d in bus['devices']
               if d['qdev_id'] == 'mtty0']
        self.assertEqual(len(dev), 1, inner)
        # mtty's config space: vendor 0x4348, device 0x3253, and one
        # 8-byte I/O BAR per port.
        self.assertEqual((dev[0]['id']['vendor'], dev[0]['id']['device']),
                         (0x4348, 0x3253))
        self.assertEqual([(r['type'], r['size']) for r in dev[0]['regions']],
                         [('io', 8), ('io', 8)])

    def test_boot_is_quick(self):
        self.assertLess(self.seconds, 60, 'boot and probe took %.1f s'
                        % self.seconds)


if __name__ == '__main__':
    unittest.main()
