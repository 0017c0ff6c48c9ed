"""VFIO migration between two Ferry QEMUs, inside the x86_64-vfio guest.

tests/functional/test_vfio_migration.py boots the guest (vfio_guest(),
the host's root at /host) and runs this there, in the chroot:

    python3 -m ferry.vfio_mig_driver QEMU [SCENARIO...]

Each scenario starts inner QEMUs (QEMU, -accel qtest, no firmware, one
mtty mdev each as vfio-pci with migration enabled, or two), writes UART
state on the source through qtest (ferry.mtty), migrates, and reads the
state back wherever it should be.  The source always has the first mdev
init-vfio made, a destination the second (and with two devices each,
the source and the destination a second mdev the driver creates); an
mdev is re-created before each inner QEMU that opens it, so a
destination reads all zeros unless the migration brought the state.

One line per check on stdout (the guest's console):

    FERRY-VFIO-RESULT {"check": NAME, "ok": true, ...facts}

"ok" says only that the check ran to its end (false with "error", the
traceback); the host-side test asserts on the facts: statuses, the
states written and read back, QMP errors, and for every inner QEMU of
the scenario ("vms") its exit code, the end of its output (stderr) and a
summary of its trace (vfio_*, the switchover-ack events).
"""

import json
import os
import re
import sys
import time
import traceback

from ferry import wait
from ferry.machine import wait_migration
from ferry.migrate import FAST_LINK, set_caps, set_params
from ferry.mtty import (MAGIC, PORT_BASES, Mtty, device_state, expected_read,
                        mismatches, port_bases)
from qemu.machine.qtest import QEMUQtestMachine

PREFIX = 'FERRY-VFIO-RESULT '
END = 'FERRY-VFIO-DRIVER-END'
# Writable in the chroot (tests/guests/init-vfio).
RUN = '/run'
MDEVS = '/sys/bus/mdev/devices'
# The type of init-vfio's mdevs (ferry.vfio_guest.MDEV_TYPE), and of the
# two the driver creates for the scenarios with two devices a side: the
# source's second device, the destination's.
MTTY_TYPE = '/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2'
SECOND_MDEVS = ('83b8f4f2-509f-382f-3c1e-e6bfe0fa2001',
                '83b8f4f2-509f-382f-3c1e-e6bfe0fa2002')
# The PCI slot of an inner QEMU's first mtty; the second is in the next.
SLOT = 4
ACK = {'return-path': True, 'switchover-ack': True}
PRECOPY_PROPS = ('enable-migration=on', 'x-allow-pre-copy=on')
# Enough RAM to fill that a migration capped at SLOW_LINK takes seconds.
RAM_FILL = (0x100000, 16 << 20)
SLOW_LINK = 2 << 20
# Busy RAM: a source with BUSY_MEM whose DIRTY range the driver rewrites
# (qtest memset, a new byte each time, DIRTY_PERIOD seconds apart) while
# it migrates over BUSY_LINK, far faster than the link moves it, so that
# RAM is not finished (but in the round that ends one of its passes,
# 8 s or more apart); it goes on for AFTER_ACK rewrites once the source
# has the ack, at most BUSY_SECONDS.
BUSY_MEM = '128M'
DIRTY = (0x100000, 64 << 20)
DIRTY_PERIOD = 0.05
BUSY_LINK = 8 << 20
AFTER_ACK = 3
BUSY_SECONDS = 30
ACKED = 'source_return_path_thread_switchover_acked'
TRACE_EVENTS = ('vfio_*', 'loadvm_approve_switchover',
                'loadvm_switchover_ack_needed', 'migrate_send_rp_message',
                ACKED)
# Trace events of every register access: counted, not listed.
NOISY = ('vfio_region_read', 'vfio_region_write', 'vfio_pci_read_config',
         'vfio_pci_write_config')
# The events that say which state the device is put in ("FROM -> TO"),
# and the state names they print.
STATE_EVENTS = ('vfio_mig_set_state', 'vfio_mig_reset')
STATES = ('ERROR', 'STOP_COPY', 'STOP', 'RUNNING_P2P', 'RUNNING',
          'RESUMING', 'PRE_COPY_P2P', 'PRE_COPY')
