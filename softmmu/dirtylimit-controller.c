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
 *   twice, and an early wake-up still owes the rest.  One sleep is at
 *   most DIRTYLIMIT_MAX_SLEEP_NS; wakeup() hands out the rest of a larger
 *   debt, and debt beyond DIRTYLIMIT_MAX_OWED_NS is forgiven.
 *
 * - feedback() estimates the gain between the bytes charged and the bytes
 *   measured independently, from the ratio of the two accumulated over
 *   many periods, and moves the trim halfway towards it in log space.
 *   While the vCPU is penalised it charges quota x trim per second, so
 *   the correction is exactly quota / measured rate; using the bytes
 *   actually charged instead of the quota keeps harvest bursts, idle
 *   time and slow vCPUs from moving the trim (no wind-up).  The gain does
 *   not depend on the trim, so the evidence is kept across corrections;
 *   the trim moves only when the error is larger than one harvest batch
 *   counted in the wrong period could explain, so coarse batches at small
 *   quotas do not make it jitter, and it gets more precise with time.
 *
 * - run_budget() bounds the batches themselves.  The bucket holds the
 *   average, but a vCPU charged only at its harvests dirties a whole
 *   harvest interval at full speed and then sleeps it off: at a quota of
 *   a few MB/s that is seconds of allowance at once, and a window of ten
 *   seconds holds one such batch more or less.  charge() learns how fast
 *   the vCPU dirties while it runs (each batch over the time since the
 *   vCPU last started to run or was charged), so the integration can stop
 *   it after a fraction of its allowance.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "sysemu/dirtylimit-controller.h"
#include <math.h>

/*
 * Largest batch accepted, in bytes: far beyond any real batch (a 64
 * Ki-entry ring of 4 KiB pages is 256 MiB), and small enough that the
 * double arithmetic below stays exact to the byte.
 */
#define DL_MAX_BATCH            (1ULL << 50)

/*
 * Weight of the newest batch in the vCPU's speed: batches are as short as
 * the budget allows, and how late the vCPU stops (a signal, an exit)
 * varies from one to the next.
 */
#define DL_RUN_RATE_WEIGHT      0.25

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
 * Relative dead band of the feedback: 1% of the quota, but never below
 * 128 KiB/s (32 pages/s), where a quota is small enough (under 12.5 MB/s)
 * that a few pages of counting noise would exceed 1%.  Together with the
 * batch uncertainty (at most 1/DIRTYLIMIT_EVIDENCE_BATCHES once enough
 * evidence is in) this stays well inside the acceptance band of SPEC
 * section 1, max(5%, 1 MB/s), while sparing the trim needless steps.
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

/*
 * Forgive debt beyond DIRTYLIMIT_MAX_OWED_NS of allowance (counting what
 * is already reserved), so that no batch holds a vCPU for longer.
 */
static void dl_clamp_debt(DirtyLimitController *c, int64_t now_ns)
{
    int64_t reserved = MAX(c->last_ns - now_ns, 0);
    double limit = (double)(DIRTYLIMIT_MAX_OWED_NS - reserved) *
                   dl_allowance(c) / DIRTYLIMIT_NS_PER_SEC;

    c->balance = MAX(c->balance, -limit);
}

/* A reservation can never reach further than one maximal sleep. */
static void dl_clamp_reservation(DirtyLimitController *c, int64_t now_ns)
{
    if (c->last_ns - now_ns > DIRTYLIMIT_MAX_SLEEP_NS) {
        c->last_ns = now_ns + DIRTYLIMIT_MAX_SLEEP_NS;
    }
}

