/*
 * Ferry dirty limit: how much dirtying a migration can absorb
 *
 * The pure part of the dirty limit's migration integration (SPEC
 * section 1, "beyond upstream").  Upstream engages the limit only after
 * two bitmap syncs showed no progress, at a fixed vcpu-dirty-limit; a
 * busy guest then spends two or three whole passes at full speed before
 * anything slows it.  Ferry measures the guest's dirty rate during the
 * first pass and, if the migration cannot finish soon at that rate,
 * limits the vCPUs at once to what the link and the downtime limit
 * allow.  These functions say what that is; they have no state, no
 * clocks and no QEMU dependencies, so a unit test can drive them.
 *
 * The rule.  Let B be the link rate, d the downtime limit and T = R / B
 * the time the current pass still needs for its R remaining bytes.  If
 * the guest dirties at a total rate q while the pass is sent, the next
 * pass carries q T, and every later pass shrinks by q / B, so the whole
 * migration takes T / (1 - q / B).  Allowing q = B / 4 bounds that by
 * 4/3 T: one pass and a third, within the aim of 1.5 passes even when
 * the limit engages a few hundred milliseconds into the first pass.  If
 * q T fits within B d, the rest is sent in the downtime: allow that much
 * when it is more, but never more than B / 2, so that what the guest
 * dirtied at full speed before the limit engaged (which the plan cannot
 * see) still shrinks by half every pass.  So the allowed rate is
 *
 *     A = B * min(1/2, max(1/4, d / T))
 *
 * A vCPU may dirty at its own pace if the sum still fits: the quota is
 * the "water level" L at which sum(min(r_i, L)) = A over the vCPUs'
 * measured rates r_i, so vCPUs that dirty little are not slowed and the
 * busy ones share what is left equally.  No level exists when sum(r_i)
 * fits within A: then the guest converges on its own and is not limited.
 *
 * Units: bytes, bytes per second, nanoseconds.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SYSEMU_DIRTYLIMIT_PLAN_H
#define SYSEMU_DIRTYLIMIT_PLAN_H

/* The share of the link rate a migration always allows to be dirtied... */
#define DIRTYLIMIT_PLAN_LINK_SHARE_DIV  4
/* ... and the most it allows when the downtime limit is generous. */
#define DIRTYLIMIT_PLAN_DOWNTIME_SHARE_DIV  2

/**
 * dirtylimit_plan_allowed_rate: the total dirty rate (bytes/s) that a
 * migration sending at @link_rate bytes/s, with @remaining bytes left in
 * its current pass and a downtime limit of @downtime_ns, can absorb and
 * still finish within 1.5 passes.  0 when @link_rate is 0 (nothing
 * measured yet: nothing can be said); UINT64_MAX when nothing remains.
 */
uint64_t dirtylimit_plan_allowed_rate(uint64_t link_rate, uint64_t remaining,
                                      uint64_t downtime_ns);

/**
 * dirtylimit_plan_level: the per-vCPU quota (bytes/s) at which vCPUs
 * dirtying at @rates (bytes/s each, @n of them; sorted in place) dirty
 * @allowed bytes/s in all; 0 if they already dirty no more than that,
 * so that no limit is needed.  Never below 1 byte/s when a limit is
 * needed.
 */
uint64_t dirtylimit_plan_level(uint64_t allowed, uint64_t *rates, unsigned n);

#endif
