/*
 * Unit tests of Ferry's vCPU dirty-rate limit controller
 *
 * Drives softmmu/dirtylimit-controller.c with a simulated vCPU, so that
 * the controller's accuracy can be checked without KVM.  The simulated
 * vCPU free-runs at a given rate,
 * pushes one 4 KiB entry per page it dirties into a ring of N entries and
 * is harvested when the ring is full or at a periodic kick (every 2 ms);
 * each harvest is charged to the controller and the vCPU then sleeps for
 * what the controller returns, dirtying nothing meanwhile; when it wakes
 * up it asks wakeup() whether it owes more, as the integration does.  A
 * simulated controller thread calls feedback() every period with the
 * bytes harvested in that period.  The clock advances from event to event
 * (harvest, wake-up, period, rate change), never page by page, so the
 * whole test takes well under a second.
 *
 * The targets are those of SPEC section 1: quotas of 10, 100
 * and 1000 MB/s held within max(5%, 1 MB/s) averaged over 10 s after a
 * 3 s settle window, with ring sizes of 1024 and 4096 entries, periods of
 * 100 ms and 1000 ms, step changes, noise and a biased measurement; no
 * limit means no sleep; a vCPU that dirties nothing never sleeps.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "sysemu/dirtylimit-controller.h"
#include <math.h>

#define MB              ((double)DIRTYLIMIT_BYTES_PER_MB)
#define SEC             DIRTYLIMIT_NS_PER_SEC
#define MS              INT64_C(1000000)
#define PAGE            4096
#define KICK_NS         (2 * MS)
#define NOISE_STEP_NS   (10 * MS)
#define SEED            0x5eedf00dU
#define PAGE_SLACK      0.000001        /* rounding, in pages */

/* Free-running rates of the simulated vCPU, MB/s. */
#define FREE_KVM        2700.0  /* the boot-sector guest under PVM here */
#define FREE_SLOW       100.0

typedef struct SimConfig {
    double free_mbps;           /* free-running dirty rate */
    unsigned ring;              /* dirty ring entries */
    int64_t kick_ns;            /* periodic harvest, 0 = only when full */
    int64_t period_ns;          /* feedback period */
    double noise;               /* rate varies +-noise every 10 ms */
    double charge_bias;         /* charge() sees this x harvested bytes */
    double meas_bias;           /* feedback() sees this x measured bytes */
    bool progress_meas;         /* measure bytes dirtied, not harvested */
    double sleep_scale;         /* the vCPU sleeps this x what it is told */
    int64_t sleep_extra_ns;     /* ... plus this */
    bool no_wakeup;             /* it runs without asking wakeup() */
    int64_t stall_ns;           /* the host stops the vCPU this long ... */
    int64_t stall_every_ns;     /* ... at the start of every such interval */
    bool budget;                /* stopped and charged at run_budget() */
    int64_t budget_late_ns;     /* ... this long after the budget ran out */
} SimConfig;

typedef struct Sim {
    SimConfig cfg;
    DirtyLimitController ctl;
    GRand *rand;
    int64_t now;
    double base_rate;           /* bytes/s before noise */
    double rate;                /* bytes/s now */
    int64_t next_noise;
    int64_t next_kick;
    int64_t next_feedback;
    int64_t wake;               /* the vCPU sleeps until then */
    bool sleeping;
    double pages;               /* pages dirtied, fractional */
    uint64_t harvested;         /* pages harvested */
    double dirtied;             /* bytes dirtied (the guest's progress) */
    double period_dirtied;
    uint64_t period_harvested;
    uint64_t max_batch;         /* largest harvest, bytes */
    uint64_t sleeps;
    uint64_t bad_sleeps;        /* sleeps prescribed for nothing dirtied */
    bool budget_armed;          /* cfg.budget: the vCPU's run is timed */
    int64_t budget_end;         /* ... and it is stopped then */
} Sim;

static SimConfig sim_config(double free_mbps, unsigned ring,
                            int64_t period_ns)
{
    SimConfig cfg = {
        .free_mbps = free_mbps,
        .ring = ring,
        .kick_ns = KICK_NS,
        .period_ns = period_ns,
        .charge_bias = 1.0,
        .meas_bias = 1.0,
        .sleep_scale = 1.0,
    };
    return cfg;
}

static double tolerance(double quota)
{
    return MAX(0.05 * quota, 1.0 * MB);
}

static void sim_set_free_rate(Sim *s, double mbps)
{
    s->base_rate = mbps * MB;
    s->rate = s->base_rate;
}

/*
 * cfg.budget: a vCPU that is about to run (after a penalty, after a budget
 * in which it dirtied something, or with a new limit) arms a timer for
 * its run budget, as the integration does.
 */
static void sim_arm_budget(Sim *s)
{
    int64_t budget = dirtylimit_controller_run_budget(&s->ctl);

    if (!s->cfg.budget || s->budget_armed || budget <= 0) {
        return;
    }
    s->budget_armed = true;
    s->budget_end = s->now + budget + s->cfg.budget_late_ns;
}

