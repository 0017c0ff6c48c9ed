/*
 * Ferry vCPU dirty-page-rate limit: the per-vCPU controller
 *
 * This is the pure part of Ferry's dirty limit (SPEC section 1): given the
 * bytes a vCPU has dirtied and the time, it says how long the vCPU must
 * sleep so that its dirty rate stays at a quota.  It has no globals, no
 * clocks, no locks and no threads; every call is given the time, so the
 * whole controller can be driven and tested with a simulated vCPU.  The
 * integration (accel/kvm, TCG, softmmu/dirtylimit.c) owns the clock, the
 * locking and the actual sleeping.
 *
 * Why not upstream's controller: it adjusts a per-ring-full sleep from a
 * once-a-second measurement, with an absolute 25 MB/s tolerance, a penalty
 * capped at 99x the ring-fill time and a maximum rate that never goes down,
 * so it cannot hold small quotas, and it reacts slowly with large rings.
 * Here the sleep is computed directly from a rate: a leaky bucket that is
 * credited at quota x trim bytes per second and debited by the bytes the
 * vCPU dirtied.  The bucket alone holds the rate the vCPU is charged for,
 * whatever the ring size or the harvest interval, from the first harvest
 * on.  A slow feedback loop then corrects the "trim", a gain between what
 * the vCPU is charged for and what is measured independently (entries lost
 * to a ring overrun, TCG counting, de-duplication), so that the measured
 * rate sits at the quota.
 *
 * Units: rates in bytes per second, sizes in bytes, times in nanoseconds
 * of a monotonic clock.  1 MB = 1 MiB = 1048576 bytes, as in QEMU's dirty
 * rate reporting.
 *
 * Concurrency: none here.  charge() runs in the vCPU thread and feedback()
 * in the controller thread; the caller serialises all calls on one
 * controller (a per-vCPU mutex is enough; every call is O(1)).
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SYSEMU_DIRTYLIMIT_CONTROLLER_H
#define SYSEMU_DIRTYLIMIT_CONTROLLER_H

/* Bytes in the "MB" of MB/s used by the dirty limit interfaces. */
#define DIRTYLIMIT_BYTES_PER_MB         (1ULL << 20)

/* Nanoseconds per second (kept here so that no clock header is needed). */
#define DIRTYLIMIT_NS_PER_SEC           1000000000LL

/*
 * Longest single sleep charge() or wakeup() prescribes.  Debt beyond it
 * is carried and paid by later sleeps, so that a vCPU always wakes up at
 * least once a second to look at its state.
 */
#define DIRTYLIMIT_MAX_SLEEP_NS         DIRTYLIMIT_NS_PER_SEC

/*
 * Most sleep a vCPU can owe at once; debt beyond it is forgiven, so that
 * one huge batch (pages dirtied before the limit was set, a quota cut from
 * 1000 to 1 MB/s) cannot freeze a vCPU for long.  It also bounds the
 * smallest quota that batches of B bytes can be held at: B / 10 s.
 */
#define DIRTYLIMIT_MAX_OWED_NS          (10 * DIRTYLIMIT_NS_PER_SEC)

/*
 * Burst: the most credit a vCPU can keep between two charges is the larger
 * of DIRTYLIMIT_BURST_NS worth of its allowance and DIRTYLIMIT_BURST_MIN.
 * It is what a vCPU can make up for after the host stopped it (steal
 * time, tens of milliseconds on a cloud VM): credit beyond it is lost,
 * and the average falls short of the quota by that much.
 */
#define DIRTYLIMIT_BURST_NS             (100 * 1000 * 1000LL)
#define DIRTYLIMIT_BURST_MIN            (256 * 1024)

/*
 * Run budget: a vCPU that is charged only at its harvests dirties at full
 * speed from one to the next, and at a small quota one such batch is
 * seconds of its allowance (a 2 ms run of a 2.7 GB/s vCPU is 5 s of
 * 1 MB/s).  The guest's progress then runs ahead of the quota line by up
 * to a batch, and any window of 10 s sees one batch more or less: +-50 %.
 * dirtylimit_controller_run_budget() says how long a vCPU may run before
 * it should be charged so that a batch is at most DIRTYLIMIT_BATCH_NS of
 * its allowance, from its measured speed; until that is known,
 * DIRTYLIMIT_PROBE_NS.
 */
#define DIRTYLIMIT_BATCH_NS             (50 * 1000 * 1000LL)
#define DIRTYLIMIT_PROBE_NS             (50 * 1000LL)

/* Bounds of the feedback trim. */
#define DIRTYLIMIT_TRIM_MIN             0.25
#define DIRTYLIMIT_TRIM_MAX             4.0

