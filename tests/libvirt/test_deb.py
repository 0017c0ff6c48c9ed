"""make deb: Ferry's Debian packages replace stock QEMU, libvirt uses them,
and removing them restores stock.

The packages are make deb's output ($FERRY_BUILD_DIR/deb), built here by
scripts/ferry/deb when absent.  They are never installed on this host,
whose /usr/bin/qemu-system-x86_64 is the stock peer of every other test:
the round trip runs in an isolated root, an overlayfs over / (upper layer
on a tmpfs) in new mount, PID, network, IPC and UTS namespaces, entered
with nsenter + chroot.  When the namespace's first process is killed,
everything in it (libvirtd, QEMU) dies and every mount vanishes; the host
is checked to be untouched.

Inside: apt-get installs the two .debs (which must remove stock through
Conflicts/Replaces), a private libvirtd finds /usr/bin/qemu-system-x86_64
and -ppc64 by itself, test_libvirt.py runs against the system paths
(FERRY_PREFIX=/usr: its domains, migrations, save/restore); apt-get removes
Ferry, stock is reinstalled from its .debs (apt's cache, or apt-get
download on the host beforehand: nothing inside needs the network), and
the package set is what it was before.

Skipped only where the isolation cannot be set up (not root, no
overlayfs, no unshare/nsenter) or the stock .debs cannot be obtained.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BUILD = os.environ.get('FERRY_BUILD_DIR', os.path.join(TOP, 'build'))
DEB_DIR = os.path.join(BUILD, 'deb')
GUEST = os.path.join(BUILD, 'guests', 'x86-dirty.img')
FERRY = {'ferry-qemu-system-x86': 'qemu-system-x86',
         'ferry-qemu-system-ppc': 'qemu-system-ppc'}
EMULATORS = {'x86_64': ('/usr/bin/qemu-system-x86_64', 'ferry-qemu-system-x86'),
             'ppc64': ('/usr/bin/qemu-system-ppc64', 'ferry-qemu-system-ppc')}
FILES = '/ferry-deb-files'      # inside the isolated root, read-only
VIRSH = 'virsh -c qemu:///system '

QEMU_CONF = '''user = "root"
group = "root"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
security_driver = "none"
'''

# PID 1 of the namespaces: mount the isolated root, say so, then reap the
# orphans (libvirtd and QEMU daemonize; libvirt waits for a killed QEMU to
# be gone, which a zombie never is).
SETUP = r'''
set -e
t=$1 files=$2 top=$3 scratch=$4
mount -t tmpfs -o size=4g,mode=0755 ferry-deb "$t"
mkdir "$t/upper" "$t/work" "$t/root"
mount -t overlay ferry-deb-root \
    -o "lowerdir=/,upperdir=$t/upper,workdir=$t/work" "$t/root" ||
    { echo "overlayfs: cannot mount an overlay of / here" >&2; exit 3; }
r=$t/root
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
mkdir -p "$r$FERRY_FILES"
mount --bind "$files" "$r$FERRY_FILES"
mount -o remount,bind,ro "$r$FERRY_FILES"
# The repository (the libvirt suite, the guests, the base's python/qemu)
# at its own path, as an overlay too: QEMU opens the guest's disk for
# writing, and nothing may reach the host's copy.  Migrations between
# the suite's daemons go over this namespace's loopback.
mkdir -p "$t/top-upper" "$t/top-work" "$r$top"
mount -t overlay ferry-deb-top \
    -o "lowerdir=$top,upperdir=$t/top-upper,workdir=$t/top-work" "$r$top"
ip link set lo up
# The suite's scratch files (disk images QEMU opens with O_DIRECT, which
# this tmpfs refuses) on the host's disk, in a directory of their own.
mkdir -p "$r/var/tmp/ferry-suite"
mount --bind "$scratch" "$r/var/tmp/ferry-suite"
echo ready
exec /usr/bin/python3 -c '
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
'
'''


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def host_packages():
    out = sh(['dpkg-query', '-W', '-f', '${Package} ${Version} ${db:Status-Abbrev}\n'],
             check=True).stdout
    return sorted(out.splitlines())


def sha256(path):
    return sh(['sha256sum', path], check=True).stdout.split()[0]


def isolation_unavailable():
    if os.geteuid() != 0:
        return 'not root: the isolated root needs mount namespaces and overlayfs'
    for tool in ('unshare', 'nsenter', 'chroot'):
        if not shutil.which(tool):
            return 'no %s on this host' % tool
    with open('/proc/filesystems') as f:
        if 'overlay' not in f.read().split():
            sh(['modprobe', 'overlay'])
    with open('/proc/filesystems') as f:
        if 'overlay' not in f.read().split():
            return 'the kernel has no overlayfs'
    return None


def ferry_debs():
    """make deb's packages, built by scripts/ferry/deb if absent."""
    def found():
        debs = {}
        for pkg in FERRY:
            hits = sorted(glob.glob(os.path.join(DEB_DIR, pkg + '_*.deb')))
            if hits:
                debs[pkg] = hits[-1]
        return debs
    debs = found()
    if len(debs) < len(FERRY):
        if not os.path.exists(os.path.join(BUILD, 'qemu', 'qemu-system-x86_64')):
            pytest.skip('no Ferry build in %s/qemu (run make)' % BUILD)
        r = sh([os.path.join(TOP, 'scripts', 'ferry', 'deb'), DEB_DIR],
               env=dict(os.environ, FERRY_BUILD_DIR=BUILD))
        assert r.returncode == 0, 'scripts/ferry/deb failed:\n' + r.stdout + r.stderr
        debs = found()
    assert set(debs) == set(FERRY), 'scripts/ferry/deb made %s' % debs
    return debs