# The events whose order, and arguments, the checks look at ("milestones"
# of the summary): the device state changes, switchover-ack on both
# sides (migrate_send_rp_message "7: ..." is the ack leaving the
# destination), and the end of each handler's turn in an iteration round
# (savevm_section_end "ram, section_id 2 -> 0": RAM not finished), which
# a scenario traces only if it asks for it.
MILESTONES = ('vfio_mig_set_state', 'vfio_mig_init_data_sent',
              'vfio_mig_approve_switchover', 'loadvm_switchover_ack_needed',
              'loadvm_approve_switchover', 'migrate_send_rp_message',
              ACKED, 'savevm_section_end')
LOG_TAIL = 1500
# The log trace backend's prefix with -msg timestamp=on.
TIMESTAMP = re.compile(r'^\d+@[\d.]+:')
PRECOPY = re.compile(r'initial (\d+) dirty (\d+)')


class Inner(QEMUQtestMachine):
    """An inner QEMU: -accel qtest, a pc machine with MEM of RAM and no
    firmware run, and each mdev of UUIDS as vfio-pci "mttyN" at SLOT + N
    with migration enabled (PROPS adds device properties; mttys[N]
    reaches it); every vfio_* and switchover-ack trace event, and those
    of TRACE, goes to trace_path."""

    def __init__(self, qemu, name, uuids, props=(), extra=(), mem='32M',
                 trace=()):
        super().__init__(qemu, name=name, base_temp_dir=RUN, sock_dir=RUN)
        self.uuids, self.mem = uuids, mem
        self.trace_path = os.path.join(RUN, name + '.trace')
        self.add_args('-machine', 'pc', '-m', mem, '-nodefaults', *extra)
        self.mttys = []
        for i, uuid in enumerate(uuids):
            device = ['vfio-pci', 'sysfsdev=%s/%s' % (MDEVS, uuid),
                      'id=mtty%d' % i, 'addr=%d' % (SLOT + i), *props]
            self.add_args('-device', ','.join(device))
            self.mttys.append(Mtty(self, SLOT + i, port_bases(i)))
        for event in TRACE_EVENTS + tuple(trace):
            self.add_args('-trace', event)
        self.add_args('-D', self.trace_path)
        self.mtty = self.mttys[0]

    def status(self):
        return self.command('query-status')['status']


def recycle(uuid):
    """Remove the mdev UUID if it exists and create it (again) as an
    mtty-2: a fresh device, every register 0 and its migration state
    RUNNING (mtty keeps both in the kernel across the QEMUs that open
    it, and its close_device resets neither)."""
    dev = os.path.join(MDEVS, uuid)
    if os.path.exists(dev):
        with open(os.path.join(dev, 'remove'), 'w') as f:
            f.write('1')
    with open(os.path.join(MTTY_TYPE, 'create'), 'w') as f:
        f.write(uuid)


def trace_summary(path):
    """What an inner QEMU's trace says: how often each event fired; in
    order (repeats folded) the device states the STATE_EVENTS name, and
    the events other than register accesses; the [initial, dirty]
    pre-copy sizes of the events about pre-copy; in order, the
    [event, arguments] of the MILESTONES; the last lines of the events
    other than register accesses."""
    events, states, lines, precopy, sequence = {}, [], [], [], []
    milestones = []
    try:
        with open(path, errors='replace') as f:
            text = f.read()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        words = TIMESTAMP.sub('', line).split()
        if not words:
            continue
        name = words[0]
        events[name] = events.get(name, 0) + 1
        if name in NOISY:
            continue
        lines.append(line)
        if sequence[-1:] != [name]:
            sequence.append(name)
        if name in MILESTONES:
            milestones.append([name, ' '.join(words[1:])])
        if 'precopy' in name:
            precopy += [[int(n) for n in m] for m in PRECOPY.findall(line)]
        if name in STATE_EVENTS:
            for word in re.split(r'[^A-Z_0-9]+', ' '.join(words[1:])):
                if word in STATES and (not states or states[-1] != word):
                    states.append(word)
    return {'events': events, 'states': states, 'precopy': precopy,
            'sequence': sequence, 'milestones': milestones,
            'lines': lines[-60:]}


