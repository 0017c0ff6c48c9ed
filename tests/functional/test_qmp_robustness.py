"""QMP robustness of the dirty-limit, dirty-rate and migration-parameter
commands (SPEC section 1: "No QMP input may crash QEMU").

Thousands of random and boundary arguments (integers around every width
QAPI converts to, floats, strings, null, lists, objects, missing and
extra members, arguments that are not an object, unknown capabilities)
go to set-vcpu-dirty-limit, cancel-vcpu-dirty-limit,
query-vcpu-dirty-limit, calc-dirty-rate, query-dirty-rate,
migrate-set-parameters (every parameter query-migrate-parameters
reports, plus the ones it leaves out) and migrate-set-capabilities,
under TCG, KVM with its dirty bitmap and KVM with a dirty ring, first
outside a migration and then while the guest migrates slowly
(8 MiB/s) to a destination, a migration cancelled at the end.

Every answer must be a QMP reply (a return, or an error with a class and
a description: never a disconnect), QEMU must stay alive and answer
query-status, after cancelling everything no dirty limit may be left
behind, and the guest must still run.  The random sequence comes from
SEED, printed in the output; FERRY_QMP_SEED=N replays another.
"""

import json
import os
import random
import socket
import unittest

from ferry import env, wait
from ferry.machine import dirty_guest, incoming, pass_counter

KVM = env.kvm_usable()
SKIP_KVM = 'needs a usable /dev/kvm; this host has none'
SEED = int(os.environ.get('FERRY_QMP_SEED', '20261201'))
CALLS = int(os.environ.get('FERRY_QMP_CALLS', '2000'))  # per accel, phase
BURSTS = CALLS // 20                # pipelined bursts of BURST calls
BURST = 10
SLOW_LINK = 8 << 20                 # bytes/s: the migration never ends
DOWNTIME_MS = 300

INTS = [-2 ** 64 - 1, -2 ** 64, -2 ** 63 - 1, -2 ** 63, -2 ** 32, -2 ** 31,
        -1000, -2, -1, 0, 1, 2, 3, 7, 8, 9, 10, 59, 60, 61, 99, 100, 101,
        127, 128, 255, 256, 999, 1000, 1001, 2000, 4096, 4097, 65535,
        65536, 2 ** 20, 2 ** 20 + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
        2 ** 32, 2 ** 53, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1, 2 ** 63,
        2 ** 64 - 1, 2 ** 64, 2 ** 64 + 1, 10 ** 30]
FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, -1.0, 60.0, 1e-300, 1e300,
          2.0 ** 31, 2.0 ** 32, 2.0 ** 63, 2.0 ** 64, -2.0 ** 63]
STRINGS = ['', 'x', '0', '1', '-1', '1e3', 'true', 'null', 'dirty-ring',
           'dirty-limit', 'page-sampling', 'a' * 4096, '\u00e9\u4e2d',
           '%s%n%p']
OBJECTS = [{}, {'a': 1}, {'capability': 'dirty-limit', 'state': True},
           {'cpu-index': 0}, {'': None}]
LISTS = [[], [1], [None], [{}], [[]], list(range(64)),
         [{'capability': 'dirty-limit', 'state': True}]]

MODES = ['page-sampling', 'dirty-ring', 'dirty-bitmap']
# query-migrate-parameters leaves out the ones that are not set.
EXTRA_PARAMETERS = {'tls-creds': 'str', 'tls-hostname': 'str',
                    'tls-authz': 'str', 'block-bitmap-mapping': 'list'}
# Lines that are not valid QMP (JSON QEMU's parser refuses, or commands
# of the wrong shape), sent within the pipelined bursts.
JUNK = [b'{"execute": "calc-dirty-rate", "arguments": {"calc-time": NaN}}',
        b'{"execute": "set-vcpu-dirty-limit", "arguments": '
        b'{"dirty-rate": Infinity}}',
        b'{"execute": "set-vcpu-dirty-limit", "arguments": '
        b'{"dirty-rate": 1e400}}',
        b'{"execute": "cancel-vcpu-dirty-limit", "arguments": '
        b'{"cpu-index": -1e400}}',
        b'{"execute": 1}', b'[]', b'"calc-dirty-rate"', b'{}',
        b'{"execute": "query-dirty-rate", "arguments": {}, "extra": 1}',
        b'{"execute": "migrate-set-capabilities", "arguments": '
        b'{"capabilities": [{"capability": "dirty-limit", "state": 1}]}}']

# Parameters that decide whether the migration under test ends; they are
# put back after every change while it runs.
SLOW = {'max-bandwidth': SLOW_LINK, 'downtime-limit': DOWNTIME_MS}