static void sim_init(Sim *s, const SimConfig *cfg, double quota_mbps)
{
    memset(s, 0, sizeof(*s));
    s->cfg = *cfg;
    s->rand = g_rand_new_with_seed(SEED);
    sim_set_free_rate(s, cfg->free_mbps);
    s->next_noise = NOISE_STEP_NS;
    s->next_kick = cfg->kick_ns;
    s->next_feedback = cfg->period_ns;
    dirtylimit_controller_init(&s->ctl, (uint64_t)(quota_mbps * MB), 0);
    /* The integration kicks a vCPU that gets a limit: it arms a probe. */
    sim_arm_budget(s);
}

static void sim_destroy(Sim *s)
{
    g_rand_free(s->rand);
}

/* Change the quota and wake the vCPU, as the integration does. */
static void sim_set_quota(Sim *s, double quota_mbps)
{
    dirtylimit_controller_set_quota(&s->ctl, (uint64_t)(quota_mbps * MB),
                                    s->now);
    s->wake = MIN(s->wake, s->now);
    s->sleeping = false;
}

static void sim_sleep(Sim *s, int64_t sleep_ns)
{
    int64_t actual;

    g_assert_cmpint(sleep_ns, >=, 0);
    g_assert_cmpint(sleep_ns, <=, DIRTYLIMIT_MAX_SLEEP_NS);
    if (sleep_ns == 0) {
        return;
    }
    s->sleeps++;
    s->budget_armed = false;    /* a sleeping vCPU's timer is disarmed */
    actual = (int64_t)(sleep_ns * s->cfg.sleep_scale) + s->cfg.sleep_extra_ns;
    s->wake = s->now + actual;
    s->sleeping = true;
}

static uint64_t sim_ring_used(const Sim *s)
{
    return (uint64_t)floor(s->pages + PAGE_SLACK) - s->harvested;
}

static uint64_t sim_harvest(Sim *s)
{
    uint64_t n = sim_ring_used(s);
    uint64_t bytes = n * PAGE;
    uint64_t charged = (uint64_t)(bytes * s->cfg.charge_bias + 0.5);
    int64_t sleep_ns;

    s->harvested += n;
    s->period_harvested += bytes;
    s->max_batch = MAX(s->max_batch, bytes);

    sleep_ns = dirtylimit_controller_charge(&s->ctl, charged, s->now);
    if (sleep_ns > 0 && charged == 0) {
        s->bad_sleeps++;
    }
    sim_sleep(s, sleep_ns);
    return bytes;
}

static void sim_feedback(Sim *s)
{
    double measured = s->cfg.progress_meas ? s->period_dirtied
                                           : (double)s->period_harvested;

    dirtylimit_controller_feedback(&s->ctl,
                                   (uint64_t)(measured * s->cfg.meas_bias +
                                              0.5),
                                   s->cfg.period_ns);
    s->period_dirtied = 0;
    s->period_harvested = 0;
    s->next_feedback += s->cfg.period_ns;
}

/*
 * The host's stall (steal time) that covers @now, if any: returns when it
 * ends, else 0 and sets *next to when the next one starts.
 */
static int64_t sim_stall_end(const Sim *s, int64_t now, int64_t *next)
{
    int64_t start = now - now % s->cfg.stall_every_ns;

    if (now < start + s->cfg.stall_ns) {
        return start + s->cfg.stall_ns;
    }
    *next = start + s->cfg.stall_every_ns;
    return 0;
}

/* Advance the simulation to @end, event by event. */
static void sim_run_until(Sim *s, int64_t end)
{
    while (s->now < end) {
        bool running = s->now >= s->wake;
        bool stalled = false;
        int64_t t = MIN(end, s->next_feedback);

        if (s->cfg.noise > 0) {
            t = MIN(t, s->next_noise);
        }
        if (s->cfg.stall_ns) {
            int64_t next_stall = 0;
            int64_t stall_end = sim_stall_end(s, s->now, &next_stall);

            /* Stalled: nothing runs, not even a wake-up, until it ends. */
            stalled = stall_end != 0;
            running = running && !stalled;
            t = MIN(t, stalled ? stall_end : next_stall);
        }
        if (running) {
            if (s->cfg.kick_ns) {
                if (s->next_kick <= s->now) {
                    /* Kicks that came while it slept found nothing. */
                    s->next_kick = (s->now / s->cfg.kick_ns + 1) *
                                   s->cfg.kick_ns;
                }
                t = MIN(t, s->next_kick);
            }
            if (s->budget_armed) {
                t = MIN(t, s->budget_end);
            }
            if (s->rate > 0) {
                double left = (double)(s->harvested + s->cfg.ring) - s->pages;
                double dt = MAX(left, 0.0) * PAGE * SEC / s->rate;

                t = MIN(t, s->now + (int64_t)ceil(dt));
            }
        } else if (!stalled) {
            t = MIN(t, s->wake);
        }

        if (running && t > s->now) {
            double bytes = s->rate * (double)(t - s->now) / SEC;

            s->pages += bytes / PAGE;
            s->dirtied += bytes;
            s->period_dirtied += bytes;
        }
        s->now = t;
        if (stalled) {
            int64_t next_stall;

            stalled = sim_stall_end(s, s->now, &next_stall) != 0;
        }

        if (s->sleeping && s->now >= s->wake && !stalled) {
            s->sleeping = false;
            if (!s->cfg.no_wakeup) {
                sim_sleep(s, dirtylimit_controller_wakeup(&s->ctl, s->now));
            }
            if (!s->sleeping) {
                sim_arm_budget(s);
            }
        }
        if (running) {
            bool full = sim_ring_used(s) >= s->cfg.ring;
            bool kick = s->cfg.kick_ns && s->now >= s->next_kick;
            bool budget = s->budget_armed && s->now >= s->budget_end;

            if (budget) {
                /* Charged by the vCPU itself; it goes on if it owes none. */
                s->budget_armed = false;
                if (sim_harvest(s) && !s->sleeping) {
                    sim_arm_budget(s);
                }
            } else if (full || kick) {
                sim_harvest(s);
            }
        }
        if (s->now >= s->next_feedback) {
            sim_feedback(s);
        }
        if (s->cfg.noise > 0 && s->now >= s->next_noise) {
            double f = g_rand_double_range(s->rand, -s->cfg.noise,
                                           s->cfg.noise);

            s->rate = s->base_rate * (1.0 + f);
            s->next_noise += NOISE_STEP_NS;
        }
    }
}