void dirtylimit_controller_init(DirtyLimitController *c,
                                uint64_t quota_bytes_per_sec, int64_t now_ns)
{
    memset(c, 0, sizeof(*c));
    c->trim = 1.0;
    c->quota = quota_bytes_per_sec;
    c->last_ns = now_ns;
    c->running = true;
    c->run_since_ns = now_ns;
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
        }
    }
    c->last_ns = now_ns;
    c->quota = quota_bytes_per_sec;

    if (!c->quota) {
        c->balance = 0;
        c->burst = 0;
        return;
    }
    c->burst = dl_burst(c);
    if (!was_limited) {
        c->balance = c->burst;
        c->running = true;
        c->run_since_ns = now_ns;
    }
    c->balance = MIN(c->balance, c->burst);
    dl_clamp_debt(c, now_ns);
}

/*
 * Prescribe the sleep still owed at @now_ns: the reserved time (last_ns
 * beyond now) plus the time the allowance takes to repay the debt, at
 * most DIRTYLIMIT_MAX_SLEEP_NS.  The credit up to last_ns is spent
 * already, so repayment starts there; the sleep is reserved by moving
 * last_ns to the wake-up time, and what a capped sleep does not repay
 * stays as debt.  The bucket must be accrued up to @now_ns.
 */
static int64_t dl_prescribe(DirtyLimitController *c, int64_t now_ns)
{
    double allowance = dl_allowance(c);
    int64_t start_ns = MAX(c->last_ns, now_ns);
    int64_t wake_ns;
    double wake;

    if (c->balance >= 0) {
        wake_ns = start_ns;
    } else {
        wake = (double)start_ns +
               ceil(-c->balance * DIRTYLIMIT_NS_PER_SEC / allowance);
        if (wake - (double)now_ns > DIRTYLIMIT_MAX_SLEEP_NS) {
            wake_ns = now_ns + DIRTYLIMIT_MAX_SLEEP_NS;
            c->balance += (double)(wake_ns - start_ns) * allowance /
                          DIRTYLIMIT_NS_PER_SEC;
            c->balance = MIN(c->balance, 0.0);
        } else {
            wake_ns = (int64_t)wake;
            c->balance = 0;
        }
    }
    /* Only newly reserved time counts as throttling. */
    c->throttle_ns_total += wake_ns - start_ns;
    c->last_ns = wake_ns;
    if (wake_ns > now_ns) {
        c->last_sleep_ns = wake_ns - now_ns;
    }
    return wake_ns - now_ns;
}

int64_t dirtylimit_controller_charge(DirtyLimitController *c,
                                     uint64_t dirtied_bytes, int64_t now_ns)
{
    int64_t sleep_ns;

    dirtied_bytes = MIN(dirtied_bytes, DL_MAX_BATCH);
    c->period_charged += dirtied_bytes;
    c->period_max_batch = MAX(c->period_max_batch, dirtied_bytes);

    if (!c->quota) {
        c->last_ns = now_ns;
        return 0;
    }

    /*
     * A batch dirtied by a vCPU that ran all the time since it last
     * started or was charged says how fast it runs.
     */
    if (c->running && dirtied_bytes && now_ns > c->run_since_ns) {
        double rate = (double)dirtied_bytes * DIRTYLIMIT_NS_PER_SEC /
                      (now_ns - c->run_since_ns);

        c->run_rate += c->run_rate > 0 ? DL_RUN_RATE_WEIGHT *
                                         (rate - c->run_rate) : rate;
    }
    c->run_since_ns = now_ns;

    /* Pay the batch from the credit of its interval, then cap the rest. */
    dl_clamp_reservation(c, now_ns);
    dl_accrue(c, now_ns);
    c->balance -= (double)dirtied_bytes;
    c->balance = MIN(c->balance, c->burst);
    dl_clamp_debt(c, now_ns);

    if (dirtied_bytes == 0 || c->balance >= 0) {
        return 0;
    }
    sleep_ns = dl_prescribe(c, now_ns);
    c->penalties++;
    c->running = sleep_ns == 0;
    return sleep_ns;
}

