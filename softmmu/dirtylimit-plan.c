/*
 * Ferry dirty limit: how much dirtying a migration can absorb
 *
 * See include/sysemu/dirtylimit-plan.h for the rule and its derivation.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "sysemu/dirtylimit-plan.h"

uint64_t dirtylimit_plan_allowed_rate(uint64_t link_rate, uint64_t remaining,
                                      uint64_t downtime_ns)
{
    double share;

    if (!link_rate) {
        return 0;
    }
    if (!remaining) {
        return UINT64_MAX;
    }
    /* d / T = d B / R, in doubles: B^2 d overflows 64 bits on fast links */
    share = (double)downtime_ns * link_rate / ((double)remaining * 1e9);
    share = MAX(share, 1.0 / DIRTYLIMIT_PLAN_LINK_SHARE_DIV);
    share = MIN(share, 1.0 / DIRTYLIMIT_PLAN_DOWNTIME_SHARE_DIV);
    return link_rate * share;
}

static int dirtylimit_plan_compare(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

uint64_t dirtylimit_plan_level(uint64_t allowed, uint64_t *rates, unsigned n)
{
    uint64_t left = allowed;
    unsigned i;

    qsort(rates, n, sizeof(*rates), dirtylimit_plan_compare);
    /* Fill from the slowest vCPU up: each takes its rate or a fair share. */
    for (i = 0; i < n; i++) {
        uint64_t share = left / (n - i);

        if (rates[i] > share) {
            return MAX(1, share);
        }
        left -= rates[i];
    }
    return 0;
}