/* True dirty rate averaged over [t0, t1], bytes/s. */
static double sim_avg_rate(Sim *s, int64_t t0, int64_t t1)
{
    double d0;

    sim_run_until(s, t0);
    d0 = s->dirtied;
    sim_run_until(s, t1);
    return (s->dirtied - d0) * SEC / (double)(t1 - t0);
}

/*
 * Run [t0, t1] in 10 ms steps and return the largest distance, in bytes,
 * between the guest's progress since t0 and the line quota x (t - t0).
 */
static double sim_max_deviation(Sim *s, int64_t t0, int64_t t1, double q)
{
    double d0, dev = 0;
    int64_t t;

    sim_run_until(s, t0);
    d0 = s->dirtied;
    for (t = t0 + 10 * MS; t <= t1; t += 10 * MS) {
        sim_run_until(s, t);
        dev = MAX(dev, fabs(s->dirtied - d0 - q * (t - t0) / SEC));
    }
    return dev;
}

static void sim_describe(const Sim *s, char *buf, size_t len)
{
    g_autofree char *noise = s->cfg.noise > 0 ?
        g_strdup_printf("+-%.0f%%", s->cfg.noise * 100) : g_strdup("");

    g_snprintf(buf, len, "free %.0f%s ring %u%s period %" PRId64 " ms",
               s->cfg.free_mbps, noise, s->cfg.ring,
               s->cfg.kick_ns ? "" : " (no kick)", s->cfg.period_ns / MS);
}

/*
 * The core check: settle 3 s, then the rate averaged over 10 s must be
 * within max(5%, 1 MB/s) of the quota.  With @quantised, one harvest
 * batch more or less in the 10 s is allowed on top (the mean is right,
 * but a window holds a whole number of batches).  Returns the average.
 */
static double check_holds_q(const SimConfig *cfg, double quota_mbps,
                            bool quantised, double *trim)
{
    double q = quota_mbps * MB;
    char what[128];
    double avg, err, dev, rep;
    Sim s;

    sim_init(&s, cfg, quota_mbps);
    avg = sim_avg_rate(&s, 3 * SEC, 13 * SEC);
    sim_describe(&s, what, sizeof(what));
    err = (avg - q) / q * 100;
    rep = dirtylimit_controller_current_rate(&s.ctl) / MB;
    g_test_message("%s quota %.0f: avg %.3f MB/s (%+.2f%%) trim %.3f "
                   "reported %.2f MB/s", what, quota_mbps, avg / MB, err,
                   dirtylimit_controller_trim(&s.ctl), rep);
    g_assert_cmpfloat(fabs(avg - q), <=,
                      tolerance(q) + (quantised ? s.max_batch / 10.0 : 0));
    g_assert_cmpuint(s.bad_sleeps, ==, 0);

    /*
     * It stays settled: progress never strays far from the quota line,
     * nor further behind it than one host stall puts it.
     */
    dev = sim_max_deviation(&s, 13 * SEC, 18 * SEC, q);
    g_assert_cmpfloat(dev, <=, 2.0 * s.max_batch + 2 * s.ctl.burst +
                      q * (2 * KICK_NS + cfg->stall_ns) / SEC);
    if (trim) {
        *trim = dirtylimit_controller_trim(&s.ctl);
    }
    sim_destroy(&s);
    return avg / MB;
}

static double check_holds(const SimConfig *cfg, double quota_mbps)
{
    return check_holds_q(cfg, quota_mbps, false, NULL);
}

static const unsigned rings[] = { 1024, 4096 };
static const int64_t periods[] = { 100 * MS, 1000 * MS };

static void check_holds_all(double quota_mbps, double noise)
{
    static const double frees[] = { FREE_KVM, FREE_SLOW };
    unsigned f, r, p, b;

    for (f = 0; f < G_N_ELEMENTS(frees); f++) {
        /* Only quotas below the free rate (or its noisy minimum). */
        if (quota_mbps >= frees[f] * (1.0 - noise)) {
            continue;
        }
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            for (p = 0; p < G_N_ELEMENTS(periods) * 2; p++) {
                SimConfig cfg = sim_config(frees[f], rings[r],
                                           periods[p / 2]);

                /* Also stopped at its run budget, as on the KVM ring. */
                b = p % 2;
                cfg.budget = b;
                cfg.noise = noise;
                check_holds(&cfg, quota_mbps);
            }
        }
    }
}

