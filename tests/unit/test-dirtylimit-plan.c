/*
 * Unit tests of the dirty limit's migration plan
 *
 * Drives softmmu/dirtylimit-plan.c: the allowed dirty rate a link and a
 * downtime limit can absorb, the water level that shares it among vCPUs,
 * and, in a simulated precopy migration, the claim the rule is built on:
 * a guest limited to it a few hundred milliseconds into the first pass
 * is migrated within 1.5 times the first pass, however fast it dirties.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "sysemu/dirtylimit-plan.h"

#define MiB             (1ULL << 20)
#define SEC             1000000000ULL
#define MS              1000000ULL

static void test_allowed_rate(void)
{
    /* A long pass: a quarter of the link. */
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(16 * MiB, 150 * MiB,
                                                  300 * MS), ==, 4 * MiB);
    /* A pass of 1 s with 500 ms of downtime: half the link fits. */
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(100 * MiB, 100 * MiB,
                                                  500 * MS), ==, 50 * MiB);
    /* Downtime longer than the pass: never more than half the link. */
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(100 * MiB, 50 * MiB,
                                                  1 * SEC), ==, 50 * MiB);
    /* A pass of 1 s with 400 ms of downtime: 40 % of the link. */
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(100 * MiB, 100 * MiB,
                                                  400 * MS), ==, 40 * MiB);
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(0, 50 * MiB, SEC), ==, 0);
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(MiB, 0, SEC), ==,
                     UINT64_MAX);
    /* 100 Gb/s, one page left, an hour of downtime: no overflow. */
    g_assert_cmpuint(dirtylimit_plan_allowed_rate(12500 * MiB, 4096,
                                                  3600 * SEC), ==,
                     12500 * MiB / 2);
}

static void test_level_spares_quiet_vcpus(void)
{
    uint64_t rates[] = { 900 * MiB, 1 * MiB, 2 * MiB, 1000 * MiB };

    /* 30 MiB/s: the quiet vCPUs keep their 3, the busy ones share 27. */
    g_assert_cmpuint(dirtylimit_plan_level(30 * MiB, rates, 4), ==,
                     27 * MiB / 2);
    g_assert_cmpuint(rates[0], ==, 1 * MiB);        /* sorted */
}

static void test_level_none_when_it_fits(void)
{
    uint64_t rates[] = { 10 * MiB, 20 * MiB };

    g_assert_cmpuint(dirtylimit_plan_level(30 * MiB, rates, 2), ==, 0);
    g_assert_cmpuint(dirtylimit_plan_level(UINT64_MAX, rates, 2), ==, 0);
    g_assert_cmpuint(dirtylimit_plan_level(0, rates, 0), ==, 0);
}

static void test_level_equal_split(void)
{
    uint64_t rates[] = { 500 * MiB, 500 * MiB, 500 * MiB, 500 * MiB };

    g_assert_cmpuint(dirtylimit_plan_level(4 * MiB, rates, 4), ==, MiB);
    /* Never a zero quota, which would mean "no limit". */
    g_assert_cmpuint(dirtylimit_plan_level(2, rates, 4), ==, 1);
}

/*
 * A precopy migration in simulated time.  The guest rewrites a working
 * set of @wss bytes, spread evenly over @ram bytes of non-zero memory, at
 * @rate bytes/s until @engage_ns into the first pass, then at the quota
 * the plan gives.  A page counts as dirty for the next pass when it is
 * rewritten after it was sent; a pass is sent at @link bytes/s; the
 * migration ends with the first pass small enough for the downtime.
 * Returns the total time in ns.
 */
