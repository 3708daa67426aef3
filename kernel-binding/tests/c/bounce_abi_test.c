/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The C ABI tests: every strategy through bounce.h, on the simulated guest of guest.c.
 *
 * For each strategy: map/unmap/sync round trips over many sizes, page offsets and all
 * three directions with the data checked both ways through a device that can only
 * touch shared pages; partial and oversize syncs; DMA_ATTR_SKIP_CPU_SYNC;
 * min_align_mask and alloc_align_mask; scatter-gather (with rollback); every bad
 * argument with its documented errno and no state change; exhaustion; scrubbing;
 * timing; teardown refused while mappings are live; and two mapping threads plus a
 * refill thread running concurrently. The statistics are checked against what the test
 * did after every group. Then bounce_create's own failures.
 *
 * Prints "c-abi: N passed, M failed" last and exits non-zero on any failure or
 * guest violation. Built by .ci/c-tests.sh against the std-flavour staticlib (and the
 * kernel flavour, with -DBOUNCE_KERNEL_FLAVOUR providing the bounce_host_* hooks).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bounce.h"
#include "guest.h"

#define ARENA_BYTES (64u << 20)
#define KIB 1024u

static atomic_ulong passed, failed;
static const char *cur = "setup";

#define CHECK(cond, ...)                                                                      \
	do {                                                                                  \
		if (cond) {                                                                   \
			atomic_fetch_add(&passed, 1);                                          \
		} else {                                                                      \
			atomic_fetch_add(&failed, 1);                                          \
			fprintf(stderr, "FAIL %s:%d [%s] %s: ", __FILE__, __LINE__, cur, #cond); \
			fprintf(stderr, __VA_ARGS__);                                          \
			fputc('\n', stderr);                                                   \
		}                                                                             \
	} while (0)

/* ------------------------------------------------------------ kernel flavour hooks */

#ifdef BOUNCE_KERNEL_FLAVOUR
static atomic_long host_live_allocs;
static atomic_ulong host_alloc_calls, host_allocs_irqs_off, host_allocs_irqs_off_audit;
static _Thread_local bool in_audit;

void *bounce_host_alloc(size_t size, size_t align)
{
	size_t rounded = (size + align - 1) / align * align;
	void *p = aligned_alloc(align < sizeof(void *) ? sizeof(void *) : align, rounded ? rounded : align);
	if (p) {
		atomic_fetch_add(&host_live_allocs, 1);
		atomic_fetch_add(&host_alloc_calls, 1);
	}
	/* GFP_KERNEL with interrupts off: "sleeping function called from invalid context".
	 * Counted apart when it happens inside bounce_audit (process context, but under a
	 * strategy lock), so a map-path allocation can never hide behind an audit one. */
	if (g_irqs_off) {
		atomic_ulong *c = in_audit ? &host_allocs_irqs_off_audit : &host_allocs_irqs_off;
		if (atomic_fetch_add(c, 1) == 0)
			fprintf(stderr, "VIOLATION: bounce_host_alloc(%zu, %zu) with interrupts disabled%s\n", size,
				align, in_audit ? " (inside bounce_audit)" : "");
	}
	return p;
}

void bounce_host_free(void *ptr, size_t size, size_t align)
{
	(void)size;
	(void)align;
	if (ptr)
		atomic_fetch_sub(&host_live_allocs, 1);
	free(ptr);
}

void bounce_host_panic(const char *msg, size_t len)
{
	fprintf(stderr, "bounce_host_panic: %.*s\n", (int)len, msg);
	abort();
}
#endif

/* ------------------------------------------------------------ helpers */

static uint32_t xorshift(uint32_t *s)
{
	uint32_t x = *s;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
	uint32_t s = seed * 2654435761u + 0x9e3779b9u;
	if (!s)
		s = 1;
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(xorshift(&s) >> 11);
}

static bool has_pattern(const uint8_t *p, size_t n, uint32_t seed)
{
	uint32_t s = seed * 2654435761u + 0x9e3779b9u;
	if (!s)
		s = 1;
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(xorshift(&s) >> 11))
			return false;
	return true;
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return false;
	return true;
}

struct env {
	struct guest g;
	struct bounce *b;
	const char *strategy;
	struct bounce_device net, nvme, dev32;
	/* failures the test provoked, by BOUNCE_FAILURE_* */
	atomic_ulong exp_fail[BOUNCE_FAILURE_COUNT];
	/* successful maps the test made (scatter-gather entries count one each) */
	atomic_ulong exp_maps;
	char err[512];
};

static const char *last_err(struct env *e)
{
	static _Thread_local char buf[512];
	bounce_last_error(e->b, buf, sizeof(buf));
	return buf;
}

static void note(struct env *e, size_t reason)
{
	atomic_fetch_add(&e->exp_fail[reason], 1);
}

static void note_rc(struct env *e, int rc)
{
	if (rc == -ENOSPC)
		note(e, BOUNCE_FAILURE_EXHAUSTED);
	else if (rc == -EDQUOT)
		note(e, BOUNCE_FAILURE_CAP);
}

static void drain(struct env *e)
{
	int rc, n = 0;

	while ((rc = bounce_run_background(e->b, NULL)) == 1 && ++n < 100000)
		;
	CHECK(rc == 0, "background work still pending after %d steps (rc %d)", n, rc);
}

static struct bounce_stats stats(struct env *e)
{
	struct bounce_stats s;
	int rc = bounce_stats(e->b, &s);
	CHECK(rc == 0, "bounce_stats -> %d", rc);
	return s;
}

/* Statistics agree with what the test did; `live` bytes are mapped now. */
static void check_stats(struct env *e, uint64_t live, const char *where)
{
	struct bounce_stats s = stats(e);
	struct bounce_audit a;
#ifdef BOUNCE_KERNEL_FLAVOUR
	in_audit = true;
#endif
	g_context = "bounce_audit";
	int rc = bounce_audit(e->b, &a);
	g_context = NULL;
#ifdef BOUNCE_KERNEL_FLAVOUR
	in_audit = false;
#endif

	CHECK(rc == 0, "%s: audit -> %d: %s", where, rc, last_err(e));
	CHECK(s.inflight_bytes == live, "%s: inflight %llu, want %llu", where, (unsigned long long)s.inflight_bytes,
	      (unsigned long long)live);
	CHECK(s.maps == atomic_load(&e->exp_maps), "%s: maps %llu, want %lu", where, (unsigned long long)s.maps,
	      atomic_load(&e->exp_maps));
	CHECK(s.maps - s.unmaps == a.live_mappings, "%s: maps-unmaps %llu, audit live %llu", where,
	      (unsigned long long)(s.maps - s.unmaps), (unsigned long long)a.live_mappings);
	CHECK((live == 0) == (s.used_bytes == 0), "%s: used_bytes %llu with %llu live", where,
	      (unsigned long long)s.used_bytes, (unsigned long long)live);
	CHECK(s.io_tlb_used <= s.io_tlb_used_hiwater, "%s: used %llu > hiwater %llu", where,
	      (unsigned long long)s.io_tlb_used, (unsigned long long)s.io_tlb_used_hiwater);
	CHECK(s.io_tlb_nslabs * 2048 <= s.capacity_bytes && s.capacity_bytes > 0, "%s: nslabs %llu, capacity %llu",
	      where, (unsigned long long)s.io_tlb_nslabs, (unsigned long long)s.capacity_bytes);
	for (size_t i = 0; i < BOUNCE_FAILURE_COUNT; i++)
		CHECK(s.failures[i] == atomic_load(&e->exp_fail[i]), "%s: failures[%zu] = %llu, want %lu", where, i,
		      (unsigned long long)s.failures[i], atomic_load(&e->exp_fail[i]));
	CHECK(s.shared_bytes == (uint64_t)atomic_load(&e->g.pages_shared_now) * G_PAGE,
	      "%s: shared_bytes %llu, guest has %lu shared pages", where, (unsigned long long)s.shared_bytes,
	      atomic_load(&e->g.pages_shared_now));
	CHECK(atomic_load(&e->g.violations) == 0, "%s: guest violations (last: %s)", where, e->g.last_violation);
	CHECK(g_irqs_off == 0, "%s: interrupts left disabled", where);
	CHECK(atomic_load(&g_irq_order_violations) == 0, "%s: IRQ-safe locks released out of order", where);
}