static void test_holds_10(void)
{
    check_holds_all(10, 0);
}

static void test_holds_100(void)
{
    check_holds_all(100, 0);
}

static void test_holds_1000(void)
{
    check_holds_all(1000, 0);
}

static void test_noise(void)
{
    check_holds_all(10, 0.5);
    check_holds_all(100, 0.5);
    check_holds_all(1000, 0.5);
}

/*
 * 1 MB/s (migration's default vcpu-dirty-limit) as the guest sees it: its
 * own progress over any window of 10 s or more, from 3 s after the limit
 * is set, within 5 %.  The controller thread harvests a ring every
 * ring-size/2 us; between harvests a free vCPU dirties 1.4 MB (1024
 * entries) to 5.4 MB (4096), seconds of this quota, so a window holds one
 * batch more or less.  Harvests also come late (the dirty log's take
 * milliseconds, a sleeping thread wakes late): @kick_ns.  The vCPU is
 * stopped @late after its budget runs out (a signal to leave KVM_RUN, an
 * emulator batch).
 */
static void check_holds_1MBps_every_window(unsigned ring, int64_t kick_ns,
                                           double free_mbps, int64_t late,
                                           bool budget)
{
    SimConfig cfg = sim_config(free_mbps, ring, 1000 * MS);
    double q = 1 * MB, worst = q;
    int64_t t0, len;
    Sim s;

    cfg.kick_ns = kick_ns;
    cfg.budget = budget;
    cfg.budget_late_ns = late;
    sim_init(&s, &cfg, 1);
    for (t0 = 3 * SEC; t0 < 13 * SEC; t0 += 97 * MS) {
        sim_run_until(&s, t0);
        for (len = 10 * SEC; len <= 15 * SEC; len += 5 * SEC) {
            Sim w = s;          /* noise is off: no GRand is drawn from */
            double avg = sim_avg_rate(&w, t0, t0 + len);

            if (fabs(avg - q) > fabs(worst - q)) {
                worst = avg;
            }
            s.max_batch = MAX(s.max_batch, w.max_batch);
            s.bad_sleeps += w.bad_sleeps;
        }
    }
    g_test_message("free %.0f ring %u harvested every %" PRId64 " us, "
                   "stopped %" PRId64 " us late%s: worst window %.3f MB/s "
                   "(%+.1f%%), batches up to %" PRIu64 " KiB", free_mbps,
                   ring, kick_ns / 1000, late / 1000,
                   budget ? "" : ", no run budget", worst / MB,
                   (worst - q) / q * 100, s.max_batch / 1024);
    g_assert_cmpfloat(fabs(worst - q), <=, 0.05 * q);
    g_assert_cmpuint(s.bad_sleeps, ==, 0);
    sim_destroy(&s);
}

static void test_holds_1MBps_every_window(void)
{
    static const int64_t lates[] = { 0, 20 * 1000, 100 * 1000 };
    static const double frees[] = { FREE_KVM, FREE_SLOW };
    unsigned r, l, f;

    for (r = 0; r < G_N_ELEMENTS(rings); r++) {
        for (l = 0; l < G_N_ELEMENTS(lates); l++) {
            for (f = 0; f < G_N_ELEMENTS(frees); f++) {
                /* The controller thread's interval, and late harvests. */
                check_holds_1MBps_every_window(rings[r], rings[r] / 2 * 1000,
                                               frees[f], lates[l], true);
                check_holds_1MBps_every_window(rings[r], 20 * MS, frees[f],
                                               lates[l], true);
            }
        }
    }
}

/* Ferry allows periods down to 1 ms: they must not upset anything. */
static void test_short_period(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    unsigned q, r;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            SimConfig cfg = sim_config(FREE_KVM, rings[r], 1 * MS);

            check_holds(&cfg, quotas[q]);
        }
    }
}

/*
 * Harvests only when the ring is full (real KVM without a harvest kick):
 * batches of up to 16 MiB, so that a 10 s window at 10 MB/s holds 6 or 7
 * of them; the average may be off by one batch.
 */
static void test_no_kick(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    unsigned q, r;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            SimConfig cfg = sim_config(FREE_KVM, rings[r], 1000 * MS);

            cfg.kick_ns = 0;
            check_holds_q(&cfg, quotas[q], true, NULL);
        }
    }
}

/*
 * The measurement is the guest's progress over each period rather than
 * the harvests, so it disagrees with the charges on which period a batch
 * belongs to: by up to a whole batch, which for a slow noisy vCPU on a
 * large ring without a harvest kick is 16 MiB, dirtied over a second or
 * more.  The trim must not chase that.
 */
