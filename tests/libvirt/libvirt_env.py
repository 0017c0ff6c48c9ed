"""Private libvirtd instances for the libvirt tests, and domains in them.

Bookworm's libvirt 9.0 is the management stack Ferry's users run it
under; these helpers start it without touching the host's own libvirt:

  Daemon(name)        a libvirtd in its own mount namespace (unshare -m),
                      with tmp dirs bound over /etc/libvirt, /run/libvirt,
                      /var/lib/libvirt, /var/cache/libvirt and
                      /var/log/libvirt.  No systemd, no virtlogd (QEMU's
                      output goes to a file), QEMU runs as root with no
                      security driver, no cgroups and no namespace of its
                      own.  Each daemon gets its own host UUID and
                      migration ports, so that two of them migrate
                      domains to each other like two hosts.  Its socket
                      lives under the daemon's root dir, which every
                      namespace sees (daemon.uri).  Its $PATH holds
                      one qemu-system-x86_64 (Ferry's, or the EMULATOR
                      given), so that it starts in 3 s instead of
                      probing every emulator installed.
  start_daemon(emulator), start_daemons(n)
                      one, or N (for migrations), started; stop() each,
                      even on failure: it destroys every domain, stops
                      libvirtd and kills any QEMU it left behind (by its
                      pid file), and removes its dirs.
  Domain              one domain: virsh, QMP and HMP through
                      "virsh qemu-monitor-command", guest memory through
                      pmemsave, so that ferry.machine's dirty_pages() and
                      pass_counter() read it as they read a QEMUMachine.
  dirty_domain_xml(), define_dirty_domain()
                      the boot-sector guest that dirties memory
                      (tests/guests/x86-dirty.S) as a <domain type='qemu'>.
  check_guest(dom)    that guest is intact and runs on (memory, console).
  migrate(), start_migration(), finish_migration(), poll_source()
                      virsh migrate, in the foreground or not.

Where the binaries are (besides tests/functional/ferry/env.py):
  FERRY_PREFIX        Ferry installed by scripts/ferry/install
                      (default $FERRY_BUILD_DIR/prefix)
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from ferry import env, wait
from ferry.machine import DIRTY_END, dirty_pages, pass_counter
from ferry.pattern import check_dirty_pattern, pattern_passes

PREFIX = os.environ.get('FERRY_PREFIX', os.path.join(env.BUILD, 'prefix'))
# The directories libvirtd (as root) and its QEMU driver use.
PRIVATE_DIRS = {'etc': '/etc/libvirt', 'run': '/run/libvirt',
                'lib': '/var/lib/libvirt', 'cache': '/var/cache/libvirt',
                'log': '/var/log/libvirt'}
QEMU_USER = 'libvirt-qemu'
VIRSH_TIMEOUT = 120
# MiB/s: libvirt's "unlimited" migration speed (INT64_MAX bytes/s)
UNLIMITED_SPEED = 8796093022207
# Compression threads under libvirt.  The guest rewrites its 25600 pages
# in every round faster than 2 threads compress them (35 k pages/s
# here), and QEMU 7.2 (stock too) predicts the downtime from the
# compressed bytes sent per second against the uncompressed bytes left
# (expected-downtime 30-400 s): a live compressed migration of this
# guest does not converge by itself, so the tests let libvirt suspend
# it after a few seconds (--timeout-suspend), as an operator would.
COMPRESSED = ['--compressed', '--comp-methods', 'mt', '--comp-mt-level', '1',
              '--comp-mt-threads', '2', '--comp-mt-dthreads', '2']


def missing_tools():
    """Why libvirt cannot be used here, or None."""
    for tool in ('libvirtd', 'virsh', 'unshare'):
        if not shutil.which(tool) and not os.path.exists('/usr/sbin/' + tool):
            return '%s is not installed (packages libvirt-daemon, ' \
                   'libvirt-clients, libvirt-daemon-driver-qemu)' % tool
    if os.geteuid() != 0:
        return 'a private libvirtd needs root (mount namespace)'
    return None


def ferry_emulator(target='x86_64'):
    """Ferry's installed qemu-system-TARGET (scripts/ferry/install)."""
    return os.path.join(PREFIX, 'bin', 'qemu-system-' + target)


