"""The Makefile configures QEMU once, whatever order the README's commands
come in, even on a fresh machine where "make" itself installs ccache.

A real build takes many minutes, so these tests run the real Makefile and
the real compiler wrapper (scripts/ferry/cc) in a scratch copy of the
repository where every other program the Makefile starts is a stub that
logs what it was asked to do:

  scripts/ferry/install-deps  "installs" ccache (puts a logging ccache on
                              PATH), as apt-get does on a fresh machine
  base/fetch, prepare         make an empty base and prepared tree
  build/src/configure         logs its arguments and writes build.ninja
  ninja                       "compiles" one file with the configured
                              --cc, so the log shows whether ccache ran
  gcc, guests, tests/run,     log and succeed
  demo, bench

PATH holds the stubs and the host's programs minus ccache, so ccache is
absent when make starts and present once install-deps ran.  A second
configure is what rebuilt all of QEMU (meson regenerates, ninja recompiles
every object), so "builds once" is: configure ran once over the whole
sequence, and every compile went through ccache.
"""

import os
import shutil
import subprocess

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
SYSTEM_BIN = ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin',
              '/sbin', '/bin')

STUBS = {
    # LIST...: on base/deps-build, install ccache (if the test allows it).
    'scripts/ferry/install-deps': '''
echo "install-deps $*" >> "$FERRY_TEST_LOG"
case "$*" in
*deps-build*)
    if [ -n "$FERRY_TEST_INSTALL_CCACHE" ] && [ ! -e "$FERRY_TEST_BIN/ccache" ]; then
        printf '#!/bin/sh\\necho "ccache $*" >> "$FERRY_TEST_LOG"\\nexec "$@"\\n' \\
            > "$FERRY_TEST_BIN/ccache"
        chmod +x "$FERRY_TEST_BIN/ccache"
    fi ;;
esac
''',
    'base/fetch': '''
echo "fetch $*" >> "$FERRY_TEST_LOG"
mkdir -p "$1/tree"
echo 1:7.2+dfsg-7+deb12u99 > "$1/REVISION"
touch "$1/tree/.ferry-base-ok"
''',
    'scripts/ferry/prepare': '''
mkdir -p build/src
cat > build/src/configure <<'CONF'
#!/bin/sh
echo "configure $*" >> "$FERRY_TEST_LOG"
for a do
    case "$a" in --cc=*) echo "${a#--cc=}" > cc-line ;; esac
done
touch build.ninja
CONF
chmod +x build/src/configure
''',
    'tests/guests/build': 'echo "guests $*" >> "$FERRY_TEST_LOG"',
    'tests/run': 'echo "tests/run $*" >> "$FERRY_TEST_LOG"',
    'scripts/ferry/demo': 'echo "demo $*" >> "$FERRY_TEST_LOG"',
    'scripts/ferry/install': 'echo "install $*" >> "$FERRY_TEST_LOG"',
    'tests/bench/run': 'echo "bench $*" >> "$FERRY_TEST_LOG"',
}

# On PATH ahead of the host's programs.
FAKE_BIN = {
    'ninja': '''
echo "ninja $*" >> "$FERRY_TEST_LOG"
cd build/qemu
$(cat cc-line) -c object.c
''',
    'gcc': 'echo "gcc $*" >> "$FERRY_TEST_LOG"',
}