static void test_progress_measurement(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    static const struct {
        double free, quota;
    } slow[] = {
        { 100, 10 }, { 100, 20 }, { 100, 50 }, { 30, 10 }, { 30, 20 },
        { 15, 10 },
    };
    unsigned q, r, p, k;
    double trim;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            for (p = 0; p < G_N_ELEMENTS(periods); p++) {
                SimConfig cfg = sim_config(FREE_KVM, rings[r], periods[p]);

                cfg.progress_meas = true;
                check_holds_q(&cfg, quotas[q], false, &trim);
                g_assert_cmpfloat(fabs(log(trim)), <=, log(1.02));
            }
        }
    }
    for (q = 0; q < G_N_ELEMENTS(slow); q++) {
        for (k = 0; k < 2; k++) {
            for (p = 0; p < G_N_ELEMENTS(periods); p++) {
                SimConfig cfg = sim_config(slow[q].free, 4096, periods[p]);

                cfg.progress_meas = true;
                cfg.noise = 0.5;
                cfg.kick_ns = k ? KICK_NS : 0;
                check_holds_q(&cfg, slow[q].quota, !k, &trim);
                g_assert_cmpfloat(fabs(log(trim)), <=, log(1.02));
            }
        }
    }
}

/* The vCPU wakes early (kicked) or late (scheduling) from its sleeps. */
static void test_sleep_jitter(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    static const struct {
        double scale;
        int64_t extra;
        bool no_wakeup;
    } jitter[] = {
        { 0.5, 0, true },       /* early, runs, owes the rest */
        { 0.5, 0, false },      /* early, wakeup() sends it back */
        { 1.3, 1 * MS, false }, /* late */
    };
    unsigned q, r, k;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            for (k = 0; k < G_N_ELEMENTS(jitter); k++) {
                SimConfig cfg = sim_config(FREE_KVM, rings[r], 100 * MS);

                cfg.sleep_scale = jitter[k].scale;
                cfg.sleep_extra_ns = jitter[k].extra;
                cfg.no_wakeup = jitter[k].no_wakeup;
                g_test_message("sleeping %.1fx the prescribed time + "
                               "%" PRId64 " ms%s", jitter[k].scale,
                               jitter[k].extra / MS,
                               jitter[k].no_wakeup ? ", no wakeup()" : "");
                check_holds(&cfg, quotas[q]);
            }
        }
    }
}

/*
 * The host stops the vCPU now and then (steal time: a 2-core cloud VM here
 * lost 20 ms and more at a time).  A vCPU that can go faster than its
 * quota must make up for a stall once it runs again, so the average holds;
 * the burst is what lets it bank the credit of the stalled time.
 */
static void test_host_stalls(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    static const int64_t stalls[] = { 5 * MS, 20 * MS, 40 * MS, 80 * MS };
    unsigned q, r, k;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            for (k = 0; k < G_N_ELEMENTS(stalls); k++) {
                /* 20% stolen, and the rest runs 1.5x the quota. */
                SimConfig cfg = sim_config(quotas[q] * 1.5 / 0.8, rings[r],
                                           1000 * MS);

                cfg.stall_ns = stalls[k];
                cfg.stall_every_ns = 5 * stalls[k];
                g_test_message("stopped %" PRId64 " ms of every %" PRId64,
                               stalls[k] / MS, 5 * stalls[k] / MS);
                check_holds(&cfg, quotas[q]);
            }
        }
    }
}

static void test_step_change(void)
{
    static const double steps[][2] = { { 100, 10 }, { 10, 1000 },
                                       { 1000, 100 } };
    unsigned i, r, p;

    for (i = 0; i < G_N_ELEMENTS(steps); i++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            for (p = 0; p < G_N_ELEMENTS(periods); p++) {
                SimConfig cfg = sim_config(FREE_KVM, rings[r], periods[p]);
                double q = steps[i][1] * MB;
                char what[128];
                double avg;
                Sim s;

                sim_init(&s, &cfg, steps[i][0]);
                sim_run_until(&s, 5 * SEC);
                sim_set_quota(&s, steps[i][1]);
                avg = sim_avg_rate(&s, 8 * SEC, 18 * SEC);
                sim_describe(&s, what, sizeof(what));
                g_test_message("%s quota %.0f -> %.0f: avg %.3f MB/s "
                               "(%+.2f%%)", what, steps[i][0], steps[i][1],
                               avg / MB, (avg - q) / q * 100);
                g_assert_cmpfloat(fabs(avg - q), <=, tolerance(q));
                g_assert_cmpuint(s.bad_sleeps, ==, 0);
                sim_destroy(&s);
            }
        }
    }
}

/* No limit: charge() returns 0 and the vCPU runs free. */
static void test_unlimited(void)
{
    SimConfig cfg = sim_config(FREE_KVM, 4096, 100 * MS);
    double avg;
    Sim s;

    sim_init(&s, &cfg, 0);
    avg = sim_avg_rate(&s, 0, 5 * SEC);
    g_test_message("unlimited: avg %.3f MB/s", avg / MB);
    g_assert_cmpuint(s.sleeps, ==, 0);
    g_assert_cmpfloat(fabs(avg - FREE_KVM * MB), <=, 0.001 * FREE_KVM * MB);
    g_assert_cmpint(dirtylimit_controller_charge(&s.ctl, 1ULL << 40, s.now),
                    ==, 0);
    sim_destroy(&s);
}