/* bounce_map_single; on -ENOSPC (strategies that refill in the background) run the
 * refill engine as kccd would, and retry once. */
static int map_retry(struct env *e, const struct bounce_device *d, uint64_t phys, size_t size, uint64_t align,
		     unsigned dir, uint64_t attrs, uint64_t *dma)
{
	int rc = bounce_map_single(e->b, d, phys, size, align, dir, attrs, dma);
	if (rc == -ENOSPC || rc == -EDQUOT) {
		note_rc(e, rc);
		drain(e);
		rc = bounce_map_single(e->b, d, phys, size, align, dir, attrs, dma);
	}
	if (rc == 0)
		atomic_fetch_add(&e->exp_maps, 1);
	else
		note_rc(e, rc);
	return rc;
}

/*
 * The sleep hook, called only for maps passed BOUNCE_DMA_ATTR_MAY_BLOCK that found no
 * free buffer. While `sleeper.e` is set it stands for another CPU that unmaps the
 * `sleeper.n` mappings at `sleeper.dmas` (and zeroes them) while the mapper sleeps.
 */
static struct sleeper {
	struct env *e;
	uint64_t *dmas;
	int n;
	size_t size;
	int calls;
} sleeper;

static void test_sleep(void *ctx, uint64_t ns)
{
	(void)ctx;
	(void)ns;
	sleeper.calls++;
	if (!sleeper.e)
		return;
	for (int i = 0; i < sleeper.n; i++) {
		int rc = bounce_unmap_single(sleeper.e->b, &sleeper.e->net, sleeper.dmas[i], sleeper.size,
					     BOUNCE_DMA_TO_DEVICE, 0);
		CHECK(rc == 0, "unmap from the sleep hook -> %d", rc);
		sleeper.dmas[i] = 0;
	}
	sleeper.n = 0;
}

static int create(struct env *e, const char *cmdline, uint32_t flags)
{
	struct bounce_hooks h = guest_hooks(&e->g);
	h.sleep = test_sleep;
	return bounce_create(cmdline, &h, flags, &e->b, e->err, sizeof(e->err));
}

static int env_init(struct env *e, const char *strategy, const char *cmdline, uint32_t flags)
{
	memset(e, 0, sizeof(*e));
	e->strategy = strategy;
	e->net = (struct bounce_device){ .name = "virtio-net", .dma_mask = UINT64_MAX, .max_segment_size = 65536 };
	e->nvme = (struct bounce_device){
		.name = "nvme0", .dma_mask = UINT64_MAX, .min_align_mask = 4095, .max_segment_size = 1u << 20
	};
	e->dev32 = (struct bounce_device){ .name = "legacy32", .dma_mask = 0xffffffffull, .max_segment_size = 65536 };
	if (guest_init(&e->g, ARENA_BYTES))
		return -ENOMEM;
	g_cpu = 0;
	guest_irq_reset();
	int rc = create(e, cmdline, flags);
	CHECK(rc == 0, "bounce_create(\"%s\") -> %d: %s", cmdline, rc, e->err);
	if (rc)
		return rc;
	const char *name = bounce_strategy_name(e->b);
	CHECK(name && strcmp(name, strategy) == 0, "strategy name %s, want %s", name ? name : "(null)", strategy);
	CHECK(e->err[0] == '\0', "error buffer not cleared on success: %s", e->err);
	drain(e);
	return 0;
}

/* Destroys the instance and checks the guest got every page back. */
static void env_fini(struct env *e)
{
	if (e->b) {
		g_context = "bounce_destroy";
		int rc = bounce_destroy(e->b);
		g_context = NULL;
		CHECK(rc == 0, "bounce_destroy -> %d", rc);
		e->b = NULL;
		size_t shared = guest_count_state(&e->g, PG_SHARED), priv = guest_count_state(&e->g, PG_PRIVATE);
		size_t unknown = guest_count_state(&e->g, PG_UNKNOWN);
		CHECK(shared == 0 && priv == 0, "after destroy: %zu shared, %zu private pages not returned", shared, priv);
		CHECK(unknown == 0, "after destroy: %zu quarantined pages", unknown);
	}
	CHECK(atomic_load(&e->g.violations) == 0, "guest violations (last: %s)", e->g.last_violation);
	guest_fini(&e->g);
}

/* ------------------------------------------------------------ round trips */

/*
 * Maps `size` bytes at page offset `off` for `d` in direction `dir` and checks every
 * copy rule: map copies in (any direction), sync_for_cpu copies out for FROM/BIDI,
 * sync_for_device copies in for TO/BIDI, unmap copies out for FROM/BIDI; bytes around
 * the buffer are never touched.
 */
static void roundtrip(struct env *e, const struct bounce_device *d, size_t size, size_t off, unsigned dir,
		      uint32_t seed)
{
	size_t span = off + size, alloc = (span + G_PAGE - 1) / G_PAGE * G_PAGE;
	uint64_t base = guest_alloc_private(&e->g, alloc);
	CHECK(base != 0, "no private memory for %zu bytes", alloc);
	if (!base)
		return;
	uint8_t *region = guest_ptr(&e->g, base, alloc);
	uint64_t orig = base + off;
	uint8_t *p = region + off;
	uint8_t *tmp = malloc(size);
	uint64_t dma = 0;
	bool to_dev = dir != BOUNCE_DMA_FROM_DEVICE, from_dev = dir != BOUNCE_DMA_TO_DEVICE;

	memset(region, 0x77, alloc);
	fill_pattern(p, size, seed);
	int rc = map_retry(e, d, orig, size, 0, dir, 0, &dma);
	CHECK(rc == 0, "map %zu@%zu dir %u -> %d: %s", size, off, dir, rc, last_err(e));
	if (rc)
		goto out;
	CHECK(dma != UINT64_MAX && (dma & G_SHARED_BIT), "dma %#llx", (unsigned long long)dma);
	CHECK((dma & d->min_align_mask) == (orig & d->min_align_mask), "min_align_mask bits lost: dma %#llx orig %#llx",
	      (unsigned long long)dma, (unsigned long long)orig);
	CHECK(bounce_is_bounce_buffer(e->b, dma) == 1, "mapped address not recognised");
	CHECK(bounce_is_bounce_buffer(e->b, dma + size - 1) == 1, "mapping end not recognised");

	/* map copies original -> bounce whatever the direction (CVE-2022-0854) */
	CHECK(device_read(&e->g, d, dma, tmp, size) == 0 && has_pattern(tmp, size, seed), "map did not copy in (%zu dir %u)",
	      size, dir);
	fill_pattern(tmp, size, seed + 1);
	CHECK(device_write(&e->g, d, dma, tmp, size) == 0, "device write");
	rc = bounce_sync_single_for_cpu(e->b, d, dma, size, dir);
	CHECK(rc == 0, "sync_for_cpu -> %d", rc);
	CHECK(has_pattern(p, size, from_dev ? seed + 1 : seed), "sync_for_cpu copy rule broken (%zu dir %u)", size, dir);

	fill_pattern(p, size, seed + 2);
	rc = bounce_sync_single_for_device(e->b, d, dma, size, dir);
	CHECK(rc == 0, "sync_for_device -> %d", rc);
	CHECK(device_read(&e->g, d, dma, tmp, size) == 0 && has_pattern(tmp, size, to_dev ? seed + 2 : seed + 1),
	      "sync_for_device copy rule broken (%zu dir %u)", size, dir);

	fill_pattern(tmp, size, seed + 3);
	CHECK(device_write(&e->g, d, dma, tmp, size) == 0, "device write");
	rc = bounce_unmap_single(e->b, d, dma, size, dir, 0);
	CHECK(rc == 0, "unmap -> %d: %s", rc, last_err(e));
	CHECK(has_pattern(p, size, from_dev ? seed + 3 : seed + 2), "unmap copy rule broken (%zu dir %u)", size, dir);
	CHECK(all_bytes(region, off, 0x77) && all_bytes(region + span, alloc - span, 0x77),
	      "bytes around the buffer changed (%zu@%zu)", size, off);
out:
	free(tmp);
	guest_free_private(&e->g, base, alloc);
}

