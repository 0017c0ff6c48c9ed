# Ferry: QEMU 7.2 (Debian bookworm) plus the Ferry series.
#
#   make            fetch and verify the base, prepare build/src, build
#   make check      everything "make" does, then every test (tests/run)
#   make demo       a live migration of a busy guest, end to end
#   make bench      the benchmarks in tests/bench, Ferry against stock
#   make install PREFIX=/opt/ferry [DESTDIR=...]
#                   a relocatable install: bin/, share/qemu, libexec/
#   make deb        Debian packages replacing bookworm's qemu-system-x86 and
#                   qemu-system-ppc (packaging/debian), in build/deb/*.deb
#   make refresh-patch P=NNNN-name.patch [FILES="a b"] [SUBJECT="..."]
#   make checkpatch run the base's checkpatch.pl over patches/ and owned C
#
# Every target installs the Debian packages it needs (base/deps-*).

-include config.mk
FERRY_TARGETS ?= x86_64-softmmu,ppc64-softmmu
FERRY_CCACHE ?= auto
FERRY_EXTRA_QEMU_ARGS ?=
PREFIX ?= /usr/local

comma := ,
# Let ccache hit across clones of the repository (CI uses a fresh one).
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1
BUILD := build
QEMU_BUILD := $(BUILD)/qemu
SRC := $(BUILD)/src
NINJA := ninja
# QEMU compiles through scripts/ferry/cc, which decides at every compile
# whether to go through ccache (FERRY_CCACHE: auto, yes or no).  The
# configure line names the wrapper, never ccache, so it is the same
# whether ccache was installed before make started or by "make deps"
# during the run: installing ccache, or changing FERRY_CCACHE, neither
# reconfigures nor rebuilds (ccache does not change what is built).
export FERRY_CCACHE
FERRY_CC := $(CURDIR)/scripts/ferry/cc

# Recursive: the base revision is known only after base/fetch ran.
BASE_REVISION = $(shell cat $(BUILD)/base/REVISION 2>/dev/null)
QEMU_CONFIGURE_ARGS = \
	--target-list=$(FERRY_TARGETS) \
	--enable-kvm --enable-slirp --enable-zstd --enable-spice \
	--enable-linux-aio --enable-linux-io-uring \
	--disable-docs --disable-werror --meson=meson \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
	--with-pkgversion="Ferry, Debian $(BASE_REVISION)" \
	--cc="$(FERRY_CC) gcc" --cxx="$(FERRY_CC) g++" \
	$(FERRY_EXTRA_QEMU_ARGS)

EMULATORS := $(foreach t,$(subst $(comma), ,$(FERRY_TARGETS)),qemu-system-$(t:-softmmu=))
QTESTS := tests/qtest/migration-test tests/qtest/qos-test \
	tests/qtest/qmp-test tests/qtest/qom-test \
	$(patsubst %.c,%,$(wildcard tests/qtest/ferry-*-test.c)) \
	$(patsubst %.c,%,$(wildcard tests/unit/test-*.c))

.PHONY: all build deps deps-test deps-deb prepare check demo bench guests \
	install deb refresh-patch export-patches checkpatch clean distclean

all: build

deps:
	@scripts/ferry/install-deps base/deps-build

deps-test: deps
	@scripts/ferry/install-deps base/deps-test

deps-deb: deps
	@scripts/ferry/install-deps base/deps-deb

$(BUILD)/base/tree/.ferry-base-ok: base/PIN | deps
	base/fetch $(BUILD)/base

prepare: $(BUILD)/base/tree/.ferry-base-ok
	@scripts/ferry/prepare

# Re-run the base's configure when the options change.
$(QEMU_BUILD)/ferry-configure-args: prepare FORCE
	@mkdir -p $(QEMU_BUILD)
	@echo '$(QEMU_CONFIGURE_ARGS)' | cmp -s - $@ || \
		echo '$(QEMU_CONFIGURE_ARGS)' > $@

$(QEMU_BUILD)/build.ninja: $(QEMU_BUILD)/ferry-configure-args
	cd $(QEMU_BUILD) && ../src/configure $(QEMU_CONFIGURE_ARGS) > configure.log 2>&1 || \
		{ tail -30 configure.log; exit 1; }

# Binaries run from the build tree look for firmware under qemu-bundle/,
# relocated from the configured firmware path: point those at Debian's.
FIRMWARE_DIRS := /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu

build: $(QEMU_BUILD)/build.ninja
	$(NINJA) -C $(QEMU_BUILD) $(EMULATORS) qemu-img trace/trace-events-all
	@for d in $(FIRMWARE_DIRS); do \
		mkdir -p $(QEMU_BUILD)/qemu-bundle$$(dirname $$d); \
		ln -sfn $$d $(QEMU_BUILD)/qemu-bundle$$d; \
	done

guests: deps-test
	@tests/guests/build $(BUILD)/guests

# tests/libvirt points libvirt's <emulator> at an installed Ferry, and
# builds and installs make deb's packages in an isolated root.
check: build guests deps-deb
	$(NINJA) -C $(QEMU_BUILD) $(QTESTS)
	@scripts/ferry/install $(BUILD)/prefix
	tests/run

install: build
	@scripts/ferry/install $(PREFIX) $(if $(DESTDIR),--destdir $(DESTDIR))

# Packages what "build" built, never rebuilds it (scripts/ferry/deb).
deb: build deps-deb
	@scripts/ferry/deb

demo: build guests
	scripts/ferry/demo

bench: build guests
	tests/bench/run

refresh-patch:
	@scripts/ferry/refresh-patch $(P) $(if $(SUBJECT),-s "$(SUBJECT)") $(FILES)

export-patches:
	@scripts/ferry/export-patches

checkpatch: prepare
	scripts/ferry/checkpatch

clean:
	rm -rf $(QEMU_BUILD)

distclean:
	rm -rf $(BUILD) config.mk

FORCE:
