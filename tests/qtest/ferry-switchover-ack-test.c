/*
 * switchover-ack qtest: the capability without any device that needs it
 *
 * The capability requires return-path, and says so.  With it on both
 * sides and no device that asks the destination to wait, the destination
 * acks as soon as the return path opens and the migration completes.
 * With it on the source only, no ack ever comes: the source keeps the
 * migration active past the point where it would have switched over,
 * and a cancel leaves its guest running.  No device is needed: a
 * machine with a little RAM under the qtest accelerator migrates in
 * milliseconds.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"

#define MACHINE "-machine none -m 16M"

typedef struct Pair {
    QTestState *src, *dst;
    char *uri;
    char *socket;
} Pair;

static void set_caps(QTestState *qts, bool switchover_ack)
{
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-capabilities',"
                             " 'arguments': { 'capabilities': ["
                             " { 'capability': 'return-path', 'state': true },"
                             " { 'capability': 'switchover-ack',"
                             "   'state': %i } ] } }", switchover_ack);
}

static Pair *pair_start(bool ack_on_destination)
{
    Pair *p = g_new0(Pair, 1);
    g_autofree char *dir = g_dir_make_tmp("ferry-swack-XXXXXX", NULL);

    g_assert_nonnull(dir);
    p->socket = g_build_filename(dir, "sock", NULL);
    p->uri = g_strdup_printf("unix:%s", p->socket);
    p->src = qtest_init(MACHINE);
    p->dst = qtest_initf(MACHINE " -incoming defer");
    set_caps(p->src, true);
    set_caps(p->dst, ack_on_destination);
    qtest_qmp_assert_success(p->dst, "{ 'execute': 'migrate-incoming',"
                             " 'arguments': { 'uri': %s } }", p->uri);
    qtest_qmp_assert_success(p->src, "{ 'execute': 'migrate',"
                             " 'arguments': { 'uri': %s } }", p->uri);
    return p;
}

static void pair_end(Pair *p)
{
    g_autofree char *dir = g_path_get_dirname(p->socket);

    qtest_quit(p->src);
    qtest_quit(p->dst);
    unlink(p->socket);
    rmdir(dir);
    g_free(p->socket);
    g_free(p->uri);
    g_free(p);
}

/* The source's migration status, as query-migrate reports it. */
static char *migration_status(QTestState *qts)
{
    QDict *rsp = qtest_qmp(qts, "{ 'execute': 'query-migrate' }");
    QDict *info = qdict_get_qdict(rsp, "return");
    char *status = g_strdup(qdict_get_try_str(info, "status"));

    qobject_unref(rsp);
    return status;
}

static bool migration_ongoing(const char *status)
{
    return !strcmp(status, "setup") || !strcmp(status, "active") ||
           !strcmp(status, "cancelling");
}

/* Wait up to @seconds for the migration to end; its status then. */
static char *wait_migration_end(QTestState *qts, double seconds)
{
    gint64 deadline = g_get_monotonic_time() + seconds * G_USEC_PER_SEC;

    for (;;) {
        char *status = migration_status(qts);

        if (!migration_ongoing(status) || g_get_monotonic_time() > deadline) {
            return status;
        }
        g_free(status);
        g_usleep(10 * 1000);
    }
}

static void test_requires_return_path(void)
{
    QTestState *qts = qtest_init(MACHINE);
    QDict *rsp = qtest_qmp(qts, "{ 'execute': 'migrate-set-capabilities',"
                           " 'arguments': { 'capabilities': ["
                           " { 'capability': 'switchover-ack',"
                           "   'state': true } ] } }");

    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    "Capability 'switchover-ack' requires capability "
                    "'return-path'");
    qobject_unref(rsp);
    qtest_quit(qts);
}

static void test_acked_without_devices(void)
{
    Pair *p = pair_start(true);
    g_autofree char *status = wait_migration_end(p->src, 60);

    g_assert_cmpstr(status, ==, "completed");
    pair_end(p);
}

static void test_source_waits_for_the_ack(void)
{
    Pair *p = pair_start(false);
    g_autofree char *status = wait_migration_end(p->src, 2);
    QDict *rsp;

    /* 16 MiB take milliseconds: only the missing ack holds it back */
    g_assert_cmpstr(status, ==, "active");
    /* a cancelled incoming migration ends the destination with exit 1 */
    qtest_set_expected_status(p->dst, 1);
    qtest_qmp_assert_success(p->src, "{ 'execute': 'migrate_cancel' }");
    g_free(status);
    status = wait_migration_end(p->src, 60);
    g_assert_cmpstr(status, ==, "cancelled");
    rsp = qtest_qmp(p->src, "{ 'execute': 'query-status' }");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "return"), "status"),
                    ==, "running");
    qobject_unref(rsp);
    pair_end(p);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/ferry/switchover-ack/requires-return-path",
                   test_requires_return_path);
    qtest_add_func("/ferry/switchover-ack/acked-without-devices",
                   test_acked_without_devices);
    qtest_add_func("/ferry/switchover-ack/source-waits-for-the-ack",
                   test_source_waits_for_the_ack);
    return g_test_run();
}