class Run:
    """The scenarios' shared state: the QEMU binary, the source and
    destination mdevs (src_uuids[N], dst_uuids[N]: their Nth device),
    and the inner QEMUs the current scenario started (shut down, and
    described, when it ends)."""

    def __init__(self, qemu):
        self.qemu = qemu
        self.src_uuid, self.dst_uuid = sorted(os.listdir(MDEVS))[:2]
        self.src_uuids = (self.src_uuid, SECOND_MDEVS[0])
        self.dst_uuids = (self.dst_uuid, SECOND_MDEVS[1])
        self.vms, self.lines = [], []

    def start(self, name, uuids, props=(), extra=(), **kw):
        """An inner QEMU (Inner(), KW as there) on fresh mdevs UUIDS (see
        recycle()), once the scenario's QEMUs that had them are gone."""
        holders = [vm for vm in self.vms if set(vm.uuids) & set(uuids)]
        wait.until(lambda: not any(vm.is_running() for vm in holders), 20,
                   '%s still open by a QEMU' % ' '.join(uuids))
        for uuid in uuids:
            recycle(uuid)
        vm = Inner(self.qemu, name, uuids, props, extra, **kw)
        self.vms.append(vm)
        vm.launch()
        return vm

    def source(self, name, seed, props=('enable-migration=on',), devices=1,
               **kw):
        """An inner QEMU (KW as Inner()'s) on the source's mdevs, DEVICES
        of them, the Nth with the UART state of SEED + N written;
        (vm, [what read_state() must return, for each device])."""
        vm = self.start(name + '-src', self.src_uuids[:devices], props, **kw)
        for n, mtty in enumerate(vm.mttys):
            mtty.map_ports()
            mtty.write_state(device_state(seed + n))
        return vm, [expected_read(seed + n) for n in range(devices)]

    def destination(self, name, props=('enable-migration=on',), caps=None,
                    devices=1, **kw):
        """An inner QEMU (KW as Inner()'s) on the destination's mdevs,
        DEVICES of them, waiting (-incoming defer) with capabilities CAPS
        set."""
        vm = self.start(name + '-dst', self.dst_uuids[:devices], props,
                        ('-incoming', 'defer'), **kw)
        if caps:
            set_caps(vm, **caps)
        return vm

    def report(self, check, **facts):
        self.lines.append(dict(check=check, ok=True, **facts))

    def finish(self, checks, started, error=None):
        """Shut the scenario's QEMUs down and print a line for each of
        CHECKS: the facts it reported (or ERROR), and what each QEMU
        printed, traced and exited with."""
        vms = {}
        for vm in self.vms:
            try:
                if vm.is_running():
                    vm.shutdown(timeout=20)
                else:
                    vm.wait(timeout=20)    # exited by itself: no 'quit'
            except Exception:   # noqa: BLE001  (reported, not raised)
                vm.kill()
            log = vm.get_log() or ''
            vms[vm._name] = {'exit': vm.exitcode(), 'log': log[-LOG_TAIL:],
                             'trace': trace_summary(vm.trace_path)}
        reported = {line['check']: line for line in self.lines}
        for check in checks:
            line = reported.get(check) or {'check': check, 'ok': False}
            if error and not line['ok']:
                line['error'] = error
            line.update(vms=vms, seconds=round(time.monotonic() - started, 1))
            print(PREFIX + json.dumps(line, sort_keys=True), flush=True)
        self.vms, self.lines = [], []

    def migrate(self, src, name, caps, props=('enable-migration=on',)):
        """Migrate SRC to a new destination (as many devices, as much
        RAM) over a UNIX socket, with CAPS on both sides; outcome()."""
        dst = self.destination(name, props, caps, devices=len(src.mttys),
                               mem=src.mem)
        start_migration(src, dst, caps)
        return outcome(src, dst)

    @staticmethod
    def usable(vm, want, seed):
        """After a migration that did not happen: the source's device
        still holds WANT, and takes and gives back a new state (SEED),
        which it then holds."""
        kept = vm.mtty.read_state()
        vm.mtty.write_state(device_state(seed))
        again = vm.mtty.read_state()
        vm.mtty.write_state(device_state(seed))
        return {'run_status': vm.status(),
                'states': trace_summary(vm.trace_path)['states'],
                'kept': mismatches(want, kept),
                'rewritten': mismatches(expected_read(seed), again)}


