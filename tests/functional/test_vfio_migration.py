"""Ferry live-migrates a real kernel VFIO device: mtty, in a TCG guest.

SPEC section 4 (issue 16) end to end.  The x86_64-vfio guest (Debian's
6.12 kernel, the kernel's mtty sample, two mtty-2 mdevs) boots once for
the class and runs ferry/vfio_mig_driver.py in a chroot of the host's
root: Ferry's QEMUs under -accel qtest, the source with one mdev, the
destination with the other, the UART state written and read through
qtest.  What it proves, one method per behaviour:

- the state of both ports (LCR, IER, MCR, SCR, the divisor latch with
  DLAB set, the bytes queued in the FIFO) and the config space arrive
  on the destination after a pre-copy migration with switchover-ack (the
  source enters PRE_COPY, the destination acks, query-migrate counts
  the VFIO bytes) and after one with x-allow-pre-copy=off (no PRE_COPY);
- every handler gets its turn in each iteration round: with 64 MiB of
  a 128 MiB source rewritten all along a migration over an 8 MiB/s
  link, RAM is not finished (its first pass alone takes 8 s), and still
  the device's initial data goes and the destination acks while RAM
  has a backlog of over 100 MiB (the base's core ended each round at
  unfinished RAM: the device waited for the end of RAM's pass); the
  migration completes once the rewriting stops;
- with two mttys on each side the destination acks only once both have
  loaded their initial data, both take the P2P step before either
  stops (and before either runs on the destination), and each device's
  own state arrives;
- a cancelled migration and one whose destination is killed leave the
  source running with its device holding its state and taking a new one;
- a saved stream loads, and the same stream with mtty's magic flipped or
  cut inside the device's data makes the destination fail cleanly (exit
  1, the device named);
- bad input gets a clear error and no crash: switchover-ack without
  return-path, postcopy and background snapshot with a VFIO device; the
  x-enable-migration alias is accepted.

Skips only when tests/guests/build could not fetch the kernel packages
(x86_64-vfio/UNAVAILABLE says why).
"""

import json
import os
import re
import unittest

from ferry import env
from ferry.linux import script_output
from ferry.mtty import (DATA_SIZE as MTTY_DATA_SIZE, HEADER_SIZE, MTTY_ID,
                        PCI_COMMAND_IO, port_bases)
from ferry.vfio_guest import needs_guest, run_script
from ferry.vfio_mig_driver import ACKED, END, PREFIX

TESTS = os.path.dirname(os.path.abspath(__file__))
# The whole class: boot, nineteen inner QEMUs, power off.  Issue 16
# allows the test six minutes of make check; it takes 50-60 s on a
# lightly loaded 2-core host, 60-110 s beside one or two CPU-bound
# processes.  The guest is killed after TIMEOUT.
BUDGET = 360
TIMEOUT = 450
SCRIPT = r'''
chroot /host /usr/bin/env PYTHONPATH=@TESTS@ FERRY_BUILD_DIR=@BUILD@ \
    /usr/bin/python3 -m ferry.vfio_mig_driver @QEMU@ 2>&1
echo "FERRY-VFIO-DRIVER rc=$?"
'''
POSTCOPY_REFUSED = 'VFIO migration is not supported with postcopy migration'
SNAPSHOT_REFUSED = 'VFIO migration is not supported with background snapshot'
ACK_NEEDS_RP = "Capability 'switchover-ack' requires capability 'return-path'"
# Switchover-ack in the traces: the source says its device's initial data
# is all sent, the destination's device and loader approve, the source
# gets the ack.
ACK_EVENTS = {'src': ('vfio_mig_init_data_sent', ACKED),
              'dst': ('vfio_mig_approve_switchover',
                      'loadvm_approve_switchover')}