static void test_roundtrips(struct env *e)
{
	static const size_t sizes[] = { 1,     7,     64,    511,   512,   513,   2047,  2048,   2049,  4095,
					4096,  4097,  8191,  12288, 16384, 65536, 99999, 131072, 200000 };
	static const size_t offsets[] = { 0, 1, 100, 2051, 4095 };
	intptr_t max = bounce_max_mapping_size(e->b, &e->net);
	uint32_t seed = 1;

	CHECK(max >= 128 * (intptr_t)KIB, "max_mapping_size %zd", (ssize_t)max);
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
		for (size_t o = 0; o < sizeof(offsets) / sizeof(offsets[0]); o++)
			for (unsigned dir = 0; dir < 3; dir++)
				if ((intptr_t)sizes[s] <= max)
					roundtrip(e, &e->net, sizes[s], offsets[o], dir, seed += 7);
	/* the largest mapping, and NVMe-style min_align_mask at odd offsets */
	roundtrip(e, &e->net, (size_t)max, 0, BOUNCE_DMA_BIDIRECTIONAL, seed += 7);
	intptr_t nvme_max = bounce_max_mapping_size(e->b, &e->nvme);
	CHECK(nvme_max > 0 && nvme_max <= max, "nvme max %zd", (ssize_t)nvme_max);
	for (size_t o = 0; o < 4096; o += 1365)
		for (unsigned dir = 0; dir < 3; dir++) {
			roundtrip(e, &e->nvme, 4096 + o, o, dir, seed += 7);
			roundtrip(e, &e->nvme, 32 * KIB, o, dir, seed += 7);
		}
	drain(e);
	check_stats(e, 0, "round trips");
}

/* ------------------------------------------------------------ partial syncs, attrs, alignment */

static void test_partial_and_attrs(struct env *e)
{
	const size_t size = 16 * KIB;
	uint64_t orig = guest_alloc_private(&e->g, size), dma;
	uint8_t *p = guest_ptr(&e->g, orig, size), *tmp = malloc(size);
	struct bounce_stats before, after;

	/* partial sync_for_cpu: only [4096, 8192) comes back */
	fill_pattern(p, size, 100);
	CHECK(map_retry(e, &e->net, orig, size, 0, BOUNCE_DMA_BIDIRECTIONAL, 0, &dma) == 0, "map: %s", last_err(e));
	fill_pattern(tmp, 4096, 101);
	CHECK(device_write(&e->g, &e->net, dma + 4096, tmp, 4096) == 0, "device write");
	CHECK(bounce_sync_single_for_cpu(e->b, &e->net, dma + 4096, 4096, BOUNCE_DMA_FROM_DEVICE) == 0, "partial sync");
	CHECK(has_pattern(p + 4096, 4096, 101), "partial sync did not copy its range");
	uint8_t *want = malloc(size);
	fill_pattern(want, size, 100);
	CHECK(memcmp(p, want, 4096) == 0 && memcmp(p + 8192, want + 8192, size - 8192) == 0,
	      "partial sync copied outside its range");

	/* a sync running past the mapping is clamped and counted */
	before = stats(e);
	CHECK(bounce_sync_single_for_cpu(e->b, &e->net, dma + size - 100, 4096, BOUNCE_DMA_FROM_DEVICE) == 0,
	      "oversize sync");
	after = stats(e);
	CHECK(after.overflows_clamped == before.overflows_clamped + 1, "clamp not counted");
	CHECK(after.bytes_from_bounce == before.bytes_from_bounce + 100, "clamped sync copied %llu bytes",
	      (unsigned long long)(after.bytes_from_bounce - before.bytes_from_bounce));

	/* DMA_ATTR_SKIP_CPU_SYNC: unmap does not copy back */
	fill_pattern(tmp, size, 102);
	CHECK(device_write(&e->g, &e->net, dma, tmp, size) == 0, "device write");
	memcpy(want, p, size);
	CHECK(bounce_unmap_single(e->b, &e->net, dma, size, BOUNCE_DMA_FROM_DEVICE, BOUNCE_DMA_ATTR_SKIP_CPU_SYNC) == 0,
	      "unmap skip");
	CHECK(memcmp(p, want, size) == 0, "SKIP_CPU_SYNC unmap copied back");

	/* alloc_align_mask: the bounce buffer starts on that boundary */
	for (uint64_t mask = 0xfff; mask <= 0x7fff; mask = mask * 2 + 1) {
		int rc = map_retry(e, &e->net, orig, 8192, mask, BOUNCE_DMA_TO_DEVICE, 0, &dma);
		CHECK(rc == 0 || rc == -EINVAL, "align %#llx -> %d", (unsigned long long)mask, rc);
		if (rc == -EINVAL) {
			note(e, BOUNCE_FAILURE_ALIGNMENT);
			continue;
		}
		if (rc)
			continue;
		CHECK((dma & mask) == 0, "dma %#llx not aligned to %#llx", (unsigned long long)dma,
		      (unsigned long long)mask);
		CHECK(device_read(&e->g, &e->net, dma, tmp, 8192) == 0 && memcmp(tmp, p, 8192) == 0, "aligned map data");
		CHECK(bounce_unmap_single(e->b, &e->net, dma, 8192, BOUNCE_DMA_TO_DEVICE, 0) == 0, "unmap aligned");
	}

	/* DMA_ATTR_NO_WARN and unknown attribute bits are accepted */
	CHECK(map_retry(e, &e->net, orig, 100, 0, BOUNCE_DMA_TO_DEVICE, BOUNCE_DMA_ATTR_NO_WARN | (1u << 1), &dma) == 0,
	      "attrs");
	CHECK(bounce_unmap_single(e->b, &e->net, dma, 100, BOUNCE_DMA_TO_DEVICE, 1u << 1) == 0, "unmap attrs");

	free(want);
	free(tmp);
	guest_free_private(&e->g, orig, size);
	drain(e);
	check_stats(e, 0, "partial syncs and attributes");
}

/* ------------------------------------------------------------ scatter-gather */