/* Removing the limit restores the free rate at once. */
static void test_cancel(void)
{
    static const double frees[] = { FREE_KVM, FREE_SLOW };
    unsigned f, r;

    for (f = 0; f < G_N_ELEMENTS(frees); f++) {
        for (r = 0; r < G_N_ELEMENTS(rings); r++) {
            SimConfig cfg = sim_config(frees[f], rings[r], 100 * MS);
            double free_rate = frees[f] * MB;
            double avg;
            uint64_t sleeps;
            Sim s;

            sim_init(&s, &cfg, 10);
            sim_run_until(&s, 5 * SEC);
            g_assert_cmpuint(s.sleeps, >, 0);
            sim_set_quota(&s, 0);
            sleeps = s.sleeps;
            avg = sim_avg_rate(&s, 5 * SEC, 5 * SEC + 100 * MS);
            g_test_message("free %.0f ring %u: first 100 ms after cancel "
                           "%.3f MB/s", frees[f], rings[r], avg / MB);
            g_assert_cmpfloat(avg, >=, 0.999 * free_rate);
            avg = sim_avg_rate(&s, 5 * SEC + 100 * MS, 6 * SEC);
            g_assert_cmpfloat(avg, >=, 0.999 * free_rate);
            g_assert_cmpuint(s.sleeps, ==, sleeps);
            sim_destroy(&s);
        }
    }
}

/* A vCPU that dirties nothing is never told to sleep, even owing debt. */
static void test_idle(void)
{
    static const double quotas[] = { 1, 10, 1000 };
    DirtyLimitController c;
    unsigned q;
    int64_t t;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        SimConfig cfg = sim_config(0, 4096, 100 * MS);
        Sim s;

        sim_init(&s, &cfg, quotas[q]);
        sim_run_until(&s, 30 * SEC);
        g_assert_cmpuint(s.sleeps, ==, 0);
        g_assert_cmpfloat(dirtylimit_controller_trim(&s.ctl), ==, 1.0);
        g_assert_cmpuint(dirtylimit_controller_current_rate(&s.ctl), ==, 0);
        sim_destroy(&s);
    }

    /* Owing 10 s of debt after a capped sleep, still no sleep for 0. */
    dirtylimit_controller_init(&c, 10 * DIRTYLIMIT_BYTES_PER_MB, 0);
    g_assert_cmpint(dirtylimit_controller_charge(&c, 110ULL << 20, 0), ==,
                    DIRTYLIMIT_MAX_SLEEP_NS);
    for (t = 0; t < 5 * SEC; t += KICK_NS) {
        g_assert_cmpint(dirtylimit_controller_charge(&c, 0, t), ==, 0);
    }
    /* And the debt is still owed by the next page. */
    g_assert_cmpint(dirtylimit_controller_charge(&c, PAGE, t), >, 0);
}

/* A vCPU below its quota is never penalised, however rarely harvested. */
static void test_below_quota(void)
{
    static const struct {
        double free, quota;
        unsigned ring;
        int64_t kick;
    } cases[] = {
        { 8, 10, 4096, 0 },          /* harvested every 2 s */
        { 90, 100, 4096, 0 },
        { 90, 100, 1024, KICK_NS },
        { 900, 1000, 4096, KICK_NS },
    };
    unsigned i;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        SimConfig cfg = sim_config(cases[i].free, cases[i].ring, 100 * MS);
        double avg;
        Sim s;

        cfg.kick_ns = cases[i].kick;
        sim_init(&s, &cfg, cases[i].quota);
        avg = sim_avg_rate(&s, 0, 20 * SEC);
        g_test_message("free %.0f quota %.0f ring %u: avg %.3f MB/s, "
                       "%" PRIu64 " sleeps", cases[i].free, cases[i].quota,
                       cases[i].ring, avg / MB, s.sleeps);
        g_assert_cmpuint(s.sleeps, ==, 0);
        g_assert_cmpfloat(fabs(avg - cases[i].free * MB), <=,
                          0.001 * cases[i].free * MB);
        sim_destroy(&s);
    }
}

/*
 * The feedback (@meas) or the charges (@charge) see a biased count.  The
 * trim makes the measured rate equal to the quota; after a long idle
 * spell it is unchanged (no wind-up) and the quota holds at once.
 */
static void check_bias(double quota_mbps, unsigned ring, int64_t period,
                       double meas, double charge)
{
    SimConfig cfg = sim_config(FREE_KVM, ring, period);
    double q = quota_mbps * MB;
    double want = charge / meas;
    double avg, trim;
    char what[128];
    Sim s;

    cfg.meas_bias = meas;
    cfg.charge_bias = charge;
    sim_init(&s, &cfg, quota_mbps);
    sim_describe(&s, what, sizeof(what));

    /* The feedback's view of the rate is what must sit at the quota. */
    avg = sim_avg_rate(&s, 3 * SEC, 13 * SEC) * meas;
    trim = dirtylimit_controller_trim(&s.ctl);
    g_test_message("%s quota %.0f, measured x%.2f, charged x%.2f: "
                   "avg %.3f MB/s (%+.2f%%) trim %.3f (ideal %.3f)", what,
                   quota_mbps, meas, charge, avg / MB, (avg - q) / q * 100,
                   trim, want);
    g_assert_cmpfloat(fabs(avg - q), <=, tolerance(q));
    g_assert_cmpfloat(fabs(log(trim / want)), <=, log1p(tolerance(q) / q));

    /* Idle for 30 s: the trim must not move. */
    sim_set_free_rate(&s, 0);
    sim_run_until(&s, 43 * SEC);
    g_assert_cmpfloat(dirtylimit_controller_trim(&s.ctl), ==, trim);
    g_assert_cmpuint(s.bad_sleeps, ==, 0);

    /* Busy again: the quota holds from the start. */
    sim_set_free_rate(&s, FREE_KVM);
    avg = sim_avg_rate(&s, 43 * SEC, 53 * SEC) * meas;
    trim = dirtylimit_controller_trim(&s.ctl);
    g_test_message("  after 30 s idle: avg %.3f MB/s (%+.2f%%) trim %.3f",
                   avg / MB, (avg - q) / q * 100, trim);
    g_assert_cmpfloat(fabs(avg - q), <=, tolerance(q));
    g_assert_cmpfloat(fabs(log(trim / want)), <=, log(1.05));
    sim_destroy(&s);
}