static uint64_t simulate(uint64_t ram, uint64_t wss, uint64_t rate,
                         uint64_t link, uint64_t downtime_ns,
                         uint64_t engage_ns)
{
    uint64_t first_ns = ram * SEC / link;
    uint64_t allowed = dirtylimit_plan_allowed_rate(
        link, ram - link * engage_ns / SEC, downtime_ns);
    uint64_t rates[1] = { rate };
    uint64_t level = dirtylimit_plan_level(allowed, rates, 1);
    double q = level ? level : rate;
    double sent_frac = (double)engage_ns / first_ns;
    double dirty, total_ns = first_ns;
    int passes = 1;

    /* Before the limit: the sent part of the working set, rewritten. */
    dirty = MIN((double)wss * sent_frac, (double)rate * engage_ns / SEC);
    dirty = MIN((double)wss, dirty + q * (first_ns - engage_ns) / SEC);
    while (dirty > (double)link * downtime_ns / SEC) {
        double pass_ns = dirty * SEC / link;

        g_assert_cmpint(++passes, <, 1000);
        total_ns += pass_ns;
        dirty = MIN((double)wss, q * pass_ns / SEC);
    }
    return total_ns + dirty * SEC / link;
}

/*
 * Every combination of link, guest rate, downtime and memory size,
 * limited @engage_div-th of the way into the first pass (or after 300 ms,
 * if sooner), finishes within @bound_pct percent of the first pass (plus
 * the downtime, which the last pass may use).
 */
static void check_migrations(uint64_t engage_div, uint64_t bound_pct)
{
    static const uint64_t links[] = { 16 * MiB, 100 * MiB, 1024 * MiB };
    static const uint64_t rates[] = { 50 * MiB, 1000 * MiB, 3000 * MiB };
    static const uint64_t downtimes[] = { 50 * MS, 300 * MS, 1000 * MS };
    static const uint64_t rams[] = { 100 * MiB, 256 * MiB, 8192 * MiB };
    int l, r, d, m;

    for (l = 0; l < ARRAY_SIZE(links); l++) {
        for (r = 0; r < ARRAY_SIZE(rates); r++) {
            for (d = 0; d < ARRAY_SIZE(downtimes); d++) {
                for (m = 0; m < ARRAY_SIZE(rams); m++) {
                    uint64_t first_ns = rams[m] * SEC / links[l];
                    uint64_t engage_ns = MIN(300 * MS,
                                             first_ns / engage_div);
                    uint64_t total = simulate(rams[m], rams[m], rates[r],
                                              links[l], downtimes[d],
                                              engage_ns);

                    g_assert_cmpuint(total, <=, first_ns * bound_pct / 100
                                     + downtimes[d]);
                }
            }
        }
    }
}

/* Limited within the first tenth of the pass: the aim, 1.5 passes. */
static void test_migration_within_one_and_a_half_passes(void)
{
    check_migrations(10, 150);
}

/* Limited only a quarter of the way in: still within 2 passes. */
static void test_late_limit_within_two_passes(void)
{
    check_migrations(4, 200);
}

static void test_demo_case(void)
{
    /* 100 MiB rewritten at ~1 GB/s, 16 MiB/s link, 500 ms downtime. */
    uint64_t total = simulate(100 * MiB, 100 * MiB, 1000 * MiB, 16 * MiB,
                              500 * MS, 300 * MS);

    g_assert_cmpuint(total, <=, (100 * MiB * SEC / (16 * MiB)) * 3 / 2);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/dirtylimit/plan/allowed-rate", test_allowed_rate);
    g_test_add_func("/dirtylimit/plan/level-spares-quiet-vcpus",
                    test_level_spares_quiet_vcpus);
    g_test_add_func("/dirtylimit/plan/no-limit-when-it-fits",
                    test_level_none_when_it_fits);
    g_test_add_func("/dirtylimit/plan/level-equal-split",
                    test_level_equal_split);
    g_test_add_func("/dirtylimit/plan/migration-within-1.5-passes",
                    test_migration_within_one_and_a_half_passes);
    g_test_add_func("/dirtylimit/plan/late-limit-within-2-passes",
                    test_late_limit_within_two_passes);
    g_test_add_func("/dirtylimit/plan/demo-case", test_demo_case);
    return g_test_run();
}