def stock_debs(dest):
    """The installed stock qemu-system-x86/-ppc as .debs in dest: from apt's
    cache, else apt-get download on the host (nothing is installed)."""
    arch = sh(['dpkg', '--print-architecture'], check=True).stdout.strip()
    versions = {}
    for pkg in FERRY.values():
        r = sh(['dpkg-query', '-W', '-f', '${Version} ${db:Status-Abbrev}', pkg])
        if r.returncode or not r.stdout.endswith('ii '):
            pytest.skip('stock %s is not installed on the host: nothing to restore' % pkg)
        version = r.stdout.split()[0]
        versions[pkg] = version
        name = '%s_%s_%s.deb' % (pkg, version.replace(':', '%3a'), arch)
        cached = os.path.join('/var/cache/apt/archives', name)
        if os.path.exists(cached):
            shutil.copy(cached, dest)
            continue
        r = sh(['apt-get', 'download', '-q', '%s=%s' % (pkg, version)], cwd=dest)
        if r.returncode or not os.path.exists(os.path.join(dest, name)):
            pytest.skip('stock %s %s is neither in /var/cache/apt/archives nor '
                        'downloadable from the archive (apt-get download: %s): '
                        'cannot restore stock' % (pkg, version, r.stderr.strip()[-200:]))
    return versions


class IsolatedRoot:
    """An overlay of / in its own namespaces; run() executes in a chroot there."""

    def __init__(self, files):
        self.dir = tempfile.mkdtemp(prefix='ferry-deb-ns-')
        self.scratch = tempfile.mkdtemp(prefix='ferry-deb-suite-', dir='/var/tmp')
        self.root = os.path.join(self.dir, 'root')
        self.proc = subprocess.Popen(
            ['unshare', '--mount', '--propagation', 'private', '--pid', '--fork',
             '--net', '--ipc', '--uts', 'bash', '-c', SETUP, 'setup',
             self.dir, files, TOP, self.scratch],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, FERRY_FILES=FILES))
        line = self.proc.stdout.readline().strip()
        if line != 'ready':
            self.proc.wait(timeout=10)
            self.error = self.proc.stderr.read().strip()
            self.pid = None
            return
        self.error = None
        with open('/proc/%d/task/%d/children' % (self.proc.pid, self.proc.pid)) as f:
            self.pid = int(f.read().split()[0])

    def run(self, cmd, timeout=180):
        return sh(['nsenter', '-t', str(self.pid), '-m', '-p', '-n', '-i', '-u', '--',
                   'chroot', self.root, '/bin/sh', '-c', cmd],
                  timeout=timeout, env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin',
                                        'DEBIAN_FRONTEND': 'noninteractive',
                                        'LANG': 'C', 'HOME': '/root'})

    def check(self, cmd, what, timeout=180):
        start = time.time()
        r = self.run(cmd, timeout)
        print('%6.1f s  %s' % (time.time() - start, what))
        assert r.returncode == 0, '%s: `%s` exited %d:\n%s%s' % (
            what, cmd, r.returncode, r.stdout[-3000:], r.stderr[-3000:])
        return r.stdout

    def close(self):
        # Killing PID 1 kills everything in the PID namespace (libvirtd,
        # QEMU); with its last process gone, the mount namespace and every
        # mount in it (tmpfs, overlay) go too.
        if self.pid:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.rmdir(self.dir)
        shutil.rmtree(self.scratch)