/*
 * Feedback dead band: the trim is left alone while the measured rate is
 * within the larger of DIRTYLIMIT_TOLERANCE_REL x quota and
 * DIRTYLIMIT_TOLERANCE_ABS bytes/s of the rate the bucket admitted, plus
 * what one harvest batch counted in the wrong period can explain.
 */
#define DIRTYLIMIT_TOLERANCE_REL        0.01
#define DIRTYLIMIT_TOLERANCE_ABS        (128 * 1024)

/*
 * Evidence for the trim: nothing is decided before
 * DIRTYLIMIT_EVIDENCE_MIN bytes have been charged under a limit, and the
 * evidence is halved (old periods weigh less) once it holds
 * DIRTYLIMIT_EVIDENCE_BATCHES of the largest harvest batch and covers
 * DIRTYLIMIT_EVIDENCE_NS.
 */
#define DIRTYLIMIT_EVIDENCE_MIN         (256 * 1024)
#define DIRTYLIMIT_EVIDENCE_BATCHES     128
#define DIRTYLIMIT_EVIDENCE_NS          (2 * DIRTYLIMIT_NS_PER_SEC)

/*
 * The reported current rate is an average over about this long (or the
 * last period, if the period is longer).
 */
#define DIRTYLIMIT_REPORT_NS            DIRTYLIMIT_NS_PER_SEC

/*
 * Per-vCPU controller state.  Treat it as opaque and use the functions
 * below; it is public only so that it can be embedded without allocation.
 */
typedef struct DirtyLimitController {
    /* Quota in bytes/s; 0 means no limit. */
    uint64_t quota;
    /* Gain applied to the quota when crediting, DIRTYLIMIT_TRIM_MIN..MAX. */
    double trim;

    /* Leaky bucket, in the bytes charge() is given. */
    double balance;             /* credit; negative = debt */
    double burst;               /* upper bound of balance */
    int64_t last_ns;            /* credited up to; > now while sleep owed */

    /* Counters of the feedback period in progress. */
    uint64_t period_charged;
    uint64_t period_max_batch;

    /* Feedback evidence, accumulated over periods under a limit. */
    double ev_charged;
    double ev_measured;
    uint64_t ev_max_batch;
    uint64_t ev_prev_max_batch;
    int64_t ev_ns;

    /* The vCPU's speed while it runs, for the run budget. */
    bool running;               /* not sleeping a prescribed penalty */
    int64_t run_since_ns;       /* running, and not charged, since then */
    double run_rate;            /* bytes/s while running; 0 = unknown */

    /* Reporting. */
    double current_rate;        /* bytes/s, smoothed measurement */
    bool rate_valid;
    int64_t throttle_ns_total;  /* all sleep prescribed, each ns once */
    uint64_t penalties;         /* charges that prescribed a sleep */
    int64_t last_sleep_ns;      /* the most recent non-zero sleep */
} DirtyLimitController;

/*
 * dirtylimit_controller_init:
 * @c: the controller
 * @quota_bytes_per_sec: the quota, 0 for no limit
 * @now_ns: the current time
 *
 * Start a controller with a trim of 1 and a full burst of credit.
 */
void dirtylimit_controller_init(DirtyLimitController *c,
                                uint64_t quota_bytes_per_sec, int64_t now_ns);

/*
 * dirtylimit_controller_set_quota:
 * @c: the controller
 * @quota_bytes_per_sec: the new quota, 0 to remove the limit
 * @now_ns: the current time
 *
 * Change the quota.  Credit and debt are settled at the old rate up to
 * @now_ns (a sleep still owed becomes debt), the trim is kept, and the
 * balance is clamped to the new burst, so the controller re-converges
 * from where it is.  Setting a quota on an unlimited vCPU starts it with a
 * full burst; removing the limit forgets all debt.  The integration should
 * wake a vCPU that is sleeping its penalty after any quota change: its
 * next charge() prescribes whatever it still owes at the new rate.
 */
void dirtylimit_controller_set_quota(DirtyLimitController *c,
                                     uint64_t quota_bytes_per_sec,
                                     int64_t now_ns);

/*
 * dirtylimit_controller_charge:
 * @c: the controller
 * @dirtied_bytes: bytes the vCPU dirtied since its previous charge
 * @now_ns: the current time
 *
 * Called by the vCPU thread each time it has harvested what it dirtied
 * (dirty ring full, a periodic harvest kick, or TCG's write path).  The
 * bucket is credited for the time since the previous charge at
 * quota x trim, the batch is paid from it, and the remaining credit is
 * capped at the burst (so a vCPU below its quota is never penalised
 * however rarely it is harvested, and an idle vCPU cannot bank credit).
 *
 * Returns: how long the vCPU must sleep now, in ns.  0 when there is no
 * limit, when @dirtied_bytes is 0, or when the balance is not negative.
 * Otherwise the sleep repays the debt at quota x trim, at most
 * DIRTYLIMIT_MAX_SLEEP_NS; the time of the sleep is reserved, so a vCPU
 * that wakes early owes the rest at its next charge, and the rest of a
 * capped debt is carried (see dirtylimit_controller_wakeup()).
 */
