"""pytest set-up of the libvirt tests: the functional tests' helpers
(tests/functional/ferry) and libvirt_env on sys.path, and the session's
two private libvirtd instances (fixture "hosts"), started once when a
test first asks for them and stopped, with everything they started, at
the end of the session, whatever happened.  Every test that needs them
is skipped, saying why, when libvirt is not installed."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'functional'))
import ferry.env  # noqa: E402,F401  (puts the base's python/qemu on sys.path)
import libvirt_env  # noqa: E402


@pytest.fixture(scope='session')
def hosts(tmp_path_factory):
    """Two private libvirtd instances (different host UUIDs and
    migration ports) that see each other's sockets."""
    why = libvirt_env.missing_tools()
    if why:
        pytest.skip('libvirt tests need libvirt: ' + why)
    if not os.access(libvirt_env.ferry_emulator(), os.X_OK):
        pytest.fail('Ferry is not installed at %s (scripts/ferry/install %s)'
                    % (libvirt_env.ferry_emulator(), libvirt_env.PREFIX))
    daemons = libvirt_env.start_daemons(2, str(tmp_path_factory.mktemp('libvirt')))
    try:
        yield daemons
    finally:
        for d in daemons:
            d.stop()