# The arguments of the trace milestones the checks parse (see the
# driver's MILESTONES): a handler's turn in an iteration round ending
# (RAM's "ram, section_id 2 -> 0": not finished), a device state change,
# the device a vfio_* event names, the count of a loadvm_* event, and a
# message on the return path (MIG_RP_MSG_SWITCHOVER_ACK is 7).
SECTION_END = re.compile(r'(\S+), section_id \d+ -> (-?\d+)$')
SET_STATE = re.compile(r'\((\S+)\) (\w+) -> (\w+)')
DEVICE = re.compile(r'\((\S+)\)')
COUNT = re.compile(r'(\d+)$')
RP_SWITCHOVER_ACK = 7
RP_MESSAGE = re.compile(r'(\d+):')


def folded(turns):
    """The (section, ret) TURNS as "ram -> 0 (x83), ram -> 1, ...": what
    a message can show of hundreds of them."""
    runs = []
    for turn in turns:
        if runs and runs[-1][0] == turn:
            runs[-1][1] += 1
        else:
            runs.append([turn, 1])
    return ', '.join('%s -> %s%s' % (section, ret, ' (x%d)' % n if n > 1
                                      else '')
                     for (section, ret), n in runs)


def parse_results(serial):
    """{check: facts} of the driver's result lines on the console."""
    results = {}
    for line in serial.replace('\r', '').splitlines():
        if line.startswith(PREFIX):
            facts = json.loads(line[len(PREFIX):])
            results[facts['check']] = facts
    return results


