/*
 * Ferry vCPU dirty-page-rate limit: the per-vCPU controller
 *
 * A pure state machine (no globals, clocks, locks or threads: the time is
 * an argument) that turns "this vCPU dirtied N bytes" into "sleep this
 * long", so that the vCPU's dirty rate stays at its quota.  See
 * include/sysemu/dirtylimit-controller.h for the interface and the reasons
 * for the design; in short:
 *
 * - charge() is a leaky bucket credited at quota x trim.  Whatever the
 *   harvest pattern, the bytes charged over any interval are at most
 *   quota x trim x interval + burst, so the rate charged converges from
 *   the first harvest, without a loop that could oscillate or wind up.
 *   A batch is paid from the credit earned over the interval in which it
 *   was dirtied, and only what is left is capped at the burst: a vCPU
 *   below its quota is never told to sleep, and an idle vCPU cannot bank
 *   more than the burst.  When the balance goes negative the vCPU sleeps
 *   exactly as long as the allowance takes to repay it; that time is
 *   reserved (last_ns moves to the wake-up time) so it is not credited
 *   twice, and an early wake-up still owes the rest.
 *
 * - feedback() estimates the gain between the bytes charged and the bytes
 *   measured independently, from the ratio of the two over a window, and
 *   moves the trim halfway towards it in log space.  While the vCPU is
 *   penalised, charged/window = quota x trim and the correction factor is
 *   exactly quota / measured rate; using the bytes actually charged keeps
 *   harvest bursts, idle time and slow vCPUs from moving the trim (no
 *   wind-up), and the window grows until the error is larger than one
 *   harvest batch can explain, so coarse batches at small quotas do not
 *   make the trim jitter.
 *
 * Copyright (c) 2026 The Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "sysemu/dirtylimit-controller.h"
#include <math.h>

/*
 * Largest batch and debt accepted, in bytes: far beyond any real batch
 * (a 64 Ki-entry ring of 4 KiB pages is 256 MiB), and small enough that
 * the double arithmetic below stays exact to the byte.
 */
#define DL_MAX_BATCH            (1ULL << 50)
#define DL_MAX_DEBT             ((double)(1ULL << 52))

/* The rate at which the bucket is credited, bytes/s; quota must be set. */
static double dl_allowance(const DirtyLimitController *c)
{
    return (double)c->quota * c->trim;
}

static double dl_burst(const DirtyLimitController *c)
{
    double burst = dl_allowance(c) * DIRTYLIMIT_BURST_NS /
                   DIRTYLIMIT_NS_PER_SEC;

    return MAX(burst, (double)DIRTYLIMIT_BURST_MIN);
}

/*
 * Relative dead band of the feedback: 2% of the quota, but never below
 * 256 KiB/s (64 pages/s), where a quota is small enough (under 12.5 MB/s)
 * that a few pages of counting noise would exceed 2%.  Both are well
 * inside the acceptance band of SPEC section 1, max(5%, 1 MB/s).
 */
static double dl_tolerance(const DirtyLimitController *c)
{
    double abs_rel = (double)DIRTYLIMIT_TOLERANCE_ABS / (double)c->quota;

    return MAX(DIRTYLIMIT_TOLERANCE_REL, abs_rel);
}

/* Credit the bucket up to @now_ns (if it is not already beyond it). */
static void dl_accrue(DirtyLimitController *c, int64_t now_ns)
{
    if (now_ns > c->last_ns) {
        c->balance += (double)(now_ns - c->last_ns) * dl_allowance(c) /
                      DIRTYLIMIT_NS_PER_SEC;
        c->last_ns = now_ns;
    }
}

static void dl_window_reset(DirtyLimitController *c)
{
    c->win_charged = 0;
    c->win_measured = 0;
    c->win_max_batch = 0;
    c->win_ns = 0;
}

void dirtylimit_controller_init(DirtyLimitController *c,
                                uint64_t quota_bytes_per_sec, int64_t now_ns)
{
    memset(c, 0, sizeof(*c));
    c->trim = 1.0;
    c->quota = quota_bytes_per_sec;
    c->last_ns = now_ns;
    if (c->quota) {
        c->burst = dl_burst(c);
        c->balance = c->burst;
    }
}

void dirtylimit_controller_set_quota(DirtyLimitController *c,
                                     uint64_t quota_bytes_per_sec,
                                     int64_t now_ns)
{
    bool was_limited = c->quota != 0;

    if (was_limited) {
        /* Settle at the old rate: credit to now, or owed sleep -> debt. */
        if (now_ns >= c->last_ns) {
            dl_accrue(c, now_ns);
            c->balance = MIN(c->balance, c->burst);
        } else {
            c->balance -= (double)(c->last_ns - now_ns) * dl_allowance(c) /
                          DIRTYLIMIT_NS_PER_SEC;
            c->balance = MAX(c->balance, -DL_MAX_DEBT);
        }
    }
    c->last_ns = now_ns;
    c->quota = quota_bytes_per_sec;

    if (!c->quota) {
        c->balance = 0;
        c->burst = 0;
        dl_window_reset(c);
        return;
    }
    c->burst = dl_burst(c);
    if (!was_limited) {
        c->balance = c->burst;
        dl_window_reset(c);
    }
    c->balance = MIN(c->balance, c->burst);
}