def ensure_qemu_user():
    """libvirt's QEMU driver refuses to start without its user and group
    (Debian's libvirt-daemon-system creates them; we do not install it)."""
    def known(cmd):
        return subprocess.run(cmd, capture_output=True).returncode == 0
    if not known(['getent', 'group', QEMU_USER]):
        subprocess.run(['groupadd', '-r', QEMU_USER], check=True)
    if not known(['getent', 'passwd', QEMU_USER]):
        subprocess.run(['useradd', '-r', '-g', QEMU_USER, '-d',
                        '/var/lib/libvirt', '-s', '/usr/sbin/nologin',
                        QEMU_USER], check=True)


def free_port_range(count=16, low=49152, high=65000, avoid=()):
    """A base port such that [base, base+COUNT) can all be bound now."""
    for base in range(low + (os.getpid() % 64) * count, high - count, count):
        if any(base <= a < base + count for a in avoid):
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(('0.0.0.0', port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError('no %d free ports for migrations' % count)


class VirshError(AssertionError):
    pass


class Daemon:
    """A private libvirtd (see the top of this file).  ROOT_PARENT is
    the dir under which its root dir is made: daemons that migrate to
    each other must see each other's sockets (any dir outside the
    private ones will do)."""

    def __init__(self, name, root_parent=None, port_base=None, emulator=None):
        self.name = name
        self.emulator = emulator or ferry_emulator()
        self.root = tempfile.mkdtemp(prefix='ferry-libvirt-%s-' % name,
                                     dir=root_parent)
        self.dirs = {k: os.path.join(self.root, k) for k in PRIVATE_DIRS}
        self.host_uuid = str(uuid.uuid4())
        self.port_base = port_base or free_port_range()
        self.socket = os.path.join(self.dirs['run'], 'libvirt-sock')
        self.uri = 'qemu+unix:///system?socket=' + self.socket
        self.proc = None
        self.log = os.path.join(self.dirs['log'], 'libvirtd.log')

    def write_config(self):
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        etc = self.dirs['etc']
        with open(os.path.join(etc, 'libvirtd.conf'), 'w') as f:
            f.write('host_uuid = "%s"\n' % self.host_uuid)
            f.write('unix_sock_group = "root"\nunix_sock_rw_perms = "0700"\n')
            f.write('auth_unix_ro = "none"\nauth_unix_rw = "none"\n')
            f.write('log_outputs = "3:file:%s"\n' % self.log)
        with open(os.path.join(etc, 'qemu.conf'), 'w') as f:
            f.write('user = "root"\ngroup = "root"\n')
            f.write('dynamic_ownership = 0\nremember_owner = 0\n')
            f.write('security_driver = "none"\n')
            f.write('stdio_handler = "file"\n')
            f.write('cgroup_controllers = [ ]\n')
            f.write('namespaces = [ ]\n')
            # (migration_host/migration_address may not name this
            # machine: libvirtd refuses 127.0.0.1; its hostname serves)
            f.write('migration_port_min = %d\nmigration_port_max = %d\n'
                    % (self.port_base, self.port_base + 15))
        for conf in ('libvirt.conf', 'libvirt-admin.conf'):
            if os.path.exists('/etc/libvirt/' + conf):
                shutil.copy('/etc/libvirt/' + conf, etc)

    def start(self, timeout=90):
        self.launch()
        return self.wait_up(timeout)

    def launch(self):
        """Start libvirtd; wait_up() waits until it answers (it probes
        every QEMU binary on $PATH first, 10 s here: start daemons
        together)."""
        ensure_qemu_user()
        self.write_config()
        # (a daemon is stopped and started again in the same root dir)
        if os.path.exists(os.path.join(self.root, 'libvirtd.out')):
            os.rename(os.path.join(self.root, 'libvirtd.out'),
                      os.path.join(self.root, 'libvirtd.out.old'))
        for path in PRIVATE_DIRS.values():
            os.makedirs(path, exist_ok=True)    # mount points on the host
        mounts = ' && '.join('mount --bind %s %s' % (self.dirs[k], path)
                             for k, path in PRIVATE_DIRS.items())
        # libvirtd probes every qemu-system-* on $PATH when it starts
        # (10 s here): give it the one emulator its domains run.
        bindir = os.path.join(self.root, 'bin')
        os.makedirs(bindir, exist_ok=True)
        link = os.path.join(bindir, 'qemu-system-x86_64')
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(self.emulator, link)
        script = '%s && PATH=%s:/usr/sbin:/sbin exec /usr/sbin/libvirtd ' \
            '-f %s -p %s' % (mounts, bindir, os.path.join(self.dirs['etc'], 'libvirtd.conf'),
            os.path.join(self.root, 'libvirtd.pid'))
        self.stdout = open(os.path.join(self.root, 'libvirtd.out'), 'w')
        self.proc = subprocess.Popen(
            ['unshare', '-m', '--propagation', 'private', 'sh', '-c', script],
            stdout=self.stdout, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_up(self, timeout=90):
        def up():
            if self.proc.poll() is not None:
                raise RuntimeError('libvirtd %s exited %d: %s' % (
                    self.name, self.proc.returncode, self.tail()))
            return os.path.exists(self.socket) and self.virsh(
                'version', check=False).returncode == 0
        try:
            wait.until(up, timeout, lambda: 'libvirtd %s did not answer: %s'
                       % (self.name, self.tail()), interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def tail(self, n=3000):
        text = ''
        for path in (os.path.join(self.root, 'libvirtd.out'), self.log):
            try:
                with open(path, errors='replace') as f:
                    text += f.read()[-n:]
            except OSError:
                pass
        return text

    def virsh(self, *args, check=True, timeout=VIRSH_TIMEOUT):
        """Run virsh against this daemon; with CHECK a failure raises
        VirshError saying what virsh said."""
        proc = subprocess.run(['virsh', '-q', '-c', self.uri] + list(args),
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise VirshError('virsh %s (%s): %s' % (' '.join(args), self.name,
                                                    proc.stderr.strip()))
        return proc

    def out(self, *args, **kw):
        return self.virsh(*args, **kw).stdout.strip()

    def domains(self):
        return self.out('list', '--all', '--name').split()

    def qemu_pids(self):
        pids = []
        qemu_run = os.path.join(self.dirs['run'], 'qemu')
        for f in os.listdir(qemu_run) if os.path.isdir(qemu_run) else ():
            if f.endswith('.pid'):
                try:
                    with open(os.path.join(qemu_run, f)) as pf:
                        pids.append(int(pf.read().strip()))
                except (OSError, ValueError):
                    pass
        return pids

    def qemu_log(self, dom):
        try:
            with open(os.path.join(self.dirs['log'], 'qemu', dom + '.log'),
                      errors='replace') as f:
                return f.read()[-3000:]
        except OSError:
            return ''

    def stop(self):
        """Destroy every domain, stop libvirtd, kill what it left."""
        pids = []
        if self.proc and self.proc.poll() is None:
            try:
                pids = self.qemu_pids()
                for dom in self.domains():
                    self.virsh('destroy', dom, check=False, timeout=30)
                    self.virsh('undefine', dom, '--managed-save', check=False,
                               timeout=30)
            except (subprocess.TimeoutExpired, VirshError):
                pass
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in set(pids + self.qemu_pids()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc:
            self.stdout.close()
        self.proc = None
        if not os.environ.get('FERRY_KEEP_LIBVIRT'):
            shutil.rmtree(self.root, ignore_errors=True)


def start_daemons(count=2, root_parent=None):
    """COUNT private daemons (with different host UUIDs and migration
    ports), started; stop() each when done."""
    daemons = []
    try:
        for i in range(count):
            avoid = [b + p for d in daemons for b in [d.port_base]
                     for p in range(16)]
            base = free_port_range(avoid=avoid)
            daemons.append(Daemon('host%c' % (ord('a') + i), root_parent,
                                  port_base=base))
            daemons[-1].launch()
        for d in daemons:
            d.wait_up()
    except BaseException:
        for d in daemons:
            d.stop()
        raise
    return daemons


def start_daemon(emulator=None, root_parent=None, name='host'):
    """One private daemon, started (stop() it when done); EMULATOR is
    the qemu-system-x86_64 it finds on its $PATH (default: Ferry's
    installed one), the domains' <emulator> still says which runs."""
    return Daemon(name, root_parent, emulator=emulator).start()


def dirty_domain_xml(name, emulator, image, serial, mem_mib=128,
                     machine='pc-i440fx-7.2', domtype='qemu', features=''):
    """The x86-dirty boot-sector guest as a libvirt domain: IMAGE its
    (writable copy of the) boot disk, SERIAL the file its COM1 appends
    to."""
    return """<domain type='%(domtype)s'>
  <name>%(name)s</name>
  <memory unit='MiB'>%(mem)d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='%(machine)s'>hvm</type><boot dev='hd'/></os>
  <features>%(features)s</features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%(emulator)s</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='%(image)s'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <serial type='file'>
      <source path='%(serial)s' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
""" % dict(name=name, emulator=emulator, image=image, serial=serial,
           mem=mem_mib, machine=machine, domtype=domtype, features=features)


class MonitorError(AssertionError):
    pass


class Domain:
    """Domain NAME of DAEMON (which moves when the domain migrates:
    assign .daemon).  DIRTY_END is where the guest's dirty range ends
    (ferry.machine.DIRTY_END), SERIAL its console file."""

    def __init__(self, daemon, name, dirty_end=None, serial=None):
        self.daemon, self.name = daemon, name
        self._name = name       # as QEMUMachine, for ferry helpers' messages
        self.dirty_end = dirty_end
        self.serial_path = serial

    def virsh(self, *args, **kw):
        return self.daemon.virsh(*args, **kw)

    def qmp(self, cmd, **args):
        """The raw QMP answer to CMD (a dict with 'return' or 'error')."""
        msg = {'execute': cmd}
        if args:
            msg['arguments'] = {k.replace('_', '-'): v for k, v in args.items()}
        out = self.daemon.out('qemu-monitor-command', self.name, json.dumps(msg))
        return json.loads(out)

    def command(self, cmd, **args):
        answer = self.qmp(cmd, **args)
        if 'error' in answer:
            raise MonitorError('%s on %s: %s' % (cmd, self.name, answer['error']))
        return answer['return']

    def hmp(self, line):
        return self.daemon.out('qemu-monitor-command', self.name, '--hmp', line)

    def state(self):
        return self.daemon.out('domstate', self.name)

    def read_memory(self, addr, size):
        """Guest-physical [ADDR, ADDR+SIZE), by pmemsave (QEMU sees the
        daemon's root dir: nothing in it is private)."""
        path = os.path.join(self.daemon.root, 'mem-%s-%x.bin' % (self.name, addr))
        self.command('pmemsave', val=addr, size=size, filename=path)
        try:
            with open(path, 'rb') as f:
                return f.read()
        finally:
            os.unlink(path)

    def serial(self):
        try:
            with open(self.serial_path, 'rb') as f:
                return f.read().decode('latin-1')
        except (OSError, TypeError):
            return ''

    def wait_serial(self, text, timeout=60, after=0):
        wait.until(lambda: text in self.serial()[after:], timeout,
                   lambda: '%s did not print %r; serial %r; log:\n%s'
                   % (self.name, text, self.serial()[-200:],
                      self.daemon.qemu_log(self.name)))

    def migration_status(self):
        return self.command('query-migrate').get('status')


def wait_state(dom, state, timeout=30):
    wait.until(lambda: dom.state() == state, timeout,
               lambda: '%s is %s, not %s' % (dom.name, dom.state(), state))


def define_dirty_domain(daemon, name, emulator=None, image='x86-dirty.img',
                        mem_mib=128, domtype='qemu', features='', start=True):
    """Define domain NAME on DAEMON running the dirty guest (a writable
    copy of IMAGE next to the daemons' root dirs, where every daemon and
    QEMU sees it, as does its serial file) on EMULATOR (default Ferry's);
    with START start it and wait until the guest writes."""
    shared = os.path.dirname(daemon.root)
    img = os.path.join(shared, name + '.img')
    shutil.copy(env.guest(image), img)
    serial = os.path.join(shared, name + '.serial')
    if os.path.exists(serial):
        os.unlink(serial)
    xml = os.path.join(shared, name + '.xml')
    with open(xml, 'w') as f:
        f.write(dirty_domain_xml(name, emulator or ferry_emulator(), img,
                                 serial, mem_mib, domtype=domtype,
                                 features=features))
    daemon.virsh('define', xml)
    dom = Domain(daemon, name, DIRTY_END[image], serial)
    if start:
        dom.virsh('start', name)
        dom.wait_serial('FP')
    return dom


def check_guest(dom, min_passes=0):
    """DOM's guest is intact and runs.  Suspended: its dirty range holds
    the pattern (no write lost or misplaced), whose pass value agrees
    with the pass counter, and that counter is at least MIN_PASSES (the
    guest did not start over); resumed: it counts on, and prints on its
    console.  Returns the pass counter."""
    dom.virsh('suspend', dom.name)
    try:
        values = dirty_pages(dom)
        passes = pass_counter(dom)
        printed = len(dom.serial())
    finally:
        dom.virsh('resume', dom.name)
    problem = check_dirty_pattern(values)
    assert problem is None, '%s: %s' % (dom.name, problem)
    assert pattern_passes(values) in (passes & 0xff, (passes + 1) & 0xff), \
        '%s: pages say pass %d, the counter %d' % (
            dom.name, pattern_passes(values), passes)
    assert passes >= min_passes, '%s: pass counter went back from %d to %d' \
        % (dom.name, min_passes, passes)
    wait.until(lambda: pass_counter(dom) > passes, 30,
               '%s makes no progress' % dom.name, interval=0.2)
    dom.wait_serial('P', after=printed)
    return passes


def migrate_args(dom, dst, flags=(), xml=None):
    """virsh's arguments to migrate DOM live to daemon DST.  --unsafe:
    the disk is a local file that both "hosts" share, which libvirt
    cannot know (and the guest never writes it)."""
    args = ['migrate', '--live', '--unsafe'] + list(flags) + [dom.name, dst.uri]
    if xml:
        args += ['--xml', xml]
    return args


def migrate(dom, dst, flags=(), xml=None, timeout=300):
    """Migrate DOM live to DST with virsh, which must succeed."""
    dom.virsh(*migrate_args(dom, dst, flags, xml), timeout=timeout)
    dom.daemon = dst


def start_migration(dom, dst, flags=(), xml=None):
    """virsh migrate in the background: a Popen, for finish_migration()."""
    return subprocess.Popen(['virsh', '-q', '-c', dom.daemon.uri] +
                            migrate_args(dom, dst, flags, xml),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish_migration(proc, timeout=300):
    """(exit status, stderr) of a start_migration() virsh."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return 'timeout', err
    return proc.returncode, err.strip()


def migratable_xml(dom, emulator, path):
    """DOM's migratable XML with EMULATOR as <emulator>, written to
    PATH: what the destination runs (--xml), for another binary."""
    xml = dom.daemon.out('dumpxml', '--migratable', dom.name)
    xml = re.sub(r'<emulator>[^<]*</emulator>',
                 '<emulator>%s</emulator>' % emulator, xml)
    with open(path, 'w') as f:
        f.write(xml)
    return path


def poll_source(dom, proc, until, timeout=120):
    """Poll query-migrate on DOM's (source) QEMU while virsh PROC
    migrates it, until UNTIL(info) is true; that info."""
    def seen():
        if proc.poll() is not None:
            raise AssertionError('migration ended before the check: %s %s'
                                 % (proc.returncode, proc.stderr.read()))
        info = dom.command('query-migrate')
        return info if until(info) else None
    return wait.until(seen, timeout, lambda: 'not seen while migrating: %s'
                      % dom.command('query-migrate'), interval=0.2)


def watch_source(dom, proc, sample):
    """SAMPLE() every 0.2 s while virsh PROC migrates DOM away (its
    source QEMU ends with the migration): the samples taken."""
    samples = []
    while proc.poll() is None:
        try:
            samples.append(sample())
        except AssertionError:
            # The source QEMU is gone, or going: so is the migration.
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                raise
            break
        time.sleep(0.2)
    return samples