def keep_slow(name, args):
    """ARGS of a call made while the migration under test runs, with any
    valid max-bandwidth or downtime-limit that could let it end (a faster
    link, 0 = unlimited, a longer downtime) replaced by the slow one: the
    restore that follows comes a round trip later, and one rate-limit
    period within that window once let the migration complete.  Invalid
    values still go as they are."""
    if name != 'migrate-set-parameters' or not isinstance(args, dict):
        return args
    args = dict(args)
    for key, slow in SLOW.items():
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and \
                (value > slow or (key == 'max-bandwidth' and value == 0)):
            args[key] = slow
    return args


class Fuzzer:
    """Random QMP calls from RNG, for the capabilities and parameters the
    guest reported."""

    def __init__(self, rng, capabilities, parameters):
        self.rng = rng
        self.capabilities = capabilities
        self.parameters = parameters
        self.commands = {
            'set-vcpu-dirty-limit': {'cpu-index': 'cpu', 'dirty-rate': 'u64'},
            'cancel-vcpu-dirty-limit': {'cpu-index': 'cpu'},
            'query-vcpu-dirty-limit': {},
            'calc-dirty-rate': {'calc-time': 'int', 'sample-pages': 'int',
                                'mode': 'mode'},
            'query-dirty-rate': {},
            'migrate-set-parameters': parameters,
            'migrate-set-capabilities': {'capabilities': 'caps'},
        }

    def anything(self, depth=0):
        r = self.rng
        kind = r.randrange(8 if depth < 2 else 6)
        if kind == 0:
            return r.choice(INTS)
        if kind == 1:
            return r.choice(FLOATS)
        if kind == 2:
            return r.choice(STRINGS)
        if kind == 3:
            return r.choice([None, True, False])
        if kind == 4:
            return r.choice(OBJECTS)
        if kind == 5:
            return r.choice(LISTS)
        if kind == 6:
            return [self.anything(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(STRINGS + ['state', 'capability', 'dirty-rate']):
                self.anything(depth + 1) for _ in range(r.randrange(3))}

    def integer(self):
        r = self.rng
        pick = r.randrange(4)
        if pick == 0:
            return r.randint(-3, 70)
        if pick == 1:
            return r.getrandbits(r.choice([8, 16, 31, 32, 63, 64, 65]))
        return r.choice(INTS)

    def capability_list(self):
        r = self.rng
        caps = []
        for _ in range(r.choice([0, 1, 1, 1, 2, 3, 8])):
            cap = {'capability': r.choice(self.capabilities +
                                          ['dirty-limit'] * 4 +
                                          ['bogus', '', 'Dirty-Limit',
                                           'dirty_limit']),
                   'state': r.choice([True, False])}
            if r.random() < 0.15:
                del cap[r.choice(['capability', 'state'])]
            if r.random() < 0.15:
                cap[r.choice(['capability', 'state'])] = self.anything()
            if r.random() < 0.05:
                cap['extra'] = self.anything()
            caps.append(cap if r.random() > 0.05 else self.anything())
        return caps

    def value(self, kind):
        r = self.rng
        if r.random() < 0.3:
            return self.anything()
        if kind in ('int', 'u64', 'cpu'):
            if kind == 'cpu' and r.random() < 0.5:
                return r.choice([0, 1, 2, -1])
            return self.integer()
        if kind == 'bool':
            return r.choice([True, False])
        if kind == 'str':
            return r.choice(STRINGS + [None])
        if kind == 'mode':
            return r.choice(MODES + ['bogus', ''])
        if kind == 'caps':
            return self.capability_list()
        if kind == 'multifd-compression':
            return r.choice(['none', 'zlib', 'zstd', 'lz4', ''])
        if kind == 'list':
            return r.choice([[], [{'node-name': 'x', 'alias': 'y',
                                   'bitmaps': []}], self.anything()])
        return self.anything()

    def call(self):
        """(command, arguments): arguments may be missing members, carry
        extra ones, or not be an object at all."""
        r = self.rng
        name = r.choice(list(self.commands))
        members = self.commands[name]
        if name == 'migrate-set-parameters':
            chosen = r.sample(sorted(members), r.choice([1, 1, 1, 2, 3]))
        else:
            chosen = [m for m in members if r.random() < 0.75]
        args = {m: self.value(members[m]) for m in chosen}
        calc_time = args.get('calc-time') if isinstance(args, dict) else None
        if type(calc_time) is int and 2 < calc_time <= 60 and \
                r.random() < 0.97:
            # Valid windows are mostly 1 s: while a measurement runs every
            # other one is refused before its arguments are looked at.
            args['calc-time'] = 1
        if r.random() < 0.1:
            args[r.choice(STRINGS + ['cpu_index', 'dirty_rate', 'id'])] = \
                self.anything()
        if r.random() < 0.02:
            args = r.choice(LISTS[1:] + STRINGS[1:] + [1, True])
        return name, args


def parameter_kinds(params):
    kinds = dict(EXTRA_PARAMETERS)
    for name, value in params.items():
        if isinstance(value, bool):
            kinds[name] = 'bool'
        elif isinstance(value, int):
            kinds[name] = 'int'
        elif isinstance(value, str):
            kinds[name] = ('multifd-compression'
                           if name == 'multifd-compression' else 'str')
        else:
            kinds[name] = 'list'
    return kinds


class QmpRobustness:
    """One guest per accelerator (ACCEL); test_1 fuzzes it outside a
    migration, test_2 while it migrates."""
    accel = None

    @classmethod
    def setUpClass(cls):
        cls.vm = dirty_guest(image='x86-dirty-smp.img', accel=cls.accel,
                             shared_ram=True)
        # A second monitor, for commands written back to back without
        # waiting for each answer (the python library waits).
        raw = os.path.join(cls.vm.tmpdir, 'raw.qmp')
        cls.vm.add_args('-qmp', 'unix:%s,server=on,wait=off' % raw)
        cls.vm.launch()
        cls.raw = socket.socket(socket.AF_UNIX)
        cls.raw.settimeout(60)
        cls.raw.connect(raw)
        cls.raw_file = cls.raw.makefile('rwb')
        cls.raw_file.readline()                         # the greeting
        cls.raw_file.write(b'{"execute": "qmp_capabilities"}\n')
        cls.raw_file.flush()
        cls.raw_file.readline()
        cls.vm.wait_serial('P', timeout=60)
        cls.params = cls.vm.command('query-migrate-parameters')
        cls.caps = cls.vm.command('query-migrate-capabilities')
        cls.rng = random.Random('%d %s' % (SEED, cls.accel))
        cls.fuzzer = Fuzzer(cls.rng, [c['capability'] for c in cls.caps],
                            parameter_kinds(cls.params))
        print('QMP fuzz seed %d (FERRY_QMP_SEED=%d replays it), accel %s'
              % (SEED, SEED, cls.accel))

    @classmethod
    def tearDownClass(cls):
        cls.raw.close()
        cls.vm.shutdown(hard=True)

    def fuzz(self, phase, migrating=False):
        history = []
        counts = {}
        for i in range(CALLS):
            name, args = self.fuzzer.call()
            if migrating:
                args = keep_slow(name, args)
            history.append('%s #%d: %s %s' % (phase, i, name,
                                              json.dumps(args)[:300]))
            reply = self.send(history, name, args)
            kind = 'return' if 'return' in reply else 'error'
            counts[(name, kind)] = counts.get((name, kind), 0) + 1
            if migrating and name == 'migrate-set-parameters' and \
                    'return' in reply and isinstance(args, dict) and \
                    set(args) & set(SLOW):
                self.send(history, name, SLOW)
            if i % 250 == 249:
                self.check_alive(history)
        print('%s %s: %s' % (self.accel, phase, ', '.join(
            '%s %s %d' % (n, k, c) for (n, k), c in sorted(counts.items()))))
        # Both answers happened for the commands that take arguments.
        for name in ('set-vcpu-dirty-limit', 'calc-dirty-rate',
                     'migrate-set-parameters', 'migrate-set-capabilities'):
            self.assertIn((name, 'error'), counts)
        self.assertIn(('set-vcpu-dirty-limit', 'return'), counts)
        self.check_alive(history)
        return history

    def pipelined(self, phase, migrating=False):
        """BURSTS bursts of BURST random calls and a few junk lines, each
        burst written at once; every call carries an id and must get its
        answer, the junk an error or nothing.  Bursts sometimes start with
        two valid calc-dirty-rate commands, which once started two
        measurements."""
        history = []
        r = self.rng
        for b in range(BURSTS):
            calls = []
            if r.random() < 0.2:
                mode = r.choice(MODES)
                calls += [('calc-dirty-rate', {'calc-time': 1, 'mode': mode})] * 2
            calls += [self.fuzzer.call() for _ in range(BURST)]
            if migrating:
                calls = [(n, keep_slow(n, a)) for n, a in calls]
            lines = []
            for i, (name, args) in enumerate(calls):
                msg = {'execute': name, 'id': i}
                if args != {}:
                    msg['arguments'] = args
                lines.append(json.dumps(msg).encode())
                if migrating and name == 'migrate-set-parameters':
                    # Put the slow link back at once, as in fuzz().
                    lines.append(json.dumps({
                        'execute': name, 'arguments': SLOW,
                        'id': 'slow'}).encode())
                if r.random() < 0.1:
                    lines.append(r.choice(JUNK))
            lines.append(b'{"execute": "query-status", "id": "end"}')
            history.append('%s burst %d: %s' % (phase, b, b' | '.join(
                lines).decode()[:2000]))
            self.send_burst(history, lines, len(calls))
            if b % 25 == 24:
                self.check_alive(history)
        self.check_alive(history)

    def send_burst(self, history, lines, ncalls):
        try:
            self.raw_file.write(b'\n'.join(lines) + b'\n')
            self.raw_file.flush()
            answered = set()
            while True:
                line = self.raw_file.readline()
                if not line:
                    raise EOFError('the monitor closed the connection')
                reply = json.loads(line)
                if 'event' in reply:
                    continue
                self.assertTrue('return' in reply or
                                isinstance(reply.get('error', {}).get('desc'),
                                           str), line)
                if reply.get('id') == 'end':
                    break
                if reply.get('id') == 'slow':
                    self.assertIn('return', reply, line)
                elif 'id' in reply:
                    answered.add(reply['id'])
        except (OSError, EOFError, ValueError) as e:
            self.fail('pipelined QMP failed (%r), QEMU %s; last bursts:\n%s'
                      '\n%s' % (e, 'running' if self.vm.is_running() else
                                 'exited %s' % self.vm.exitcode(),
                                 '\n'.join(history[-2:]), self.vm.get_log()))
        self.assertEqual(answered, set(range(ncalls)), history[-1])
        self.assertEqual(reply['return']['status'], 'running', history[-1])

    def send(self, history, name, args):
        try:
            reply = self.vm.qmp(name, args_dict=args)
        except Exception as e:          # disconnect, EOF, bad JSON
            self.fail('QMP call failed (%r), QEMU %s; last calls:\n%s\n%s'
                      % (e, 'running' if self.vm.is_running() else
                         'exited %s' % self.vm.exitcode(),
                         '\n'.join(history[-5:]), self.vm.get_log()))
        self.assertIsInstance(reply, dict, history[-1])
        if 'error' in reply:
            error = reply['error']
            self.assertIsInstance(error.get('class'), str, history[-1])
            self.assertIsInstance(error.get('desc'), str, history[-1])
            self.assertTrue(error['desc'], history[-1])
        else:
            self.assertIn('return', reply, history[-1])
        return reply

    def check_alive(self, history):
        self.assertTrue(self.vm.is_running(), 'QEMU exited after:\n%s'
                        % '\n'.join(history[-5:]))
        status = self.vm.command('query-status')
        self.assertEqual(status['status'], 'running', history[-1])

    def check_clean(self):
        """Cancelling every limit leaves none, and the guest runs on."""
        self.vm.command('cancel-vcpu-dirty-limit')
        self.assertEqual(self.vm.command('query-vcpu-dirty-limit'), [])
        for counter in (0x7e00, 0x7e04):
            before = pass_counter(self.vm, counter)
            wait.until(lambda: pass_counter(self.vm, counter) != before, 10,
                       'the guest stopped (counter %#x at %d)'
                       % (counter, before), interval=0.05)

    def restore_migration_settings(self):
        """The parameters and capabilities the guest started with, so
        that a migration can run."""
        params = dict(self.params, **{'block-bitmap-mapping': []})
        for name in ('tls-creds', 'tls-hostname', 'tls-authz'):
            params[name] = ''
        self.vm.command('migrate-set-parameters', **params)
        self.vm.command('migrate-set-capabilities', capabilities=self.caps)
        self.assertEqual(self.vm.command('query-migrate-capabilities'),
                         self.caps)

    def test_1_outside_migration(self):
        self.fuzz('outside migration')
        self.pipelined('outside migration, pipelined')
        self.check_clean()

    def test_2_during_migration(self):
        self.vm.command('cancel-vcpu-dirty-limit')
        self.restore_migration_settings()
        dst = incoming(self.vm)
        dst.launch()
        try:
            self.vm.command('migrate-set-parameters', **SLOW)
            self.vm.command('migrate', uri=dst.uri)
            history = self.fuzz('during migration', migrating=True)
            self.pipelined('during migration, pipelined', migrating=True)
            info = self.vm.command('query-migrate')
            self.assertEqual(info['status'], 'active',
                             'the migration ended during the fuzzing: %s\n%s'
                             % (info, '\n'.join(history[-5:])))
            self.vm.command('migrate_cancel')
            wait.until(lambda: self.vm.command('query-migrate')['status'] ==
                       'cancelled', 30, 'migrate_cancel did not cancel')
        finally:
            dst.shutdown(hard=True)
        self.check_alive(['after the migration was cancelled'])
        self.check_clean()


class QmpRobustnessTcg(QmpRobustness, unittest.TestCase):
    accel = 'tcg'


@unittest.skipUnless(KVM, SKIP_KVM)
class QmpRobustnessKvmBitmap(QmpRobustness, unittest.TestCase):
    accel = 'kvm'


@unittest.skipUnless(KVM, SKIP_KVM)
class QmpRobustnessKvmRing(QmpRobustness, unittest.TestCase):
    accel = 'kvm,dirty-ring-size=4096'