@pytest.fixture(scope='module')
def debs():
    return ferry_debs()


def deb_field(deb, field):
    return sh(['dpkg-deb', '-f', deb, field], check=True).stdout.strip()


def test_deb_fields(debs):
    """Version says Ferry; Provides/Conflicts/Replaces name the stock package;
    the emulators are at stock's paths; nothing of qemu-system-common."""
    revision = open(os.path.join(BUILD, 'base', 'REVISION')).read().strip()
    for pkg, deb in debs.items():
        stock = FERRY[pkg]
        version = deb_field(deb, 'Version')
        assert version.startswith(revision + '+ferry'), version
        assert sh(['dpkg', '--compare-versions', version, 'gt', revision]).returncode == 0
        assert '%s (= %s)' % (stock, version) in deb_field(deb, 'Provides')
        assert deb_field(deb, 'Conflicts') == stock
        assert deb_field(deb, 'Replaces') == stock
        depends = deb_field(deb, 'Depends')
        for dep in ('qemu-system-common', 'qemu-system-data', 'libc6'):
            assert dep in depends, (pkg, depends)
        files = sh(['dpkg-deb', '-c', deb], check=True).stdout
        assert '/usr/share/qemu/' not in files
        assert '/usr/bin/qemu-img' not in files
    x86 = sh(['dpkg-deb', '-c', debs['ferry-qemu-system-x86']]).stdout
    assert './usr/bin/qemu-system-x86_64' in x86 and './usr/bin/kvm ->' in x86
    assert 'seabios' in deb_field(debs['ferry-qemu-system-x86'], 'Depends')
    ppc = sh(['dpkg-deb', '-c', debs['ferry-qemu-system-ppc']]).stdout
    assert './usr/bin/qemu-system-ppc64' in ppc


def test_deb_round_trip(debs, tmp_path):
    """Install over stock, libvirt on the system paths, remove, stock again."""
    why = isolation_unavailable()
    if why:
        pytest.skip('cannot isolate the install from this host: ' + why)
    if not os.path.exists(GUEST):
        pytest.skip('no test guest %s (run make guests)' % GUEST)
    files = tmp_path / 'files'
    files.mkdir()
    try:
        for deb in debs.values():
            shutil.copy(deb, files)
        stock_versions = stock_debs(str(files))
        isolated_round_trip(str(files), stock_versions)
    finally:
        shutil.rmtree(str(files))      # pytest keeps tmp_path: 40 MB of .debs


def isolated_round_trip(files, stock_versions):
    host_before = host_packages()
    host_qemu = sha256('/usr/bin/qemu-system-x86_64')

    root = IsolatedRoot(files)
    try:
        if root.error is not None:
            # unshare itself failing (no CAP_SYS_ADMIN, e.g. in a container)
            # or the overlay not mounting: the isolation is not possible.
            if root.proc.returncode == 3 or root.error.startswith('unshare:'):
                pytest.skip('cannot isolate the install from this host: ' + root.error)
            pytest.fail('setting up the isolated root failed: ' + root.error)
        round_trip(root, stock_versions)
    finally:
        root.close()
    assert not os.path.exists(root.dir), 'left %s behind' % root.dir
    assert not os.path.exists(root.scratch), 'left %s behind' % root.scratch
    assert host_packages() == host_before, 'the host\'s packages changed'
    assert sha256('/usr/bin/qemu-system-x86_64') == host_qemu