static void test_measurement_bias(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    static const double biases[] = { 0.8, 1.25 };
    unsigned q, b, r, p;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (b = 0; b < G_N_ELEMENTS(biases); b++) {
            for (r = 0; r < G_N_ELEMENTS(rings); r++) {
                for (p = 0; p < G_N_ELEMENTS(periods); p++) {
                    check_bias(quotas[q], rings[r], periods[p],
                               biases[b], 1.0);
                }
            }
        }
    }
}

static void test_charge_bias(void)
{
    static const double quotas[] = { 10, 100, 1000 };
    static const double biases[] = { 0.8, 1.25 };
    unsigned q, b;

    for (q = 0; q < G_N_ELEMENTS(quotas); q++) {
        for (b = 0; b < G_N_ELEMENTS(biases); b++) {
            check_bias(quotas[q], 4096, 1000 * MS, 1.0, biases[b]);
        }
    }
}

/* An absurd bias drives the trim to its bound and no further. */
static void test_trim_bounds(void)
{
    static const double biases[] = { 0.1, 10 };
    static const double bounds[] = { DIRTYLIMIT_TRIM_MAX,
                                     DIRTYLIMIT_TRIM_MIN };
    unsigned b;

    for (b = 0; b < G_N_ELEMENTS(biases); b++) {
        SimConfig cfg = sim_config(FREE_KVM, 1024, 100 * MS);
        double trim;
        Sim s;

        cfg.meas_bias = biases[b];
        sim_init(&s, &cfg, 100);
        sim_run_until(&s, 20 * SEC);
        trim = dirtylimit_controller_trim(&s.ctl);
        g_test_message("measured x%.1f: trim %.3f", biases[b], trim);
        g_assert_cmpfloat(trim, ==, bounds[b]);
        sim_destroy(&s);
    }
}

/*
 * One huge batch: sleeps of at most 1 s, handed out by wakeup(), and no
 * more than DIRTYLIMIT_MAX_OWED_NS in all; a vCPU that runs between the
 * slices instead (charging a page each time) owes no more either.
 */
static void test_sleep_cap(void)
{
    DirtyLimitController c;
    int64_t t = 0, sleep_ns, total = 0;
    unsigned n = 0;

    dirtylimit_controller_init(&c, 10 * DIRTYLIMIT_BYTES_PER_MB, 0);
    sleep_ns = dirtylimit_controller_charge(&c, 1ULL << 30, t);
    while (sleep_ns > 0) {
        g_assert_cmpint(sleep_ns, <=, DIRTYLIMIT_MAX_SLEEP_NS);
        n++;
        total += sleep_ns;
        t += sleep_ns;
        g_assert_cmpint(dirtylimit_controller_charge(&c, 0, t), ==, 0);
        sleep_ns = dirtylimit_controller_wakeup(&c, t);
    }
    g_test_message("1 GiB at 10 MB/s: %u sleeps, %.3f s in all", n,
                   (double)total / SEC);
    g_assert_cmpuint(n, ==, DIRTYLIMIT_MAX_OWED_NS / DIRTYLIMIT_MAX_SLEEP_NS);
    g_assert_cmpint(total, ==, DIRTYLIMIT_MAX_OWED_NS);
    g_assert_cmpint(dirtylimit_controller_throttle_ns_total(&c), ==, total);
    g_assert_cmpuint(dirtylimit_controller_penalties(&c), ==, 1);
    g_assert_cmpint(dirtylimit_controller_last_sleep_ns(&c), ==,
                    DIRTYLIMIT_MAX_SLEEP_NS);

    dirtylimit_controller_init(&c, 10 * DIRTYLIMIT_BYTES_PER_MB, 0);
    t = total = n = 0;
    sleep_ns = dirtylimit_controller_charge(&c, 1ULL << 30, t);
    while (sleep_ns > 0) {
        n++;
        total += sleep_ns;
        t += sleep_ns + 2 * MS;
        sleep_ns = dirtylimit_controller_charge(&c, PAGE, t);
    }
    g_test_message("the same, running 2 ms between sleeps: %u sleeps, "
                   "%.3f s in all", n, (double)total / SEC);
    g_assert_cmpint(total, <=, DIRTYLIMIT_MAX_OWED_NS);
    g_assert_cmpint(total, >=, DIRTYLIMIT_MAX_OWED_NS - n * 2 * MS);
}

