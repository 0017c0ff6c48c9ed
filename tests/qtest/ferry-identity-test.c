/*
 * Ferry identity qtest
 *
 * Proves that the binary under test is Ferry built from the series (its
 * version names Ferry and the 7.2 base), and that it keeps stock 7.2's
 * migration interface: every capability and parameter libvirt and
 * scripts know from 7.2 is still there under the same name.  The series'
 * feature issues add names; none may disappear.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qlist.h"
#include "qapi/qmp/qstring.h"

/* MigrationCapability in the base's qapi/migration.json (7.2). */
static const char *const stock_capabilities[] = {
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress",
    "events", "postcopy-ram", "x-colo", "release-ram", "block",
    "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
    "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send",
    "postcopy-preempt",
};

/* Members of query-migrate-parameters in 7.2 that are always reported. */
static const char *const stock_parameters[] = {
    "announce-initial", "announce-max", "announce-rounds", "announce-step",
    "compress-level", "compress-threads", "compress-wait-thread",
    "decompress-threads", "throttle-trigger-threshold",
    "cpu-throttle-initial", "cpu-throttle-increment",
    "cpu-throttle-tailslow", "max-bandwidth", "downtime-limit",
    "x-checkpoint-delay", "multifd-channels", "xbzrle-cache-size",
    "max-postcopy-bandwidth", "max-cpu-throttle", "multifd-compression",
    "multifd-zlib-level", "multifd-zstd-level",
};

static void test_version_names_ferry(void)
{
    QTestState *qts = qtest_init("-machine none");
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'query-version' }");
    QDict *ret = qdict_get_qdict(resp, "return");
    QDict *qemu = qdict_get_qdict(ret, "qemu");

    g_assert_nonnull(strstr(qdict_get_str(ret, "package"), "Ferry"));
    g_assert_cmpint(qdict_get_int(qemu, "major"), ==, 7);
    g_assert_cmpint(qdict_get_int(qemu, "minor"), ==, 2);
    qobject_unref(resp);
    qtest_quit(qts);
}

static bool qlist_has_capability(QList *list, const char *name)
{
    const QListEntry *entry;

    QLIST_FOREACH_ENTRY(list, entry) {
        QDict *cap = qobject_to(QDict, qlist_entry_obj(entry));

        if (g_str_equal(qdict_get_str(cap, "capability"), name)) {
            return true;
        }
    }
    return false;
}

static void test_stock_capabilities_kept(void)
{
    QTestState *qts = qtest_init("-machine none");
    QDict *resp = qtest_qmp(qts,
                            "{ 'execute': 'query-migrate-capabilities' }");
    QList *caps = qdict_get_qlist(resp, "return");

    for (size_t i = 0; i < ARRAY_SIZE(stock_capabilities); i++) {
        if (!qlist_has_capability(caps, stock_capabilities[i])) {
            g_test_message("capability %s is missing", stock_capabilities[i]);
            g_test_fail();
        }
    }
    qobject_unref(resp);
    qtest_quit(qts);
}

static void test_stock_parameters_kept(void)
{
    QTestState *qts = qtest_init("-machine none");
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'query-migrate-parameters' }");
    QDict *params = qdict_get_qdict(resp, "return");

    for (size_t i = 0; i < ARRAY_SIZE(stock_parameters); i++) {
        if (!qdict_haskey(params, stock_parameters[i])) {
            g_test_message("parameter %s is missing", stock_parameters[i]);
            g_test_fail();
        }
    }
    qobject_unref(resp);
    qtest_quit(qts);
}

static void test_unknown_capability_is_rejected(void)
{
    QTestState *qts = qtest_init("-machine none");
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'migrate-set-capabilities',"
                            "  'arguments': { 'capabilities': ["
                            "    { 'capability': 'no-such-cap',"
                            "      'state': true } ] } }");
    QDict *error = qdict_get_qdict(resp, "error");

    g_assert_nonnull(error);
    g_assert_cmpstr(qdict_get_str(error, "class"), ==, "GenericError");
    g_assert_nonnull(strstr(qdict_get_str(error, "desc"), "no-such-cap"));
    qobject_unref(resp);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/ferry/identity/version-names-ferry",
                   test_version_names_ferry);
    qtest_add_func("/ferry/identity/stock-capabilities-kept",
                   test_stock_capabilities_kept);
    qtest_add_func("/ferry/identity/stock-parameters-kept",
                   test_stock_parameters_kept);
    qtest_add_func("/ferry/identity/unknown-capability-rejected",
                   test_unknown_capability_is_rejected);
    return g_test_run();
}