def round_trip(root, stock_versions):
    before = root.check("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'"
                        " | grep ' ii ' | sort", 'list packages')

    # man-db's trigger re-indexes every page on each dpkg run: seconds of
    # nothing this test looks at (the file is the overlay's copy).
    root.check('rm -f /var/lib/man-db/auto-update', 'no man-db trigger')

    # Install: apt removes stock through Conflicts/Replaces.
    out = root.check('apt-get install -y -q --no-install-recommends %s/ferry-*.deb' % FILES,
                     'install the Ferry packages')
    for stock in FERRY.values():
        assert 'Removing %s ' % stock in out, out
    for arch, (path, pkg) in EMULATORS.items():
        version = root.check(path + ' --version', 'run ' + path)
        assert '(Ferry, Debian ' in version, version
        assert root.check('dpkg -S ' + path, 'dpkg -S').split(':')[0] == pkg
    assert root.check('readlink /usr/bin/kvm', 'kvm link').strip() == 'qemu-system-x86_64'
    # pseries finds its firmware (SLOF, from qemu-system-data) at the
    # system paths: it is still running when timeout stops it.
    r = root.run('timeout 3 qemu-system-ppc64 -M pseries -m 512 -display none '
                 '-nodefaults -serial none', timeout=30)
    assert r.returncode == 124, 'pseries did not start: %s' % r.stderr
    for stock in FERRY.values():
        st = root.run("dpkg-query -W -f '${db:Status-Abbrev}' " + stock).stdout
        assert not st.startswith('ii'), '%s still installed: %s' % (stock, st)

    # A private libvirtd finds Ferry at the system paths by itself (no
    # --emulatorbin); the suite below runs domains on it.
    root.check("cat >> /etc/libvirt/qemu.conf <<'EOF'\n%sEOF" % QEMU_CONF,
               'configure libvirt')
    root.check('libvirtd -d -p /run/ferry-libvirtd.pid </dev/null >/tmp/libvirtd.log 2>&1',
               'start libvirtd')
    deadline = time.time() + 30
    while root.run(VIRSH + 'version').returncode:
        assert time.time() < deadline, 'libvirtd did not answer in 30 s'
        time.sleep(0.3)
    for arch, (path, _) in EMULATORS.items():
        caps = root.check(VIRSH + 'domcapabilities --virttype qemu --arch ' + arch,
                          'domcapabilities ' + arch)
        assert '<path>%s</path>' % path in caps, caps[:2000]
    root.check('kill $(cat /run/ferry-libvirtd.pid)', 'stop libvirtd')

    # The libvirt suite itself against the system paths, where the
    # packages put Ferry: its two daemons, a TCG domain that must say
    # Ferry in query-version, migrations, save/restore.
    out = root.check('cd %s && PYTHONDONTWRITEBYTECODE=1 FERRY_PREFIX=/usr '
                     'FERRY_BUILD_DIR=%s python3 -m pytest -q -p no:cacheprovider '
                     '--basetemp=/var/tmp/ferry-suite/pytest '
                     'tests/libvirt/test_libvirt.py' % (TOP, BUILD),
                     'the libvirt suite against /usr/bin', timeout=900)
    summary = out.strip().splitlines()[-1]
    assert ' passed' in summary and 'failed' not in summary, out[-3000:]
    print('libvirt suite at /usr/bin: ' + summary)

    # Remove Ferry: its files go; reinstall stock from its .debs.
    root.check('apt-get remove -y -q ' + ' '.join(FERRY), 'remove the Ferry packages')
    for path, _ in EMULATORS.values():
        assert root.run('test -e ' + path).returncode != 0, path + ' left behind'
    root.check('apt-get install -y -q --no-install-recommends %s/qemu-system-*.deb' % FILES,
               'reinstall stock')
    for arch, (path, pkg) in EMULATORS.items():
        version = root.check(path + ' --version', 'run stock ' + path)
        assert 'Ferry' not in version, version
        stock = FERRY[pkg]
        assert root.check('dpkg -S ' + path, 'dpkg -S').split(':')[0] == stock
        assert root.check("dpkg-query -W -f '${Version}' " + stock,
                          'stock version') == stock_versions[stock]
    after = root.check("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'"
                       " | grep ' ii ' | sort", 'list packages')
    assert after == before, 'the package set differs after the round trip'