int64_t dirtylimit_controller_wakeup(DirtyLimitController *c, int64_t now_ns)
{
    int64_t sleep_ns;

    if (!c->quota) {
        return 0;
    }
    dl_clamp_reservation(c, now_ns);
    /*
     * Not capped at the burst: credit for oversleeping belongs to the
     * interval that the next charge() pays for, as if it accrued it.
     */
    dl_accrue(c, now_ns);
    sleep_ns = dl_prescribe(c, now_ns);
    if (!sleep_ns && !c->running) {
        c->running = true;
        c->run_since_ns = now_ns;
    }
    return sleep_ns;
}

int64_t dirtylimit_controller_run_budget(const DirtyLimitController *c)
{
    double bytes, ns;

    if (!c->quota) {
        return 0;
    }
    if (c->run_rate <= 0) {
        return DIRTYLIMIT_PROBE_NS;
    }
    /*
     * Not counting its credit: a vCPU with credit at hand is charged at
     * the end of its budget, owes nothing and runs another, a few more
     * interruptions after an idle spell rather than one large batch.
     */
    bytes = dl_allowance(c) * DIRTYLIMIT_BATCH_NS / DIRTYLIMIT_NS_PER_SEC;
    ns = ceil(bytes * DIRTYLIMIT_NS_PER_SEC / c->run_rate);
    return (int64_t)MAX(1.0, MIN(ns, (double)DIRTYLIMIT_MAX_SLEEP_NS));
}

/* Move the trim towards what the evidence says, if it says enough. */
static void dl_trim_update(DirtyLimitController *c)
{
    uint64_t batch = MAX(c->ev_max_batch, c->ev_prev_max_batch);
    double err, uncertainty, trim;

    /* Too little activity to say anything: never wind up on it. */
    if (c->ev_charged < DIRTYLIMIT_EVIDENCE_MIN || c->ev_measured <= 0) {
        return;
    }

    /*
     * The trim that makes the measured rate equal to the quota is
     * charged / measured; err is the way from here to there (log space).
     * Measurement and charges may disagree on which period one harvest
     * batch belongs to, so an error that one batch explains is no error.
     */
    err = log(c->ev_charged / (c->ev_measured * c->trim));
    uncertainty = (double)batch / c->ev_charged;
    if (fabs(err) > uncertainty + log1p(dl_tolerance(c))) {
        trim = c->trim * exp(err / 2);
        trim = MAX(trim, DIRTYLIMIT_TRIM_MIN);
        trim = MIN(trim, DIRTYLIMIT_TRIM_MAX);
        c->trim = trim;
        c->burst = dl_burst(c);
        c->balance = MIN(c->balance, c->burst);
    }

    /* Let old evidence fade once there is plenty. */
    if (c->ev_charged >= (double)DIRTYLIMIT_EVIDENCE_BATCHES * batch &&
        c->ev_charged >= 2.0 * DIRTYLIMIT_EVIDENCE_MIN &&
        c->ev_ns >= DIRTYLIMIT_EVIDENCE_NS) {
        c->ev_charged /= 2;
        c->ev_measured /= 2;
        c->ev_ns /= 2;
        c->ev_prev_max_batch = c->ev_max_batch;
        c->ev_max_batch = 0;
    }
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
    if (c->quota) {
        c->ev_charged += c->period_charged;
        c->ev_measured += measured_bytes;
        c->ev_max_batch = MAX(c->ev_max_batch, c->period_max_batch);
        c->ev_ns += period_ns;
    }
    c->period_charged = 0;
    c->period_max_batch = 0;

    if (c->quota) {
        dl_trim_update(c);
    }
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

uint64_t dirtylimit_share(uint64_t pages, int64_t used_ns, int64_t total_ns,
                          int64_t *remainder)
{
    int64_t share;

    if (total_ns <= 0) {
        return 0;
    }
    share = pages * used_ns + *remainder;
    *remainder = share % total_ns;
    return share / total_ns;
}