int64_t dirtylimit_controller_charge(DirtyLimitController *c,
                                     uint64_t dirtied_bytes, int64_t now_ns);

/*
 * dirtylimit_controller_wakeup:
 * @c: the controller
 * @now_ns: the current time
 *
 * Called by the vCPU thread when it wakes from a sleep that charge() or
 * wakeup() prescribed, before it runs the guest again, unless it was
 * woken to stop or because the quota changed.
 *
 * Returns: the further sleep still owed for what the vCPU has already
 * dirtied, in ns, at most DIRTYLIMIT_MAX_SLEEP_NS: the rest of a sleep cut
 * short, and the next slice of a debt larger than one sleep.  0 when it
 * owes nothing.  Sleeping in such slices holds the quota even when one
 * batch is worth more than a second of it (large rings without a harvest
 * kick, quotas of a few MB/s), while the vCPU looks at its state at least
 * once a second.
 */
int64_t dirtylimit_controller_wakeup(DirtyLimitController *c, int64_t now_ns);

/*
 * dirtylimit_controller_run_budget:
 * @c: the controller
 *
 * How long the vCPU, about to run, may run before it should be charged
 * again, so that what it dirties meanwhile is at most DIRTYLIMIT_BATCH_NS
 * of its allowance.  The speed it is assumed to dirty
 * at is learnt by charge() from the batches and the time the vCPU ran to
 * dirty them (since wakeup() or charge() last let it run); until a batch
 * has been seen it is DIRTYLIMIT_PROBE_NS.  The integration interrupts
 * the vCPU and charges it when the budget runs out, unless a harvest
 * charged it first.
 *
 * Returns: the budget in ns, 1..DIRTYLIMIT_MAX_SLEEP_NS; 0 when there is
 * no limit.
 */
int64_t dirtylimit_controller_run_budget(const DirtyLimitController *c);

/*
 * dirtylimit_controller_feedback:
 * @c: the controller
 * @measured_bytes: bytes the vCPU dirtied in the period, as measured
 *                  independently of charge() (the dirty-rate statistics)
 * @period_ns: the length of the period, > 0
 *
 * Called by the controller thread once per period (1..1000 ms).  Updates
 * the reported current rate and, when a limit is set, the trim.  The
 * measured bytes and the bytes charged in the period are added to the
 * evidence; their ratio is the trim that makes the measured rate equal
 * to the quota (while the vCPU is penalised it charges quota x trim, so
 * this is moving the trim by quota / measured rate).  When the trim is
 * further from it than the dead band plus one harvest batch can explain,
 * it moves halfway there in log space, within DIRTYLIMIT_TRIM_MIN..MAX.
 * The ratio does not depend on how busy the vCPU is, and a vCPU that
 * dirties nothing adds no evidence, so the trim cannot wind up.
 */
void dirtylimit_controller_feedback(DirtyLimitController *c,
                                    uint64_t measured_bytes,
                                    int64_t period_ns);

/* The current trim (1.0 when measurement and charges agree). */
double dirtylimit_controller_trim(const DirtyLimitController *c);

/* The measured dirty rate in bytes/s (0 before the first feedback). */
uint64_t dirtylimit_controller_current_rate(const DirtyLimitController *c);

/*
 * Total sleep prescribed so far, in ns; time prescribed again after an
 * early wake-up is counted once.
 */
int64_t dirtylimit_controller_throttle_ns_total(const DirtyLimitController *c);

/* Number of charges that prescribed a sleep. */
uint64_t dirtylimit_controller_penalties(const DirtyLimitController *c);

/* The most recent non-zero sleep prescribed, in ns (0 if none yet). */
int64_t dirtylimit_controller_last_sleep_ns(const DirtyLimitController *c);

/**
 * dirtylimit_share: the part of @pages, dirtied by all vCPUs together
 * while they used @total_ns of CPU time, that falls to a vCPU that used
 * @used_ns of it (KVM's dirty log does not say who dirtied a page).
 * @remainder carries the vCPU's fraction of a page, in page x ns, to its
 * next share, so that rounding loses no page over time.  Returns 0 if
 * @total_ns is not positive.
 */
uint64_t dirtylimit_share(uint64_t pages, int64_t used_ns, int64_t total_ns,
                          int64_t *remainder);

#endif /* SYSEMU_DIRTYLIMIT_CONTROLLER_H */