def write_script(path, body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('#!/bin/sh\n' + body.lstrip('\n'))
    os.chmod(path, 0o755)


@pytest.fixture(scope='module')
def host_bin(tmp_path_factory):
    """The host's programs, as symlinks, without ccache."""
    d = tmp_path_factory.mktemp('host-bin')
    for sysdir in SYSTEM_BIN:
        if not os.path.isdir(sysdir):
            continue
        for name in os.listdir(sysdir):
            link = d / name
            if name == 'ccache' or os.path.lexists(link):
                continue
            link.symlink_to(os.path.join(sysdir, name))
    return str(d)


class Checkout:
    """A scratch repository: the real Makefile and wrapper, stubs else."""

    def __init__(self, root, host_bin, install_ccache=True):
        self.root = str(root)
        self.bin = os.path.join(self.root, 'fake-bin')
        self.log = os.path.join(self.root, 'log')
        for f in ('Makefile', 'scripts/ferry/cc'):
            os.makedirs(os.path.dirname(os.path.join(self.root, f)), exist_ok=True)
            shutil.copy2(os.path.join(TOP, f), os.path.join(self.root, f))
        for f, body in STUBS.items():
            write_script(os.path.join(self.root, f), body)
        for f, body in FAKE_BIN.items():
            write_script(os.path.join(self.bin, f), body)
        for f in ('base/PIN', 'base/deps-build', 'base/deps-test'):
            open(os.path.join(self.root, f), 'w').close()
        open(self.log, 'w').close()
        self.env = {
            'PATH': self.bin + ':' + host_bin,
            'HOME': self.root,
            'LANG': 'C',
            'FERRY_TEST_LOG': self.log,
            'FERRY_TEST_BIN': self.bin,
            'FERRY_TEST_INSTALL_CCACHE': '1' if install_ccache else '',
        }

    def make(self, *args):
        proc = subprocess.run(['make', '--no-print-directory', *args],
                              cwd=self.root, env=self.env, text=True,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def lines(self, word):
        with open(self.log) as f:
            return [l.split(' ', 1)[1].strip() if ' ' in l else ''
                    for l in f if l.split(' ', 1)[0] == word]


README_SEQUENCES = [
    ('check', 'demo'),
    ('all', 'check'),
    ('demo', 'check'),
    ('all', 'demo', 'bench', 'check', 'all'),
]


@pytest.mark.parametrize('sequence', README_SEQUENCES, ids='-then-'.join)
def test_fresh_machine_configures_once(tmp_path, host_bin, sequence):
    co = Checkout(tmp_path, host_bin)
    assert not os.path.exists(os.path.join(co.bin, 'ccache'))
    for target in sequence:
        co.make(target)
    assert os.path.exists(os.path.join(co.bin, 'ccache')), \
        'install-deps stub never ran: the Makefile no longer installs deps'
    configures = co.lines('configure')
    assert len(configures) == 1, \
        'QEMU was configured (so built) %d times:\n%s' % (
            len(configures), '\n'.join(configures))
    assert 'ccache' not in configures[0].replace(co.root, 'ROOT')
    # ccache was installed by the first make, before anything compiled:
    # every compile, the first build's included, went through it.
    compiles = co.lines('gcc')
    assert len(compiles) == len(co.lines('ninja')) >= len(sequence)
    assert len(co.lines('ccache')) == len(compiles)


def test_ccache_at_start_or_never_gives_the_same_configure_line(tmp_path, host_bin):
    """ccache on PATH from the start, installed during the run, or absent:
    one configure line.  (Run from two different directories, the lines
    differ only in the checkout's path.)"""
    lines = []
    for case in ('installed-during-run', 'already-installed', 'never'):
        co = Checkout(tmp_path / case, host_bin, install_ccache=case != 'never')
        if case == 'already-installed':
            write_script(os.path.join(co.bin, 'ccache'),
                         'echo "ccache $*" >> "$FERRY_TEST_LOG"\nexec "$@"')
        co.make('all')
        co.make('all')
        (line,) = co.lines('configure')
        lines.append(line.replace(co.root, 'ROOT'))
        assert len(co.lines('ccache')) == (0 if case == 'never' else 2)
        assert len(co.lines('gcc')) == 2
    assert lines[0] == lines[1] == lines[2]


@pytest.mark.parametrize('setting, through_ccache', [('no', False), ('yes', True)])
def test_ferry_ccache_setting_is_obeyed_without_reconfiguring(tmp_path, host_bin,
                                                              setting, through_ccache):
    co = Checkout(tmp_path, host_bin)
    co.make('all')
    with open(os.path.join(co.root, 'config.mk'), 'w') as f:
        f.write('FERRY_CCACHE := %s\n' % setting)
    co.make('all')
    assert len(co.lines('configure')) == 1
    assert len(co.lines('ccache')) == 1 + through_ccache


def test_changed_options_do_reconfigure(tmp_path, host_bin):
    """The counting above would see a second configure: a real option
    change (here the target list) still re-runs the base's configure."""
    co = Checkout(tmp_path, host_bin)
    co.make('all')
    co.make('all', 'FERRY_TARGETS=x86_64-softmmu')
    configures = co.lines('configure')
    assert len(configures) == 2
    assert '--target-list=x86_64-softmmu ' in configures[1]