@needs_guest
class VfioMigration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        script = (SCRIPT.replace('@TESTS@', TESTS)
                  .replace('@BUILD@', env.BUILD)
                  .replace('@QEMU@', env.ferry_binary('x86_64')))
        vm, cls.seconds, cls.timed_out = run_script(
            script, TIMEOUT, host_root=True, mem='768M')
        cls.serial = vm.serial().replace('\r', '')
        cls.out = script_output(vm) or ''
        cls.results = parse_results(cls.serial)

    def result(self, check):
        """The facts of CHECK, which must have run to its end."""
        facts = self.results.get(check)
        if facts is None:
            self.fail('the driver reported no %r%s; console:\n%s'
                      % (check, ' (timed out after %d s)' % TIMEOUT
                         if self.timed_out else '', self.serial[-3000:]))
        if not facts['ok']:
            self.fail('%s did not run to its end:\n%s\n%s'
                      % (check, facts.get('error'), self.logs(facts)))
        return facts

    @staticmethod
    def logs(facts):
        return '\n'.join('--- %s (exit %s):\n%s'
                         % (name, vm['exit'], vm['log'])
                         for name, vm in facts['vms'].items())

    @staticmethod
    def trace(facts, role):
        """The trace summary of the scenario's source or destination."""
        vm = [v for name, v in facts['vms'].items() if name.endswith(role)]
        return (vm[0]['trace'] if vm else None) or {
            'events': {}, 'states': [], 'precopy': [], 'sequence': [],
            'milestones': []}

    def assertMigrated(self, facts):
        """A completed live migration: the destination runs and each of
        its devices reads back exactly the UART state written on its
        source counterpart, with its BARs where the source had them (the
        config space came along)."""
        self.assertEqual(facts['status'], 'completed', '%s\n%s'
                         % (facts.get('error_desc'), self.logs(facts)))
        self.assertEqual(facts['src_status'], 'postmigrate')
        self.assertEqual(facts['dst_status'], 'running')
        self.assertEqual(len(facts['got']), len(facts['want']))
        for n, (got, want) in enumerate(zip(facts['got'], facts['want'])):
            self.assertEqual(got, want, 'UART state of device %d differs' % n)
        for n, config in enumerate(facts['config']):
            self.assertEqual(config['bars'],
                             [base | 1 for base in port_bases(n)])
            self.assertTrue(config['command'] & PCI_COMMAND_IO)
        # All of each mtty's data, once: it dirties none.
        self.assertEqual((facts['vfio'] or {}).get('transferred'),
                         MTTY_DATA_SIZE * len(facts['want']), 'query-migrate '
                         'does not count the VFIO bytes: %s' % facts['vfio'])

    def assertP2PFirst(self, trace, devices, p2p, then):
        """Every one of DEVICES entered state P2P before any entered
        THEN (their first times), in the trace's state changes."""
        changes = [SET_STATE.match(args).groups()
                   for name, args in trace['milestones']
                   if name == 'vfio_mig_set_state']

        def first(state):
            """{device: where it first entered STATE}"""
            found = {}
            for n, (device, _, to) in enumerate(changes):
                if to == state:
                    found.setdefault(device, n)
            return found
        entered, after = first(p2p), first(then)
        self.assertEqual(sorted(entered), sorted(devices), changes)
        self.assertEqual(sorted(after), sorted(devices), changes)
        self.assertLess(max(entered.values()), min(after.values()),
                        'a device entered %s before every device was in %s:'
                        ' %s' % (then, p2p, changes))

    def assertSourceUsable(self, facts):
        """After a migration that did not happen, the source runs on and
        its device kept its state and takes a new one."""
        self.assertEqual(facts['run_status'], 'running')
        self.assertEqual(facts['kept'], [{}, {}], 'state lost')
        self.assertEqual(facts['rewritten'], [{}, {}], 'device unusable')
        self.assertEqual(facts['states'][-1:], ['RUNNING'], facts['states'])

    def assertFailedCleanly(self, facts):
        """A destination that was fed a bad stream exits 1 (no signal),
        saying the load failed and naming the device (its mdev); the
        log, for more checks."""
        vm = facts['vms'][facts['dst_name']]
        self.assertIsNone(facts['dst_status'], 'the bad stream loaded')
        self.assertEqual(vm['exit'], 1, vm['log'])
        self.assertIn('load of migration failed', vm['log'])
        self.assertIn(facts['device'], vm['log'], 'the error does not name '
                      'the device')
        return vm['log']

    def assertRefused(self, facts, message):
        """A migrate refused up front naming the device; the source runs
        on with its device."""
        self.assertNotIn('error', facts['cap_reply'], facts['cap_reply'])
        error = facts['reply'].get('error', {}).get('desc', '')
        self.assertIn(message, error, facts['reply'])
        self.assertIn(facts['device'], error)
        self.assertNotIn(facts['status'], ('active', 'completed'))
        self.assertSourceUsable(facts)

    def test_driver_ran_every_scenario(self):
        self.assertIn(END, self.out, self.serial[-3000:])
        self.assertIn('FERRY-VFIO-DRIVER rc=0', self.out)

    def test_registers_reach_mtty_through_qtest(self):
        facts = self.result('registers')
        self.assertEqual(facts['config']['id'], MTTY_ID)
        self.assertEqual(facts['diff'], [{}, {}], facts)

    def test_x_enable_migration_alias_and_precopy_default(self):
        props = self.result('migration_properties')['props']
        self.assertIn(props['enable-migration'], ('on', True), props)
        self.assertIs(props['x-allow-pre-copy'], True, props)

    def test_precopy_with_switchover_ack_moves_uart_state(self):
        facts = self.result('precopy_switchover_ack')
        self.assertMigrated(facts)
        src, dst = self.trace(facts, 'src'), self.trace(facts, 'dst')
        self.assertIn('PRE_COPY', src['states'], src)
        self.assertIn('RESUMING', dst['states'], dst)
        # mtty's initial pre-copy data is its 24-byte header, not dirtied
        initial = [i for i, dirty in src['precopy']]
        self.assertEqual(initial[:1], [HEADER_SIZE], src)
        for role, events in ACK_EVENTS.items():
            trace = self.trace(facts, role)
            for event in events:
                self.assertIn(event, trace['events'], trace)
        # The source switched over (sent the stop-copy data) after the ack.
        order = src['sequence']
        self.assertLess(order.index(ACK_EVENTS['src'][1]),
                        order.index('vfio_mig_save_complete'), order)

    def test_device_precopy_not_starved_by_busy_ram(self):
        """RAM, rewritten far faster than the link moves it, is not
        finished; the device still iterates, so its initial data goes
        and the destination acks while RAM has a large backlog.  (The
        base's core ended each round at unfinished RAM: the device's
        first turn, and the ack, waited for the round in which RAM
        reached the end of its pass and said it was finished, 8.5 s in
        here.)  Once the rewriting stops and the link is fast, the
        migration completes with the device's state."""
        facts = self.result('busy_ram')
        src = self.trace(facts, 'src')
        names = [name for name, args in src['milestones']]
        self.assertIn(ACKED, names, 'the source never got the ack: %s'
                      % src['sequence'])
        before = src['milestones'][:names.index(ACKED)]
        turns = [SECTION_END.match(args).groups() for name, args in before
                 if name == 'savevm_section_end']
        ram = [int(ret) for section, ret in turns if section == 'ram']
        device = [section for section, ret in turns
                  if section.endswith('/vfio')]
        self.assertTrue(ram, 'RAM had no turn before the ack: %s'
                        % folded(turns))
        self.assertEqual(set(ram), {0}, 'the device iterated only once RAM '
                         'said it had finished: %s' % folded(turns))
        self.assertTrue(device, 'the device had no turn before the ack: %s'
                        % folded(turns))
        self.assertIn('vfio_mig_init_data_sent', [name for name, _ in before])
        # query-migrate once the ack was in, with RAM still being
        # rewritten: the migration goes on for RAM alone, whose backlog
        # dwarfs what the source could send in the downtime limit (the
        # base's threshold is the measured bandwidth, at most the link,
        # times the limit).
        threshold = facts['link'] * facts['downtime_limit'] / 1000
        acked = [sample for sample in facts['samples'] if sample['acked']]
        self.assertTrue(acked, facts['samples'])
        for sample in acked:
            self.assertEqual(sample['status'], 'active', sample)
            self.assertGreater(sample['ram'], 10 * threshold, sample)
        self.assertEqual(acked[0]['vfio'], HEADER_SIZE, 'not just the '
                         'initial data went before the ack: %s' % acked[0])
        self.assertEqual(facts['stopped'], 'active', 'the migration did not '
                         'wait for RAM while it was rewritten')
        self.assertMigrated(facts)

    def test_switchover_ack_waits_for_every_device(self):
        """Two mttys a side: the destination counts both as needing to
        approve, acks only after both have loaded their initial data,
        and each device's own state arrives.  The P2P step: both devices
        quiesce before either stops on the source, and before either
        runs on the destination."""
        facts = self.result('two_devices')
        self.assertGreaterEqual(facts['available'], 2, 'mtty has no room '
                                'for two more mtty-2 mdevs')
        self.assertNotEqual(facts['want'][0], facts['want'][1])
        self.assertMigrated(facts)
        dst = self.trace(facts, 'dst')['milestones']

        def counts(event):
            return [int(COUNT.search(args).group(1))
                    for name, args in dst if name == event]
        self.assertEqual(counts('loadvm_switchover_ack_needed'), [2], dst)
        self.assertEqual(counts('loadvm_approve_switchover'), [1, 0], dst)
        acks = [n for n, (name, args) in enumerate(dst)
                if name == 'migrate_send_rp_message' and
                int(RP_MESSAGE.match(args).group(1)) == RP_SWITCHOVER_ACK]
        self.assertEqual(len(acks), 1, dst)
        approved = {DEVICE.match(args).group(1): n
                    for n, (name, args) in enumerate(dst)
                    if name == 'vfio_mig_approve_switchover'}
        self.assertEqual(sorted(approved), sorted(facts['dst_uuids']), dst)
        self.assertLess(max(approved.values()), acks[0], 'the destination '
                        'acked before every device had approved: %s' % dst)
        src = self.trace(facts, 'src')
        self.assertEqual(src['events'].get(ACKED), 1, src['sequence'])
        self.assertP2PFirst(src, facts['src_uuids'], 'PRE_COPY_P2P',
                            'STOP_COPY')
        self.assertP2PFirst(self.trace(facts, 'dst'), facts['dst_uuids'],
                            'RUNNING_P2P', 'RUNNING')

    def test_without_precopy_moves_uart_state(self):
        facts = self.result('no_precopy')
        self.assertMigrated(facts)
        src = self.trace(facts, 'src')
        self.assertNotIn('PRE_COPY', src['states'], src)
        self.assertIn('STOP_COPY', src['states'], src)
        self.assertEqual(src['precopy'], [], src)
        self.assertNotIn(ACK_EVENTS['src'][0], src['events'])

    def test_switchover_ack_without_return_path_refused(self):
        facts = self.result('switchover_ack_needs_return_path')
        self.assertEqual(facts['reply'].get('error', {}).get('desc'),
                         ACK_NEEDS_RP, facts['reply'])
        self.assertIs(facts['switchover_ack'], False)
        self.assertEqual(facts['run_status'], 'running')

    def test_postcopy_refused_naming_device(self):
        self.assertRefused(self.result('postcopy_refused'), POSTCOPY_REFUSED)

    def test_background_snapshot_refused_naming_device(self):
        self.assertRefused(self.result('background_snapshot_refused'),
                           SNAPSHOT_REFUSED)

    def test_cancel_leaves_source_device_running_and_usable(self):
        facts = self.result('cancel')
        self.assertEqual(facts['status'], 'cancelled', facts)
        self.assertSourceUsable(facts)
        self.assertIn('PRE_COPY', facts['states'], 'cancelled before '
                      'pre-copy began')
        # The device's initial data went while the guest ran.
        self.assertEqual((facts['during'] or {}).get('transferred'),
                         HEADER_SIZE, 'query-migrate in pre-copy does not '
                         'count the VFIO bytes: %s' % facts['during'])

    def test_migration_after_cancel_moves_uart_state(self):
        self.assertMigrated(self.result('migrate_after_cancel'))

    def test_destination_killed_leaves_source_device_running_and_usable(self):
        facts = self.result('destination_killed')
        self.assertEqual(facts['status'], 'failed', facts)
        self.assertSourceUsable(facts)

    def test_saved_stream_loads(self):
        facts = self.result('stream_file_loads')
        self.assertEqual(facts['status'], 'completed', self.logs(facts))
        self.assertGreater(facts['magic_at'], 0, 'no mtty data in the stream')
        self.assertEqual(facts['dst_status'], 'running', self.logs(facts))
        self.assertEqual(facts['got'], facts['want'])

    def test_corrupted_device_data_fails_cleanly(self):
        facts = self.result('corrupted_device_data')
        self.assertEqual(facts['magics'], 1)
        # mtty's write() refuses the header with EFAULT: say so.
        self.assertIn('Bad address', self.assertFailedCleanly(facts))

    def test_truncated_device_data_fails_cleanly(self):
        self.assertFailedCleanly(self.result('truncated_device_data'))

    def test_no_inner_qemu_crashed(self):
        """Every inner QEMU exited by 'quit' (0), a failed load (1) or
        the test's kill (the killed destination): none by a signal."""
        for check, facts in self.results.items():
            for name, vm in facts['vms'].items():
                if name == 'killed-dst':
                    continue
                self.assertIn(vm['exit'], (0, 1), '%s: %s exited %s:\n%s'
                              % (check, name, vm['exit'], vm['log']))

    def test_fits_the_time_budget(self):
        self.assertLess(self.seconds, BUDGET, 'took %.0f s' % self.seconds)


if __name__ == '__main__':
    unittest.main()