static void test_sg(struct env *e)
{
	enum { N = 8 };
	static const size_t lens[N] = { 512, 4096, 100, 65536, 3000, 2048, 16384, 1 };
	struct bounce_sg sg[N];
	uint64_t bufs[N];
	intptr_t max = bounce_max_mapping_size(e->b, &e->net);

	for (int i = 0; i < N; i++) {
		bufs[i] = guest_alloc_private(&e->g, lens[i] + 17);
		sg[i] = (struct bounce_sg){ .phys = bufs[i] + (uint64_t)(i * 5), .length = lens[i] };
		fill_pattern(guest_ptr(&e->g, sg[i].phys, lens[i]), lens[i], 200 + i);
	}
	int rc = bounce_map_sg(e->b, &e->net, sg, N, BOUNCE_DMA_BIDIRECTIONAL, 0);
	if (rc == -ENOSPC) {
		note(e, BOUNCE_FAILURE_EXHAUSTED);
		drain(e);
		rc = bounce_map_sg(e->b, &e->net, sg, N, BOUNCE_DMA_BIDIRECTIONAL, 0);
	}
	CHECK(rc == N, "map_sg -> %d: %s", rc, last_err(e));
	if (rc == N) {
		atomic_fetch_add(&e->exp_maps, N);
		uint64_t live = 0;
		for (int i = 0; i < N; i++) {
			uint8_t *tmp = malloc(lens[i]);
			live += lens[i];
			CHECK(sg[i].dma_length == lens[i], "entry %d dma_length %zu", i, sg[i].dma_length);
			CHECK(device_read(&e->g, &e->net, sg[i].dma_address, tmp, lens[i]) == 0 &&
				      has_pattern(tmp, lens[i], 200 + i),
			      "sg entry %d not copied in", i);
			fill_pattern(tmp, lens[i], 300 + i);
			CHECK(device_write(&e->g, &e->net, sg[i].dma_address, tmp, lens[i]) == 0, "device write");
			free(tmp);
		}
		check_stats(e, live, "sg mapped");
		CHECK(bounce_sync_sg_for_cpu(e->b, &e->net, sg, N, BOUNCE_DMA_BIDIRECTIONAL) == 0, "sync_sg_for_cpu");
		for (int i = 0; i < N; i++) {
			CHECK(has_pattern(guest_ptr(&e->g, sg[i].phys, lens[i]), lens[i], 300 + i), "sg %d sync", i);
			fill_pattern(guest_ptr(&e->g, sg[i].phys, lens[i]), lens[i], 400 + i);
		}
		CHECK(bounce_sync_sg_for_device(e->b, &e->net, sg, N, BOUNCE_DMA_TO_DEVICE) == 0, "sync_sg_for_device");
		for (int i = 0; i < N; i++) {
			uint8_t *tmp = malloc(lens[i]);
			CHECK(device_read(&e->g, &e->net, sg[i].dma_address, tmp, lens[i]) == 0 &&
				      has_pattern(tmp, lens[i], 400 + i),
			      "sg entry %d sync_for_device", i);
			fill_pattern(tmp, lens[i], 500 + i);
			CHECK(device_write(&e->g, &e->net, sg[i].dma_address, tmp, lens[i]) == 0, "device write");
			free(tmp);
		}
		CHECK(bounce_unmap_sg(e->b, &e->net, sg, N, BOUNCE_DMA_FROM_DEVICE, 0) == 0, "unmap_sg: %s", last_err(e));
		for (int i = 0; i < N; i++)
			CHECK(has_pattern(guest_ptr(&e->g, sg[i].phys, lens[i]), lens[i], 500 + i), "sg %d unmap", i);
		/* unmapping the list again: every entry is a double unmap */
		rc = bounce_unmap_sg(e->b, &e->net, sg, N, BOUNCE_DMA_FROM_DEVICE, 0);
		CHECK(rc == -ENOENT, "double unmap_sg -> %d", rc);
		for (int i = 0; i < N; i++)
			note(e, BOUNCE_FAILURE_UNKNOWN_ADDRESS);
	}

	/* all or nothing: entry 5 is too large; entries 0-4 are rolled back */
	struct bounce_stats before = stats(e);
	sg[5].length = (size_t)max + 1;
	uint64_t big = guest_alloc_private(&e->g, (size_t)max + 1);
	sg[5].phys = big;
	rc = bounce_map_sg(e->b, &e->net, sg, N, BOUNCE_DMA_TO_DEVICE, 0);
	CHECK(rc == -E2BIG, "map_sg with an oversize entry -> %d", rc);
	CHECK(strstr(last_err(e), "entry 5") != NULL, "message does not name the entry: %s", last_err(e));
	note(e, BOUNCE_FAILURE_TOO_LARGE);
	atomic_fetch_add(&e->exp_maps, 5);
	struct bounce_stats after = stats(e);
	CHECK(after.maps == before.maps + 5 && after.unmaps == before.unmaps + 5, "rollback: maps +%llu unmaps +%llu",
	      (unsigned long long)(after.maps - before.maps), (unsigned long long)(after.unmaps - before.unmaps));
	for (int i = 0; i < N; i++)
		CHECK(sg[i].dma_length == 0, "entry %d still has dma_length %zu after rollback", i, sg[i].dma_length);
	check_stats(e, 0, "sg rollback");

	/* bad lists */
	CHECK(bounce_map_sg(e->b, &e->net, NULL, 4, 0, 0) == -EINVAL, "NULL sg");
	CHECK(bounce_map_sg(e->b, &e->net, sg, 0, 0, 0) == -EINVAL, "0 entries");
	CHECK(bounce_unmap_sg(e->b, &e->net, NULL, 1, 0, 0) == -EINVAL, "unmap NULL sg");
	CHECK(bounce_sync_sg_for_cpu(e->b, &e->net, sg, 0, 0) == -EINVAL, "sync 0 entries");
	CHECK(bounce_sync_sg_for_device(e->b, NULL, sg, 1, 0) == -EINVAL, "sync NULL dev");
	CHECK(bounce_map_sg(e->b, &e->net, sg, 2, 3, 0) == -EINVAL, "map_sg DMA_NONE");
	for (int i = 0; i < 6; i++)
		note(e, BOUNCE_FAILURE_BAD_ARGUMENT);
	check_stats(e, 0, "bad sg lists");

	guest_free_private(&e->g, big, (size_t)max + 1);
	for (int i = 0; i < N; i++)
		guest_free_private(&e->g, bufs[i], lens[i] + 17);
}

/* ------------------------------------------------------------ bad arguments */