int64_t dirtylimit_controller_charge(DirtyLimitController *c,
                                     uint64_t dirtied_bytes, int64_t now_ns)
{
    double allowance, need_ns, wake;
    int64_t wake_ns, sleep_ns;

    dirtied_bytes = MIN(dirtied_bytes, DL_MAX_BATCH);
    c->charged_total += dirtied_bytes;
    c->period_charged += dirtied_bytes;
    c->period_max_batch = MAX(c->period_max_batch, dirtied_bytes);

    if (!c->quota) {
        c->last_ns = now_ns;
        return 0;
    }

    /* A reservation can never reach further than one maximal sleep. */
    if (c->last_ns - now_ns > DIRTYLIMIT_MAX_SLEEP_NS) {
        c->last_ns = now_ns + DIRTYLIMIT_MAX_SLEEP_NS;
    }

    /* Pay the batch from the credit of its interval, then cap the rest. */
    dl_accrue(c, now_ns);
    c->balance -= (double)dirtied_bytes;
    c->balance = MIN(c->balance, c->burst);
    c->balance = MAX(c->balance, -DL_MAX_DEBT);

    if (dirtied_bytes == 0 || c->balance >= 0) {
        return 0;
    }

    /*
     * Debt: sleep until the allowance has repaid it.  Credit is already
     * spent up to last_ns (now, or later if an earlier sleep is still
     * owed), so repayment starts there.
     */
    allowance = dl_allowance(c);
    need_ns = -c->balance * DIRTYLIMIT_NS_PER_SEC / allowance;
    wake = (double)c->last_ns + ceil(need_ns);
    if (wake - (double)now_ns > DIRTYLIMIT_MAX_SLEEP_NS) {
        wake_ns = now_ns + DIRTYLIMIT_MAX_SLEEP_NS;
        c->balance += (double)(wake_ns - c->last_ns) * allowance /
                      DIRTYLIMIT_NS_PER_SEC;
        c->balance = MIN(c->balance, 0.0);
    } else {
        wake_ns = (int64_t)wake;
        c->balance = 0;
    }
    c->last_ns = wake_ns;
    sleep_ns = wake_ns - now_ns;

    c->throttle_ns_total += sleep_ns;
    c->period_throttle_ns += sleep_ns;
    c->penalties++;
    c->last_sleep_ns = sleep_ns;
    return sleep_ns;
}

/* Adjust the trim from the window, if the window can tell. */
static void dl_trim_update(DirtyLimitController *c)
{
    double factor, err, resolution, trim;

    if (c->win_ns < DIRTYLIMIT_WINDOW_MIN_NS) {
        return;
    }
    if (c->win_charged < DIRTYLIMIT_WINDOW_MIN_BYTES ||
        c->win_measured == 0) {
        /* Too little activity to say anything: never wind up on it. */
        if (c->win_ns >= DIRTYLIMIT_WINDOW_MAX_NS) {
            dl_window_reset(c);
        }
        return;
    }

    /*
     * The trim that makes the measured rate equal to the quota is
     * charged / measured; factor is the way from here to there.
     */
    factor = (double)c->win_charged / ((double)c->win_measured * c->trim);
    err = fabs(log(factor));
    if (err <= log1p(dl_tolerance(c))) {
        dl_window_reset(c);
        return;
    }

    /*
     * Measurement and charges may disagree on which window one harvest
     * batch belongs to; wait until the error is larger than that.
     */
    resolution = (double)c->win_max_batch / (double)c->win_charged;
    if (err <= resolution) {
        if (c->win_ns >= DIRTYLIMIT_WINDOW_MAX_NS) {
            dl_window_reset(c);
        }
        return;
    }

    /* Halfway in log space, within bounds. */
    trim = c->trim * sqrt(factor);
    trim = MAX(trim, DIRTYLIMIT_TRIM_MIN);
    trim = MIN(trim, DIRTYLIMIT_TRIM_MAX);
    c->trim = trim;
    c->burst = dl_burst(c);
    c->balance = MIN(c->balance, c->burst);
    dl_window_reset(c);
}

void dirtylimit_controller_feedback(DirtyLimitController *c,
                                    uint64_t measured_bytes,
                                    int64_t period_ns)
{
    double rate, weight;

    if (period_ns <= 0) {
        return;
    }

    /* Reported rate: the last period, smoothed over DIRTYLIMIT_REPORT_NS. */
    rate = (double)measured_bytes * DIRTYLIMIT_NS_PER_SEC / period_ns;
    weight = MIN(1.0, (double)period_ns / DIRTYLIMIT_REPORT_NS);
    if (c->rate_valid) {
        c->current_rate += weight * (rate - c->current_rate);
    } else {
        c->current_rate = rate;
        c->rate_valid = true;
    }

    /* Close the period. */
    c->last_period_throttle_ns = c->period_throttle_ns;
    if (c->quota) {
        c->win_charged += c->period_charged;
        c->win_measured += measured_bytes;
        c->win_max_batch = MAX(c->win_max_batch, c->period_max_batch);
        c->win_ns += period_ns;
    }
    c->period_charged = 0;
    c->period_max_batch = 0;
    c->period_throttle_ns = 0;

    if (c->quota) {
        dl_trim_update(c);
    }
}

uint64_t dirtylimit_controller_quota(const DirtyLimitController *c)
{
    return c->quota;
}

double dirtylimit_controller_trim(const DirtyLimitController *c)
{
    return c->trim;
}

uint64_t dirtylimit_controller_current_rate(const DirtyLimitController *c)
{
    return (uint64_t)(c->current_rate + 0.5);
}

int64_t dirtylimit_controller_throttle_ns_total(const DirtyLimitController *c)
{
    return c->throttle_ns_total;
}

uint64_t dirtylimit_controller_penalties(const DirtyLimitController *c)
{
    return c->penalties;
}

int64_t dirtylimit_controller_last_sleep_ns(const DirtyLimitController *c)
{
    return c->last_sleep_ns;
}

int64_t
dirtylimit_controller_period_throttle_ns(const DirtyLimitController *c)
{
    return c->last_period_throttle_ns;
}