/* Sleep is reserved: calling again early owes the rest, not less. */
static void test_early_charge(void)
{
    DirtyLimitController c;
    int64_t s1, s2;

    dirtylimit_controller_init(&c, 10 * DIRTYLIMIT_BYTES_PER_MB, 0);
    /* The initial burst of credit, then 1 MB: 100 ms at 10 MB/s. */
    s1 = dirtylimit_controller_charge(&c, (uint64_t)c.burst +
                                      DIRTYLIMIT_BYTES_PER_MB, 0);
    g_assert_cmpint(s1, ==, 100 * MS);
    /* Woken at half time, one more MB: the other half plus 100 ms. */
    s2 = dirtylimit_controller_charge(&c, DIRTYLIMIT_BYTES_PER_MB, 50 * MS);
    g_assert_cmpint(s2, ==, 150 * MS);
    /* Woken again at 120 ms: wakeup() owes the remaining 80 ms. */
    g_assert_cmpint(dirtylimit_controller_wakeup(&c, 120 * MS), ==, 80 * MS);
    g_assert_cmpint(dirtylimit_controller_throttle_ns_total(&c), ==,
                    200 * MS);
    g_assert_cmpuint(dirtylimit_controller_penalties(&c), ==, 2);
    g_assert_cmpint(dirtylimit_controller_wakeup(&c, 200 * MS), ==, 0);
    /* Back on time and nothing more: no sleep, no credit from the past. */
    g_assert_cmpint(dirtylimit_controller_charge(&c, 0, 200 * MS), ==, 0);
    g_assert_cmpint(dirtylimit_controller_charge(&c, PAGE, 200 * MS), >, 0);
}

/*
 * KVM's dirty log is shared by CPU time: the shares follow the use,
 * rounding loses no page over many harvests, and a vCPU that used no
 * CPU (halted, or serving a penalty) is charged nothing.
 */
static void test_share_by_cpu_time(void)
{
    int64_t rem[3] = { 0 };
    uint64_t got[3] = { 0 };
    const int64_t used[3] = { 250000, 750000, 0 };
    int h, i;

    for (h = 0; h < 1000; h++) {
        for (i = 0; i < 3; i++) {
            got[i] += dirtylimit_share(7, used[i], 1000000, &rem[i]);
        }
    }
    g_assert_cmpuint(got[0], ==, 1750);
    g_assert_cmpuint(got[1], ==, 5250);
    g_assert_cmpuint(got[2], ==, 0);

    /* One page per harvest, equal use: each gets every other page. */
    memset(rem, 0, sizeof(rem));
    memset(got, 0, sizeof(got));
    for (h = 0; h < 1001; h++) {
        for (i = 0; i < 2; i++) {
            got[i] += dirtylimit_share(1, 3, 6, &rem[i]);
        }
    }
    g_assert_cmpuint(got[0], ==, 500);
    g_assert_cmpuint(got[1], ==, 500);
    g_assert_cmpuint(got[0] + got[1], >=, 1001 - 2);

    /* Nobody ran: nothing to share. */
    g_assert_cmpuint(dirtylimit_share(100, 0, 0, &rem[0]), ==, 0);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    g_test_add_func("/dirtylimit/controller/unlimited", test_unlimited);
    g_test_add_func("/dirtylimit/controller/holds-10MBps", test_holds_10);
    g_test_add_func("/dirtylimit/controller/holds-100MBps", test_holds_100);
    g_test_add_func("/dirtylimit/controller/holds-1MBps-in-every-window",
                    test_holds_1MBps_every_window);
    g_test_add_func("/dirtylimit/controller/holds-1000MBps",
                    test_holds_1000);
    g_test_add_func("/dirtylimit/controller/no-kick", test_no_kick);
    g_test_add_func("/dirtylimit/controller/short-period",
                    test_short_period);
    g_test_add_func("/dirtylimit/controller/step-change", test_step_change);
    g_test_add_func("/dirtylimit/controller/host-stalls", test_host_stalls);
    g_test_add_func("/dirtylimit/controller/cancel", test_cancel);
    g_test_add_func("/dirtylimit/controller/idle-never-sleeps", test_idle);
    g_test_add_func("/dirtylimit/controller/below-quota-never-sleeps",
                    test_below_quota);
    g_test_add_func("/dirtylimit/controller/noise", test_noise);
    g_test_add_func("/dirtylimit/controller/progress-measurement",
                    test_progress_measurement);
    g_test_add_func("/dirtylimit/controller/sleep-jitter",
                    test_sleep_jitter);
    g_test_add_func("/dirtylimit/controller/measurement-bias",
                    test_measurement_bias);
    g_test_add_func("/dirtylimit/controller/charge-bias", test_charge_bias);
    g_test_add_func("/dirtylimit/controller/trim-bounds", test_trim_bounds);
    g_test_add_func("/dirtylimit/controller/sleep-cap", test_sleep_cap);
    g_test_add_func("/dirtylimit/controller/early-charge",
                    test_early_charge);
    g_test_add_func("/dirtylimit/controller/share-by-cpu-time",
                    test_share_by_cpu_time);

    return g_test_run();
}