SCENARIOS = []


def scenario(*checks):
    """Register a scenario that reports CHECKS."""
    def register(func):
        SCENARIOS.append((func.__name__, checks, func))
        return func
    return register


@scenario('registers', 'migration_properties')
def registers(run):
    """One QEMU, no migration: the harness reaches mtty (config space,
    both ports' state written and read back), and the migration
    properties: x-enable-migration (the alias) is accepted and sets
    enable-migration; x-allow-pre-copy defaults to on."""
    vm, (want,) = run.source('regs', 1, ('x-enable-migration=on',))
    before = vm.mtty.config()
    peek = [vm.mtty.peek_port(base) for base in PORT_BASES]
    got = vm.mtty.read_state()
    run.report('registers', config=before, peek=peek, want=want, got=got,
               diff=mismatches(want, got))
    props = {}
    for prop in ('enable-migration', 'x-allow-pre-copy'):
        reply = vm.qmp('qom-get', path='/machine/peripheral/mtty0',
                       property=prop)
        props[prop] = reply.get('return', reply.get('error'))
    run.report('migration_properties', props=props)


def outcome(src, dst, timeout=90):
    """Wait until SRC's migration to DST has ended; what the checks look
    at: the source's query-migrate, and if it completed the
    destination's run state and, for each device, its config space and
    UART state ("config", "got": lists in the order of the devices)."""
    info = wait_migration(src, timeout=timeout)
    facts = {'status': info['status'], 'vfio': info.get('vfio'),
             'error_desc': info.get('error-desc'),
             'ram': info.get('ram', {}).get('transferred'),
             'src_status': src.status()}
    if info['status'] == 'completed':
        wait.until(lambda: dst.status() != 'inmigrate', 30,
                   'destination still loading')
        facts.update(dst_status=dst.status(),
                     config=[mtty.config() for mtty in dst.mttys],
                     got=[mtty.read_state() for mtty in dst.mttys])
    return facts


def start_migration(src, dst, caps):
    """Migrate SRC to DST (waiting, -incoming defer) over a UNIX socket,
    with CAPS on SRC."""
    set_caps(src, **caps)
    uri = 'unix:%s/%s.mig' % (RUN, dst._name)
    dst.command('migrate-incoming', uri=uri)
    src.command('migrate', uri=uri)


def slow_start(src, dst, caps):
    """Start migrating SRC to DST over a link that makes it last seconds
    (RAM filled, SLOW_LINK); query-migrate once RAM is moving."""
    src.qtest('memset 0x%x 0x%x 0x5a' % RAM_FILL)
    set_params(src, max_bandwidth=SLOW_LINK)
    start_migration(src, dst, caps)

    def moving():
        info = src.command('query-migrate')
        return info['status'] == 'active' and info['ram']['transferred'] \
            and info
    return wait.until(moving, 30, 'migration not active')


def live_migration(run, name, seed, caps, props, devices=1, **facts):
    """Migrate a source (DEVICES mttys, UART state of SEED, SEED + 1...)
    to a destination with CAPS on both sides and device properties PROPS
    on both; report the facts, and FACTS, as check NAME."""
    src, want = run.source(name, seed, props, devices)
    run.report(name, want=want, **facts,
               **run.migrate(src, name, caps, props))


@scenario('precopy_switchover_ack')
def precopy_switchover_ack(run):
    """The source streams mtty's initial data (its header) while it
    runs, and switches over once the destination has acked it."""
    live_migration(run, 'precopy_switchover_ack', 2, ACK, PRECOPY_PROPS)


@scenario('two_devices')
def two_devices(run):
    """Two mttys on each side, pre-copy with switchover-ack: the
    destination acks once both have loaded their initial data, both
    devices take the P2P step before either stops, and each one's state
    (a different one) arrives."""
    with open(os.path.join(MTTY_TYPE, 'available_instances')) as f:
        available = int(f.read())
    live_migration(run, 'two_devices', 10, ACK, PRECOPY_PROPS, devices=2,
                   available=available, src_uuids=run.src_uuids,
                   dst_uuids=run.dst_uuids)