static void test_bad_arguments(struct env *e)
{
	uint64_t orig = guest_alloc_private(&e->g, 8192), dma, live;
	intptr_t max = bounce_max_mapping_size(e->b, &e->net);
	struct bounce_device bad_mask = e->net;
	int rc;

	bad_mask.min_align_mask = 0x1000;
	fill_pattern(guest_ptr(&e->g, orig, 8192), 8192, 7);
	CHECK(map_retry(e, &e->net, orig, 8192, 0, BOUNCE_DMA_BIDIRECTIONAL, 0, &live) == 0, "map");
	struct bounce_stats before = stats(e);

	/* NULL instance: -EINVAL, nothing recorded anywhere */
	CHECK(bounce_map_single(NULL, &e->net, orig, 64, 0, 0, 0, &dma) == -EINVAL && dma == UINT64_MAX, "NULL inst");
	CHECK(bounce_unmap_single(NULL, &e->net, live, 64, 0, 0) == -EINVAL, "unmap NULL inst");
	CHECK(bounce_sync_single_for_cpu(NULL, &e->net, live, 64, 0) == -EINVAL, "sync NULL inst");
	CHECK(bounce_stats(NULL, &before) == -EINVAL, "stats NULL inst");
	CHECK(bounce_max_mapping_size(NULL, &e->net) == -EINVAL, "max NULL inst");
	CHECK(bounce_dma_supported(NULL, ~0ull) == -EINVAL, "dma_supported NULL");
	CHECK(bounce_is_bounce_buffer(NULL, live) == -EINVAL, "is_bounce NULL");
	CHECK(bounce_run_background(NULL, NULL) == -EINVAL, "background NULL");
	CHECK(bounce_background_pending(NULL) == -EINVAL, "pending NULL");
	CHECK(bounce_reset_hiwater(NULL) == -EINVAL, "hiwater NULL");
	CHECK(bounce_audit(NULL, NULL) == -EINVAL, "audit NULL");
	CHECK(bounce_destroy(NULL) == -EINVAL, "destroy NULL");
	CHECK(bounce_strategy_name(NULL) == NULL, "name NULL");
	char buf[8] = "xxxxxxx";
	CHECK(bounce_last_error(NULL, buf, sizeof(buf)) == 0 && buf[0] == '\0', "last_error NULL");

	/* bad arguments on a live instance: -EINVAL and a message */
#define BAD(call, errno_, reason, needle)                                                                    \
	do {                                                                                                 \
		rc = (call);                                                                                 \
		CHECK(rc == -(errno_), "%s -> %d, want %d", #call, rc, -(errno_));                           \
		const char *m_ = last_err(e);                                                                \
		CHECK(strstr(m_, needle) != NULL, "%s: message \"%s\" lacks \"%s\"", #call, m_, needle);      \
		note(e, reason);                                                                             \
	} while (0)
	BAD(bounce_map_single(e->b, NULL, orig, 64, 0, 0, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT, "device is NULL");
	BAD(bounce_map_single(e->b, &e->net, orig, 64, 0, 0, 0, NULL), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT, "dma_out");
	BAD(bounce_map_single(e->b, &e->net, orig, 64, 0, BOUNCE_DMA_NONE, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "DMA_NONE");
	CHECK(dma == UINT64_MAX, "failed map left dma %#llx", (unsigned long long)dma);
	BAD(bounce_map_single(e->b, &e->net, orig, 64, 0, 7, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "not a DMA direction");
	BAD(bounce_map_single(e->b, &e->net, orig, 0, 0, 0, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT, "zero");
	BAD(bounce_map_single(e->b, &e->net, UINT64_MAX - 10, 100, 0, 0, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "wraps");
	BAD(bounce_map_single(e->b, &e->net, orig, 64, 0x1001, 0, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "alloc_align_mask");
	BAD(bounce_map_single(e->b, &bad_mask, orig, 64, 0, 0, 0, &dma), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "min_align_mask");
	BAD(bounce_map_single(e->b, &e->net, orig, (size_t)max + 1, 0, 0, 0, &dma), E2BIG, BOUNCE_FAILURE_TOO_LARGE,
	    "maximum mapping size");
	BAD(bounce_map_single(e->b, &e->dev32, orig, 64, 0, 0, 0, &dma), ERANGE, BOUNCE_FAILURE_UNREACHABLE,
	    "dma_mask");
	BAD(bounce_max_mapping_size(e->b, NULL), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT, "device is NULL");
	BAD(bounce_stats(e->b, NULL), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT, "out is NULL");

	/* unmap and sync of addresses that are no live mapping */
	BAD(bounce_unmap_single(e->b, &e->net, orig | G_SHARED_BIT, 64, 0, 0), EFAULT, BOUNCE_FAILURE_UNKNOWN_ADDRESS,
	    "not a bounce buffer");
	BAD(bounce_unmap_single(e->b, &e->net, 0x42, 64, 0, 0), EFAULT, BOUNCE_FAILURE_UNKNOWN_ADDRESS,
	    "not a bounce buffer");
	BAD(bounce_unmap_single(e->b, &e->net, live + 2048, 64, 0, 0), EINVAL, BOUNCE_FAILURE_UNKNOWN_ADDRESS,
	    "inside the mapping");
	BAD(bounce_unmap_single(e->b, &e->net, live, 8192, BOUNCE_DMA_NONE, 0), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "DMA_NONE");
	BAD(bounce_unmap_single(e->b, NULL, live, 8192, 0, 0), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT, "device is NULL");
	BAD(bounce_sync_single_for_cpu(e->b, &e->net, 0x42, 64, 0), EFAULT, BOUNCE_FAILURE_UNKNOWN_ADDRESS,
	    "not a bounce buffer");
	BAD(bounce_sync_single_for_device(e->b, &e->net, live, 64, 9), EINVAL, BOUNCE_FAILURE_BAD_ARGUMENT,
	    "not a DMA direction");
	CHECK(bounce_dma_supported(e->b, ~0ull) == 1, "64-bit mask supported");
	CHECK(bounce_dma_supported(e->b, 0xffffffffull) == 0, "32-bit mask cannot reach shared (bit 47) addresses");
	CHECK(bounce_is_bounce_buffer(e->b, orig | G_SHARED_BIT) == 0, "private buffer taken for a bounce buffer");

	/* nothing above changed the live mapping or the pool */
	struct bounce_stats after = stats(e);
	CHECK(after.maps == before.maps && after.unmaps == before.unmaps && after.inflight_bytes == before.inflight_bytes &&
		      after.used_bytes == before.used_bytes && after.bytes_to_bounce == before.bytes_to_bounce &&
		      after.bytes_from_bounce == before.bytes_from_bounce,
	      "a failed call changed the state");
	check_stats(e, 8192, "bad arguments");

	/* the mapping still works, and a second unmap is a double unmap */
	CHECK(bounce_unmap_single(e->b, &e->net, live, 8192, BOUNCE_DMA_BIDIRECTIONAL, 0) == 0, "unmap after errors");
	BAD(bounce_unmap_single(e->b, &e->net, live, 8192, 0, 0), ENOENT, BOUNCE_FAILURE_UNKNOWN_ADDRESS, "not mapped");
	BAD(bounce_sync_single_for_cpu(e->b, &e->net, live, 64, 0), ENOENT, BOUNCE_FAILURE_UNKNOWN_ADDRESS, "not mapped");
#undef BAD

	/* truncated messages stay NUL-terminated; the return is the full length */
	char small[6];
	rc = bounce_map_single(e->b, &e->net, orig, 0, 0, 0, 0, &dma);
	note(e, BOUNCE_FAILURE_BAD_ARGUMENT);
	size_t full = bounce_last_error(e->b, small, sizeof(small));
	CHECK(full > 5 && strlen(small) == 5, "truncation: full %zu, got \"%s\"", full, small);
	check_stats(e, 0, "after bad arguments");
	guest_free_private(&e->g, orig, 8192);
}

/* ------------------------------------------------------------ exhaustion */

static void test_exhaustion(struct env *e)
{
	enum { MAXN = 8192 };
	const size_t size = 64 * KIB;
	uint64_t *dmas = calloc(MAXN + 1, sizeof(*dmas)), orig = guest_alloc_private(&e->g, size);
	int n = 0, rc = 0;

	fill_pattern(guest_ptr(&e->g, orig, size), size, 9);
	while (n < MAXN) {
		rc = bounce_map_single(e->b, &e->net, orig, size, 0, BOUNCE_DMA_TO_DEVICE, 0, &dmas[n]);
		if (rc)
			break;
		atomic_fetch_add(&e->exp_maps, 1);
		n++;
	}
	CHECK(rc == -ENOSPC || rc == -EDQUOT, "exhaustion -> %d after %d maps: %s", rc, n, last_err(e));
	CHECK(n > 0, "nothing could be mapped");
	note_rc(e, rc);
	CHECK(strlen(last_err(e)) > 0, "no message for exhaustion");
	struct bounce_stats full = stats(e);
	check_stats(e, (uint64_t)n * size, "exhausted");
	/* a full pool still serves nothing else and changes nothing on failure */
	rc = bounce_map_single(e->b, &e->net, orig, size, 0, BOUNCE_DMA_TO_DEVICE, 0, &dmas[n]);
	CHECK(rc == -ENOSPC || rc == -EDQUOT, "second exhaustion -> %d", rc);
	note_rc(e, rc);
	struct bounce_stats still = stats(e);
	CHECK(still.used_bytes == full.used_bytes, "failed map changed used bytes");
	CHECK(still.blocked_maps == 0 && sleeper.calls == 0, "an atomic map slept");
	/* BOUNCE_DMA_ATTR_MAY_BLOCK: the map sleeps instead of failing; another CPU (the
	 * sleep hook) unmaps meanwhile, and the next try is served */
	sleeper = (struct sleeper){ .e = e, .dmas = dmas, .n = n / 2, .size = size };
	rc = bounce_map_single(e->b, &e->net, orig, size, 0, BOUNCE_DMA_TO_DEVICE, BOUNCE_DMA_ATTR_MAY_BLOCK,
			       &dmas[n]);
	CHECK(rc == 0, "MAY_BLOCK map on a full pool -> %d: %s", rc, last_err(e));
	CHECK(sleeper.calls >= 1 && sleeper.n == 0, "the MAY_BLOCK map did not sleep (%d calls)", sleeper.calls);
	atomic_fetch_add(&e->exp_maps, 1);
	n++;
	struct bounce_stats waited = stats(e);
	CHECK(waited.blocked_maps == 1 && waited.blocked_ns > 0, "blocked maps %llu, %llu ns",
	      (unsigned long long)waited.blocked_maps, (unsigned long long)waited.blocked_ns);
	sleeper = (struct sleeper){ 0 };
	for (int i = 0; i < n; i++) {
		if (!dmas[i])
			continue; /* unmapped by the sleep hook */
		rc = bounce_unmap_single(e->b, &e->net, dmas[i], size, BOUNCE_DMA_TO_DEVICE, 0);
		CHECK(rc == 0, "unmap %d -> %d", i, rc);
	}
	struct bounce_stats s = stats(e);
	CHECK(s.io_tlb_used_hiwater >= (uint64_t)(n - 1) * (size / 2048), "hiwater %llu after %d x 64 KiB",
	      (unsigned long long)s.io_tlb_used_hiwater, n);
	CHECK(bounce_reset_hiwater(e->b) == 0, "reset hiwater");
	s = stats(e);
	CHECK(s.io_tlb_used_hiwater == s.io_tlb_used && s.inflight_bytes_peak == 0, "reset: hiwater %llu used %llu peak %llu",
	      (unsigned long long)s.io_tlb_used_hiwater, (unsigned long long)s.io_tlb_used,
	      (unsigned long long)s.inflight_bytes_peak);
	drain(e);
	check_stats(e, 0, "after exhaustion");
	free(dmas);
	guest_free_private(&e->g, orig, size);
}

/* ------------------------------------------------------------ teardown */

static void test_destroy_busy(struct env *e)
{
	uint64_t orig = guest_alloc_private(&e->g, 4096), dma;

	CHECK(map_retry(e, &e->net, orig, 4096, 0, BOUNCE_DMA_TO_DEVICE, 0, &dma) == 0, "map");
	int rc = bounce_destroy(e->b);
	CHECK(rc == -EBUSY, "destroy with a live mapping -> %d", rc);
	CHECK(strstr(last_err(e), "still live") != NULL, "message: %s", last_err(e));
	/* still usable */
	check_stats(e, 4096, "destroy refused");
	CHECK(bounce_unmap_single(e->b, &e->net, dma, 4096, BOUNCE_DMA_TO_DEVICE, 0) == 0, "unmap after refused destroy");
	guest_free_private(&e->g, orig, 4096);
	check_stats(e, 0, "before destroy");
}

/* ------------------------------------------------------------ threads */

struct worker {
	struct env *e;
	unsigned cpu;
	int iterations;
	atomic_bool *stop;
	pthread_barrier_t *both;
};

static void *mapper(void *arg)
{
	struct worker *w = arg;
	struct env *e = w->e;
	const size_t room = 64 * KIB;
	uint64_t base = guest_alloc_private(&e->g, room);
	uint8_t *p = guest_ptr(&e->g, base, room), *tmp = malloc(room);
	uint32_t rnd = 0x1234567u * (w->cpu + 1);
	uint64_t dma;
	int rc;

	g_cpu = w->cpu;
	/* Each CPU keeps its own last error: both threads fail differently, wait for each
	 * other, then each must read its own message. */
	rc = bounce_map_single(e->b, &e->net, base, w->cpu == 1 ? 64 : 0, 0, w->cpu == 1 ? BOUNCE_DMA_NONE : 0, 0, &dma);
	note(e, BOUNCE_FAILURE_BAD_ARGUMENT);
	CHECK(rc == -EINVAL, "thread bad argument -> %d", rc);
	pthread_barrier_wait(w->both);
	const char *m = last_err(e);
	CHECK(strstr(m, w->cpu == 1 ? "DMA_NONE" : "zero") != NULL, "thread %u saw another CPU's error: %s", w->cpu, m);
	for (int i = 0; i < w->iterations; i++) {
		size_t size = 1 + xorshift(&rnd) % (32 * KIB), off = xorshift(&rnd) % (room - size);
		unsigned dir = xorshift(&rnd) % 3;
		uint32_t seed = xorshift(&rnd);

		fill_pattern(p + off, size, seed);
		int tries = 0;
		while ((rc = bounce_map_single(e->b, &e->net, base + off, size, 0, dir, 0, &dma)) == -ENOSPC ||
		       rc == -EDQUOT) {
			note_rc(e, rc);
			if (++tries > 10000)
				break;
			sched_yield();
		}
		CHECK(rc == 0, "thread %u map %zu -> %d", w->cpu, size, rc);
		if (rc)
			continue;
		atomic_fetch_add(&e->exp_maps, 1);
		CHECK(device_read(&e->g, &e->net, dma, tmp, size) == 0 && has_pattern(tmp, size, seed),
		      "thread %u: data not copied in", w->cpu);
		fill_pattern(tmp, size, seed + 1);
		CHECK(device_write(&e->g, &e->net, dma, tmp, size) == 0, "device write");
		rc = bounce_unmap_single(e->b, &e->net, dma, size, dir, 0);
		CHECK(rc == 0, "thread %u unmap -> %d", w->cpu, rc);
		CHECK(has_pattern(p + off, size, dir == BOUNCE_DMA_TO_DEVICE ? seed : seed + 1),
		      "thread %u: copy back (dir %u)", w->cpu, dir);
		CHECK(g_irqs_off == 0, "thread %u: interrupts left disabled", w->cpu);
	}
	free(tmp);
	guest_free_private(&e->g, base, room);
	return NULL;
}

static void *refiller(void *arg)
{
	struct worker *w = arg;
	struct bounce_background_report r;
	struct timespec nap = { 0, 200000 };

	g_cpu = w->cpu;
	while (!atomic_load(w->stop)) {
		int rc = bounce_run_background(w->e->b, &r);
		CHECK(rc == 0 || rc == 1, "run_background -> %d", rc);
		CHECK(rc == 1 || !r.more, "idle report says more");
		if (rc == 0)
			nanosleep(&nap, NULL);
	}
	return NULL;
}

static void test_threads(struct env *e, int iterations)
{
	atomic_bool stop = false;
	pthread_barrier_t both;
	struct worker w[3] = {
		{ e, 1, iterations, &stop, &both }, { e, 2, iterations, &stop, &both }, { e, 3, 0, &stop, &both }
	};
	pthread_t t[3];

	pthread_barrier_init(&both, NULL, 2);
	pthread_create(&t[2], NULL, refiller, &w[2]);
	pthread_create(&t[0], NULL, mapper, &w[0]);
	pthread_create(&t[1], NULL, mapper, &w[1]);
	pthread_join(t[0], NULL);
	pthread_join(t[1], NULL);
	atomic_store(&stop, true);
	pthread_join(t[2], NULL);
	pthread_barrier_destroy(&both);
	drain(e);
	check_stats(e, 0, "threads");
}

/* ------------------------------------------------------------ options */

static void test_scrub_and_timing(const char *strategy, const char *cmdline)
{
	struct env e;
	char line[256];
	uint8_t tmp[4096];

	cur = strategy;
	snprintf(line, sizeof(line), "%s swiotlb.scrub=on", cmdline);
	if (env_init(&e, strategy, line, BOUNCE_CREATE_TIMING) == 0) {
		uint64_t orig = guest_alloc_private(&e.g, 4096), dma;
		fill_pattern(guest_ptr(&e.g, orig, 4096), 4096, 77);
		CHECK(map_retry(&e, &e.net, orig, 4096, 0, BOUNCE_DMA_TO_DEVICE, 0, &dma) == 0, "map");
		CHECK(host_read(&e.g, dma, tmp, 4096) == 0 && has_pattern(tmp, 4096, 77), "mapped data");
		CHECK(bounce_unmap_single(e.b, &e.net, dma, 4096, BOUNCE_DMA_TO_DEVICE, 0) == 0, "unmap");
		/* the host may read the freed buffer: scrubbing left nothing of the data */
		CHECK(host_read(&e.g, dma, tmp, 4096) == 0 && all_bytes(tmp, 4096, 0), "buffer not scrubbed on unmap");
		struct bounce_stats s = stats(&e);
		CHECK(s.timed_ops == 2 && s.op_ns >= s.copy_ns && s.copy_ns > 0, "timing: ops %llu op_ns %llu copy_ns %llu",
		      (unsigned long long)s.timed_ops, (unsigned long long)s.op_ns, (unsigned long long)s.copy_ns);
		CHECK(atomic_load(&e.g.traces) == s.maps, "traces %lu != maps %llu", atomic_load(&e.g.traces),
		      (unsigned long long)s.maps);
		guest_free_private(&e.g, orig, 4096);
		check_stats(&e, 0, "scrub");
		env_fini(&e);
	}
}

/* ------------------------------------------------------------ create failures */

static uint32_t zero_cpus(void *ctx)
{
	(void)ctx;
	return 0;
}

static unsigned long other_irq_save(void)
{
	return 0;
}

static void other_irq_restore(unsigned long f)
{
	(void)f;
}

static void test_create_failures(void)
{
	struct guest g;
	struct bounce *b = (struct bounce *)1;
	char err[256];
	struct bounce_hooks h;
	int rc;

	cur = "bounce_create";
	CHECK(guest_init(&g, ARENA_BYTES) == 0, "guest");
	h = guest_hooks(&g);

#define FAILS(cmd, hooks, flags, want, needle)                                                              \
	do {                                                                                                \
		b = (struct bounce *)1;                                                                     \
		rc = bounce_create(cmd, hooks, flags, &b, err, sizeof(err));                                \
		CHECK(rc == (want), "create(%s) -> %d, want %d (%s)", cmd ? cmd : "NULL", rc, want, err);   \
		CHECK(b == NULL, "out not NULL on failure");                                                \
		if (rc == 0 && b)                                                                           \
			bounce_destroy(b);                                                                  \
		CHECK(strstr(err, needle) != NULL, "create(%s): message \"%s\" lacks \"%s\"", cmd ? cmd : "NULL", \
		      err, needle);                                                                         \
	} while (0)

	FAILS("swiotlb=4096", NULL, 0, -EINVAL, "hooks is NULL");
	CHECK(bounce_create("swiotlb=4096", &h, 0, NULL, err, sizeof(err)) == -EINVAL, "NULL out");
	FAILS("swiotlb.strategy=foo", &h, 0, -EINVAL, "unknown strategy `foo`");
	FAILS("swiotlb=12abc", &h, 0, -EINVAL, "12abc");
	FAILS("swiotlb=64,2,forse", &h, 0, -EINVAL, "forse");
	FAILS("swiotlb.legacy.foo=1", &h, 0, -EINVAL, "no parameter `foo`");
	FAILS("swiotlb.strategy=legacy swiotlb.magazine.nonsense=1", &h, 0, -EINVAL, "nonsense");
	FAILS("swiotlb.strategy=legacy swiotlb.strategy=dynamic", &h, 0, -EINVAL, "swiotlb.strategy");
	FAILS("swiotlb=noforce", &h, 0, -ENODEV, "noforce");
	FAILS("swiotlb.strategy=legacy,virtio1:slab", &h, 0, -EINVAL, "unknown strategy `slab`");
	FAILS("swiotlb.strategy=legacy,virtio1", &h, 0, -EINVAL, "`<device>:<strategy>`");
	FAILS("swiotlb.strategy=linux", &h, 0, -EINVAL, "unknown strategy `linux`");
	FAILS("swiotlb=4096", &h, 0x80, -EINVAL, "flags");

	struct bounce_hooks bad = h;
	bad.abi_version = BOUNCE_ABI_VERSION + 1;
	FAILS("swiotlb=4096", &bad, 0, -EINVAL, "ABI version");
	bad = h;
	bad.copy = NULL;
	FAILS("swiotlb=4096", &bad, 0, -EINVAL, "`copy` is NULL");
	bad = h;
	bad.cpu_count = zero_cpus;
	FAILS("swiotlb=4096", &bad, 0, -EINVAL, "cpu_count");
	bad = h;
	bad.irq_restore = NULL;
	FAILS("swiotlb=4096", &bad, 0, -EINVAL, "both be set");

	/* truncated error message */
	char tiny[8];
	rc = bounce_create("swiotlb.strategy=foo", &h, 0, &b, tiny, sizeof(tiny));
	CHECK(rc == -EINVAL && strlen(tiny) == 7, "tiny error buffer: \"%s\"", tiny);

	/* page allocation fails: -ENOMEM, nothing leaked */
	atomic_store(&g.fail_all_alloc, true);
	FAILS("swiotlb=4096 swiotlb.strategy=legacy", &h, 0, -ENOMEM, "alloc");
	atomic_store(&g.fail_all_alloc, false);
	CHECK(guest_count_state(&g, PG_FREE) == g.npages, "pages leaked by a failed create");

	/* conversion fails: -EIO, the batch stays quarantined, the rest is freed */
	atomic_store(&g.fail_decrypt_in, 1);
	FAILS("swiotlb=4096 swiotlb.strategy=legacy", &h, 0, -EIO, "shared");
	CHECK(guest_count_state(&g, PG_UNKNOWN) > 0, "failed conversion not quarantined");
	CHECK(guest_count_state(&g, PG_PRIVATE) == 0 && guest_count_state(&g, PG_SHARED) == 0,
	      "pages leaked by a failed create");
	CHECK(atomic_load(&g.violations) == 0, "violations: %s", g.last_violation);
	guest_fini(&g);

	/* the process-wide IRQ pair: installed by now; a different one is refused */
	CHECK(guest_init(&g, ARENA_BYTES) == 0, "guest");
	h = guest_hooks(&g);
	rc = bounce_create("swiotlb=2048", &h, 0, &b, err, sizeof(err));
	CHECK(rc == 0, "create -> %d: %s", rc, err);
	if (rc == 0)
		CHECK(bounce_destroy(b) == 0, "destroy");
	bad = h;
	bad.irq_save = other_irq_save;
	bad.irq_restore = other_irq_restore;
	FAILS("swiotlb=2048", &bad, 0, -EINVAL, "process-wide");
	bad.irq_save = NULL;
	bad.irq_restore = NULL;
	FAILS("swiotlb=2048", &bad, 0, -EINVAL, "process-wide");
	/* no strategy named: the default (legacy) */
	rc = bounce_create("console=ttyS0 swiotlb=2048 quiet", &h, 0, &b, err, sizeof(err));
	CHECK(rc == 0 && strcmp(bounce_strategy_name(b), "legacy") == 0, "default strategy: %d %s", rc,
	      rc ? err : bounce_strategy_name(b));
	if (rc == 0)
		CHECK(bounce_destroy(b) == 0, "destroy");
	CHECK(atomic_load(&g.violations) == 0, "violations: %s", g.last_violation);
	guest_fini(&g);
#undef FAILS
}

/* ------------------------------------------------------------ per-device routes */

/* Finds device `name` among the device slots; -1 when no slot holds it. */
static int find_device(struct bounce *b, const char *name, struct bounce_device_stats *out)
{
	for (uint32_t i = 0; i < BOUNCE_DEVICE_SLOTS; i++)
		if (bounce_device_stats(b, i, out) == 0 && strcmp(out->name, name) == 0)
			return (int)i;
	return -1;
}

static void test_routes(void)
{
	static const char cmdline[] = "swiotlb=2048 swiotlb.strategy=legacy,virtio1:magazine,vda:linux "
				      "swiotlb.magazine.classes=2K:64,64K:4 swiotlb.magazine.cap=8M";
	struct env e;
	struct bounce_device_stats d;
	struct bounce_stats s;
	struct bounce_device virtio1 = { .name = "virtio1", .dma_mask = UINT64_MAX, .max_segment_size = 65536 };
	struct bounce_device vda = { .name = "vda", .dma_mask = UINT64_MAX, .max_segment_size = 65536 };
	uint64_t dma[4];

	if (env_init(&e, "legacy", cmdline, 0) != 0) {
		if (e.g.mem)
			guest_fini(&e.g);
		return;
	}
	cur = "routes";
	CHECK(bounce_lane_count(e.b) == 2, "lanes %d", bounce_lane_count(e.b));
	CHECK(strcmp(bounce_lane_name(e.b, 0), "legacy") == 0 && strcmp(bounce_lane_name(e.b, 1), "magazine") == 0,
	      "lane names");
	CHECK(bounce_lane_name(e.b, 2) == NULL && bounce_lane_name(NULL, 0) == NULL, "lane name out of range");
	CHECK(bounce_native_routes(e.b) == 1, "native routes %d", bounce_native_routes(e.b));
	CHECK(bounce_serves_device(e.b, &vda) == 0, "vda is Linux's");
	CHECK(bounce_serves_device(e.b, &virtio1) == 1 && bounce_serves_device(e.b, &e.net) == 1, "served devices");
	CHECK(bounce_serves_device(e.b, NULL) == -EINVAL, "serves NULL device");
	atomic_fetch_add(&e.exp_fail[BOUNCE_FAILURE_BAD_ARGUMENT], 1);

	uint64_t orig = guest_alloc_private(&e.g, 4 * G_PAGE);
	CHECK(orig != 0, "private memory");
	for (int i = 0; i < 3; i++)
		CHECK(map_retry(&e, &virtio1, orig + i * G_PAGE, 3000, 0, BOUNCE_DMA_TO_DEVICE, 0, &dma[i]) == 0,
		      "map on virtio1: %s", last_err(&e));
	CHECK(map_retry(&e, &e.net, orig + 3 * G_PAGE, 1000, 0, BOUNCE_DMA_TO_DEVICE, 0, &dma[3]) == 0, "map on net");

	CHECK(find_device(e.b, "virtio1", &d) >= 0, "virtio1 has a slot");
	CHECK(d.lane == 1 && strcmp(d.strategy, "magazine") == 0 && d.maps == 3 && d.inflight_bytes == 9000,
	      "virtio1: lane %u %s maps %llu inflight %llu", d.lane, d.strategy, (unsigned long long)d.maps,
	      (unsigned long long)d.inflight_bytes);
	CHECK(find_device(e.b, "vda", &d) >= 0 && d.lane == BOUNCE_LANE_NATIVE && strcmp(d.strategy, "linux") == 0 &&
		      d.maps == 0,
	      "vda: routed to Linux's swiotlb");
	CHECK(find_device(e.b, "virtio-net", &d) >= 0 && d.lane == 0 && strcmp(d.strategy, "legacy") == 0 &&
		      d.maps == 1,
	      "virtio-net: the default");
	CHECK(bounce_lane_stats(e.b, 1, &s) == 0 && s.maps == 3 && s.capacity_bytes > 0, "lane 1 stats: %llu maps",
	      (unsigned long long)s.maps);
	CHECK(bounce_lane_stats(e.b, 0, &s) == 0 && s.maps == 1, "lane 0 stats");
	CHECK(bounce_lane_stats(e.b, 2, &s) == -ENOENT, "lane 2 does not exist");
	CHECK(bounce_device_stats(e.b, BOUNCE_DEVICE_SLOTS, &d) == -ENOENT, "slot past the table");
	CHECK(bounce_device_stats(e.b, 0, NULL) == -EINVAL, "device stats NULL out");
	CHECK(bounce_lane_stats(e.b, 0, NULL) == -EINVAL, "lane stats NULL out");
	atomic_fetch_add(&e.exp_fail[BOUNCE_FAILURE_BAD_ARGUMENT], 2);
	CHECK(bounce_device_stats(NULL, 0, &d) == -EINVAL && bounce_lane_count(NULL) == -EINVAL, "NULL instance");

	/* Each mapping goes back through the instance that made it, whoever unmaps it. */
	for (int i = 0; i < 4; i++)
		CHECK(bounce_unmap_single(e.b, i == 0 ? &e.net : &virtio1, dma[i], i == 3 ? 1000 : 3000,
					  BOUNCE_DMA_TO_DEVICE, 0) == 0,
		      "unmap %d: %s", i, last_err(&e));
	CHECK(bounce_stats(e.b, &s) == 0 && s.maps == 4 && s.unmaps == 4 && s.inflight_bytes == 0, "totals");
	check_stats(&e, 0, "routes");
	guest_free_private(&e.g, orig, 4 * G_PAGE);
	env_fini(&e);
}

/* ------------------------------------------------------------ main */

struct strategy_case {
	const char *name;
	const char *cmdline;
};

static const struct strategy_case cases[] = {
	{ "legacy", "console=ttyS0 swiotlb=4096 swiotlb.strategy=legacy" },
	/* the default class sizes with small targets (about 6.5 MiB) and a 24 MiB cap */
	{ "dynamic", "console=ttyS0 swiotlb.strategy=dynamic swiotlb.dynamic.classes=512:64,2K:256,4K:256,16K:64,512K:8 "
		     "swiotlb.dynamic.cap=24M" },
	{ "magazine", "console=ttyS0 swiotlb.strategy=magazine swiotlb.magazine.classes=512:64,2K:256,4K:256,16K:64,512K:8 "
		      "swiotlb.magazine.cap=24M" },
};

int main(int argc, char **argv)
{
	int iterations = 1500;
	const char *only = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			iterations = 200;
		else
			only = argv[i];
	}
	/* The first successful create installs the process-wide IRQ pair; make sure the
	 * one that does is ours (create failures run first, all with the same pair). */
	test_create_failures();
	if (!only)
		test_routes();

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct env e;
		unsigned long before = atomic_load(&failed);

		if (only && strcmp(only, cases[c].name))
			continue;
		cur = cases[c].name;
		if (env_init(&e, cases[c].name, cases[c].cmdline, 0) != 0) {
			if (e.g.mem)
				guest_fini(&e.g);
			continue;
		}
		check_stats(&e, 0, "fresh instance");
		test_roundtrips(&e);
		test_partial_and_attrs(&e);
		test_sg(&e);
		test_bad_arguments(&e);
		test_exhaustion(&e);
		test_threads(&e, iterations);
		test_destroy_busy(&e);
		env_fini(&e);
		test_scrub_and_timing(cases[c].name, cases[c].cmdline);
		printf("c-abi: %-8s %s\n", cases[c].name, atomic_load(&failed) == before ? "ok" : "FAILED");
	}
#ifdef BOUNCE_KERNEL_FLAVOUR
	cur = "kernel flavour";
	CHECK(atomic_load(&host_alloc_calls) > 0, "bounce_host_alloc never called");
	CHECK(atomic_load(&host_live_allocs) == 0, "%ld allocations from bounce_host_alloc not freed",
	      atomic_load(&host_live_allocs));
	CHECK(atomic_load(&host_allocs_irqs_off) == 0, "%lu heap allocations with interrupts disabled",
	      atomic_load(&host_allocs_irqs_off));
	CHECK(atomic_load(&host_allocs_irqs_off_audit) == 0,
	      "%lu heap allocations with interrupts disabled inside bounce_audit (a strategy allocates under its lock)",
	      atomic_load(&host_allocs_irqs_off_audit));
#endif
	printf("c-abi: %lu passed, %lu failed\n", atomic_load(&passed), atomic_load(&failed));
	return atomic_load(&failed) ? 1 : 0;
}
