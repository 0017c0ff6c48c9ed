"""Mixed versions under libvirt: Debian's stock QEMU 7.2 on one host,
Ferry on the other, live migration both ways, plain and compressed.

A domain's <emulator> is per host: each migration gives libvirt the
destination's XML (virsh migrate --xml) with the other binary, on the
same machine type (pc-i440fx-7.2).  The domain "mixed" starts on stock
on the first daemon of conftest.py's "hosts" and goes stock -> Ferry ->
stock, then again compressed; the guest is checked by its memory
pattern, pass counter and console after each move (check_guest()), and
the destination's monitor must say which binary now runs it.
"""

import os

import pytest

from ferry import env
from libvirt_env import (COMPRESSED, UNLIMITED_SPEED, check_guest,
                         define_dirty_domain, ferry_emulator,
                         finish_migration, migratable_xml, migrate,
                         poll_source, start_migration)

STOCK = env.stock_binary('x86_64')

pytestmark = pytest.mark.skipif(
    not STOCK, reason="Debian's stock qemu-system-x86 is not installed")


@pytest.fixture(scope='module')
def mixed(hosts):
    dom = define_dirty_domain(hosts[0], 'mixed', emulator=STOCK)
    yield dom
    for d in hosts:
        d.virsh('destroy', 'mixed', check=False)
        d.virsh('undefine', 'mixed', check=False)


def runs(dom, flavour):
    package = dom.command('query-version')['package']
    assert ('Ferry' in package) == (flavour == 'ferry'), package


def move(mixed, hosts, to_flavour, compressed=False):
    """Migrate MIXED to the other host, onto TO_FLAVOUR's binary."""
    src = mixed.daemon
    dst = hosts[1] if src is hosts[0] else hosts[0]
    emulator = ferry_emulator() if to_flavour == 'ferry' else STOCK
    xml = migratable_xml(mixed, emulator, os.path.join(
        os.path.dirname(src.root), 'mixed-%s.xml' % to_flavour))
    passes = check_guest(mixed)
    if compressed:
        # As test_libvirt's test_migrate_compressed: slowed until the
        # source's threads are seen compressing, suspended after a few
        # seconds (the guest outruns the compression threads).
        src.virsh('migrate-setspeed', mixed.name, '1')
        proc = start_migration(mixed, dst, COMPRESSED + [
            '--timeout', '6', '--timeout-suspend'], xml=xml)
        try:
            info = poll_source(mixed, proc, lambda i: i.get('compression', {})
                               .get('compressed-size', 0) > 0)
            src.virsh('migrate-setspeed', mixed.name, str(UNLIMITED_SPEED))
        finally:
            rc, err = finish_migration(proc, timeout=120)
        assert rc == 0, err
        mixed.daemon = dst
        print('%s source compressed:' % src.name, info['compression'])
    else:
        migrate(mixed, dst, xml=xml)
    assert dst.out('domstate', mixed.name) == 'running'
    runs(mixed, to_flavour)
    check_guest(mixed, passes)


def test_stock_domain_runs(mixed):
    runs(mixed, 'stock')
    check_guest(mixed)


def test_stock_to_ferry(mixed, hosts):
    move(mixed, hosts, 'ferry')


def test_ferry_to_stock(mixed, hosts):
    move(mixed, hosts, 'stock')


def test_stock_to_ferry_compressed(mixed, hosts):
    move(mixed, hosts, 'ferry', compressed=True)


def test_ferry_to_stock_compressed(mixed, hosts):
    move(mixed, hosts, 'stock', compressed=True)