def rewrite(vm, value):
    """Dirty the DIRTY range of VM with byte VALUE; the seconds it took."""
    started = time.monotonic()
    reply = vm.qtest('memset 0x%x 0x%x 0x%x' % (*DIRTY, value)).strip()
    if reply != 'OK':
        raise RuntimeError('qtest memset: %r' % reply)
    return round(time.monotonic() - started, 3)


@scenario('busy_ram')
def busy_ram(run):
    """RAM that the guest keeps dirtying is not finished; every handler
    still gets its turn in each round, so the device's initial data goes
    and the destination acks while RAM has a large backlog.  Rewrite
    DIRTY all along a pre-copy migration with switchover-ack over
    BUSY_LINK, sampling query-migrate (and whether the source's trace
    has the ack yet) after each rewrite, until AFTER_ACK samples after
    the ack; then stop, raise the link: the migration completes."""
    src, want = run.source('busy', 8, PRECOPY_PROPS, mem=BUSY_MEM,
                           trace=('savevm_section_end',))
    dst = run.destination('busy', PRECOPY_PROPS, ACK, mem=BUSY_MEM)
    set_params(src, max_bandwidth=BUSY_LINK)
    downtime = src.command('query-migrate-parameters')['downtime-limit']
    rewrites = [rewrite(src, 1)]
    start_migration(src, dst, ACK)
    started, samples = time.monotonic(), []
    while sum(s['acked'] for s in samples) < AFTER_ACK and \
            time.monotonic() - started < BUSY_SECONDS:
        time.sleep(DIRTY_PERIOD)
        rewrites.append(rewrite(src, len(rewrites) % 255 + 1))
        with open(src.trace_path, errors='replace') as f:
            acked = ACKED in f.read()
        info = src.command('query-migrate')
        samples.append({'seconds': round(time.monotonic() - started, 2),
                        'acked': acked, 'status': info['status'],
                        'ram': info.get('ram', {}).get('remaining'),
                        'vfio': info.get('vfio', {}).get('transferred')})
    stopped = src.command('query-migrate')['status']
    set_params(src, max_bandwidth=FAST_LINK)
    run.report('busy_ram', want=want, samples=samples, rewrites=rewrites,
               stopped=stopped, link=BUSY_LINK, downtime_limit=downtime,
               dirty=DIRTY[1], **outcome(src, dst))


@scenario('no_precopy')
def no_precopy(run):
    """x-allow-pre-copy=off: all of the device's data at the switchover."""
    live_migration(run, 'no_precopy', 3, {},
                   ('enable-migration=on', 'x-allow-pre-copy=off'))


@scenario('switchover_ack_needs_return_path', 'postcopy_refused',
          'background_snapshot_refused')
def bad_input(run):
    """Capabilities and migrations that must be refused, on one source,
    which must run on with its device after each."""
    src, (want,) = run.source('bad', 4)
    reply = src.qmp('migrate-set-capabilities', capabilities=[
        {'capability': 'switchover-ack', 'state': True}])
    caps = {c['capability']: c['state']
            for c in src.command('query-migrate-capabilities')}
    run.report('switchover_ack_needs_return_path', reply=reply,
               switchover_ack=caps.get('switchover-ack'),
               run_status=src.status())
    for seed, check, cap in ((14, 'postcopy_refused', 'postcopy-ram'),
                             (24, 'background_snapshot_refused',
                              'background-snapshot')):
        cap_reply = src.qmp('migrate-set-capabilities', capabilities=[
            {'capability': cap, 'state': True}])
        reply = src.qmp('migrate', uri='exec:cat > /dev/null')
        time.sleep(0.5)     # a migration that was not refused goes on
        info = src.command('query-migrate')
        src.qmp('migrate-set-capabilities', capabilities=[
            {'capability': cap, 'state': False}])
        run.report(check, cap_reply=cap_reply, reply=reply,
                   status=info.get('status'), device=run.src_uuid,
                   error_desc=info.get('error-desc'),
                   **run.usable(src, want, seed))
        want = expected_read(seed)


@scenario('cancel', 'migrate_after_cancel')
def cancel(run):
    """Cancel a pre-copy migration while it runs: the source runs on,
    its device holds the state it had and takes a new one, which a
    second migration then moves."""
    src, (want,) = run.source('cancel', 5)
    dst = run.destination('cancel')
    before = slow_start(src, dst, {})
    time.sleep(1)
    during = src.command('query-migrate')
    src.command('migrate_cancel')
    info = wait_migration(src, timeout=30)
    run.report('cancel', before=before.get('vfio'), during=during.get('vfio'),
               status=info['status'], **run.usable(src, want, 15))
    set_params(src, max_bandwidth=FAST_LINK)
    run.report('migrate_after_cancel', want=[expected_read(15)],
               **run.migrate(src, 'retry', {}))


@scenario('destination_killed')
def destination_killed(run):
    """Kill -9 the destination of a pre-copy migration with
    switchover-ack while it runs: the migration fails, the source runs
    on with its device."""
    src, (want,) = run.source('killed', 6)
    dst = run.destination('killed', caps=ACK)
    before = slow_start(src, dst, ACK)
    time.sleep(1)
    dst.kill()
    info = wait_migration(src, timeout=30)
    run.report('destination_killed', before=before.get('vfio'),
               status=info['status'], error_desc=info.get('error-desc'),
               **run.usable(src, want, 16))


def load_stream(run, name, path):
    """A destination loading the saved stream PATH; (vm, its run state
    once loaded, or None if it exited: a failed load ends QEMU)."""
    dst = run.destination(name)
    dst.command('migrate-incoming', uri='exec:cat %s' % path)

    def loaded():
        if not dst.is_running():
            return True
        try:
            return dst.status() != 'inmigrate'
        except Exception:   # noqa: BLE001  (QMP gone: QEMU is exiting)
            return False
    wait.until(loaded, 60, 'still loading')
    return dst, dst.status() if dst.is_running() else None


@scenario('stream_file_loads', 'corrupted_device_data',
          'truncated_device_data')
def saved_stream(run):
    """Save a migration (pre-copy, no return path) to a file; the file
    loads on a destination; with the mtty data's magic flipped, or cut
    inside the device's stop-copy data, the destination must fail
    cleanly and say which device."""
    src, (want,) = run.source('stream', 7)
    path = os.path.join(RUN, 'stream.bin')
    src.command('migrate', uri='exec:cat > %s' % path)
    info = wait_migration(src, timeout=60)
    with open(path, 'rb') as f:
        stream = f.read()
    dst, status = load_stream(run, 'stream-good', path)
    run.report('stream_file_loads', status=info['status'], size=len(stream),
               magic_at=stream.find(MAGIC), dst_status=status, want=want,
               got=dst.mtty.read_state() if status else None)
    dst.shutdown()

    bad = os.path.join(RUN, 'bad.bin')
    flipped = stream.replace(MAGIC, bytes([MAGIC[0] ^ 0xff]) + MAGIC[1:])
    fifo = bytes.fromhex(want[0]['fifo'])
    cut = stream.find(fifo, stream.find(MAGIC) + 1)
    for check, data in (('corrupted_device_data', flipped),
                        ('truncated_device_data',
                         stream[:cut + len(fifo)] if cut > 0 else b'')):
        with open(bad, 'wb') as f:
            f.write(data)
        dst, status = load_stream(run, check, bad)
        run.report(check, dst_status=status, size=len(data),
                   magics=stream.count(MAGIC), device=run.dst_uuid,
                   dst_name=dst._name)


def main(argv):
    qemu, wanted = argv[1], set(argv[2:])
    run = Run(qemu)
    print('FERRY-VFIO-DRIVER mdevs %s %s' % (run.src_uuid, run.dst_uuid),
          flush=True)
    for name, checks, func in SCENARIOS:
        if wanted and name not in wanted:
            continue
        started, error = time.monotonic(), None
        try:
            func(run)
        except Exception:   # noqa: BLE001  (reported on the check lines)
            error = traceback.format_exc()[-3000:]
        run.finish(checks, started, error)
    print(END, flush=True)


if __name__ == '__main__':
    main(sys.argv)
