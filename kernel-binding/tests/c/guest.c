/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The simulated confidential guest behind the C ABI tests; see guest.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "guest.h"

_Thread_local unsigned g_cpu;
_Thread_local unsigned long g_irqs_off;
_Thread_local const char *g_context;

static const char *state_name(unsigned s)
{
	switch (s) {
	case PG_FREE: return "free";
	case PG_PRIVATE: return "private";
	case PG_SHARED: return "shared";
	default: return "unknown";
	}
}

void guest_violation(struct guest *g, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	atomic_fetch_add(&g->violations, 1);
	pthread_mutex_lock(&g->lock);
	snprintf(g->last_violation, sizeof(g->last_violation), "%s", msg);
	pthread_mutex_unlock(&g->lock);
	fprintf(stderr, "VIOLATION: %s%s%s\n", msg, g_context ? " during " : "", g_context ? g_context : "");
}

int guest_init(struct guest *g, size_t bytes)
{
	memset(g, 0, sizeof(*g));
	g->npages = bytes / G_PAGE;
	g->mem = aligned_alloc(G_PAGE, g->npages * G_PAGE);
	g->state = calloc(g->npages, sizeof(*g->state));
	if (!g->mem || !g->state)
		return -1;
	/* Fresh memory holds garbage, not zeros: nothing may rely on it. */
	memset(g->mem, 0xEE, g->npages * G_PAGE);
	pthread_mutex_init(&g->lock, NULL);
	return 0;
}

void guest_fini(struct guest *g)
{
	pthread_mutex_destroy(&g->lock);
	free(g->mem);
	free((void *)g->state);
	g->mem = NULL;
	g->state = NULL;
}

/* Page index of phys, or -1 when outside the arena. */
static long page_of(struct guest *g, uint64_t phys)
{
	if (phys < G_BASE)
		return -1;
	uint64_t i = (phys - G_BASE) / G_PAGE;
	return i < g->npages ? (long)i : -1;
}

/* Whether [phys, phys+len) lies in the arena; sets the page range. */
static bool range_pages(struct guest *g, uint64_t phys, size_t len, long *first, long *last)
{
	if (len == 0 || phys < G_BASE || phys + len < phys)
		return false;
	long a = page_of(g, phys), b = page_of(g, phys + len - 1);
	if (a < 0 || b < 0)
		return false;
	*first = a;
	*last = b;
	return true;
}

void *guest_ptr(struct guest *g, uint64_t phys, size_t len)
{
	long a, b;

	if (!range_pages(g, phys, len, &a, &b))
		return NULL;
	return g->mem + (phys - G_BASE);
}

size_t guest_count_state(struct guest *g, enum g_page_state s)
{
	size_t n = 0;

	for (size_t i = 0; i < g->npages; i++)
		n += atomic_load(&g->state[i]) == s;
	return n;
}

/* ------------------------------------------------------------ page allocator */

static int alloc_run(struct guest *g, size_t pages, uint64_t limit, uint64_t *out)
{
	size_t run = 0;

	pthread_mutex_lock(&g->lock);
	for (size_t i = 0; i < g->npages; i++) {
		uint64_t end = G_BASE + (uint64_t)(i + 1) * G_PAGE;
		if (end > limit)
			break;
		run = atomic_load(&g->state[i]) == PG_FREE ? run + 1 : 0;
		if (run == pages) {
			size_t first = i + 1 - pages;
			for (size_t j = first; j <= i; j++)
				atomic_store(&g->state[j], PG_PRIVATE);
			memset(g->mem + first * G_PAGE, 0xA5, pages * G_PAGE);
			pthread_mutex_unlock(&g->lock);
			*out = G_BASE + (uint64_t)first * G_PAGE;
			return 0;
		}
	}
	pthread_mutex_unlock(&g->lock);
	return -ENOMEM;
}

static bool countdown_fires(atomic_int *c)
{
	int cur = atomic_load(c);

	while (cur > 0) {
		if (atomic_compare_exchange_weak(c, &cur, cur - 1))
			return cur == 1;
	}
	return false;
}

static int hook_alloc_pages(void *ctx, size_t pages, bool may_sleep, uint64_t limit, uint64_t *out)
{
	struct guest *g = ctx;

	atomic_fetch_add(may_sleep ? &g->alloc_calls : &g->atomic_alloc_calls, 1);
	if (may_sleep && g_irqs_off)
		guest_violation(g, "sleeping page allocation (%zu pages) with interrupts disabled", pages);
	if (!out) {
		guest_violation(g, "alloc_pages: NULL out pointer");
		return -EINVAL;
	}
	if (pages == 0) {
		guest_violation(g, "alloc_pages of 0 pages");
		return -EINVAL;
	}
	if (atomic_load(&g->fail_all_alloc) || countdown_fires(&g->fail_alloc_in))
		return -ENOMEM;
	return alloc_run(g, pages, limit, out);
}

static void hook_free_pages(void *ctx, uint64_t phys, size_t pages)
{
	struct guest *g = ctx;
	long a, b;

	atomic_fetch_add(&g->free_calls, 1);
	if (phys % G_PAGE || !range_pages(g, phys, pages * G_PAGE, &a, &b)) {
		guest_violation(g, "free of %zu pages at %#llx: unaligned or outside memory", pages,
				(unsigned long long)phys);
		return;
	}
	pthread_mutex_lock(&g->lock);
	for (long i = a; i <= b; i++) {
		unsigned s = atomic_load(&g->state[i]);
		if (s != PG_PRIVATE) {
			pthread_mutex_unlock(&g->lock);
			guest_violation(g, "free of a %s page at %#llx", state_name(s),
					(unsigned long long)(G_BASE + (uint64_t)i * G_PAGE));
			pthread_mutex_lock(&g->lock);
			continue;
		}
		atomic_store(&g->state[i], PG_FREE);
	}
	pthread_mutex_unlock(&g->lock);
}

/* ------------------------------------------------------------ conversions */

static int convert(struct guest *g, uint64_t phys, size_t pages, bool to_shared)
{
	const char *what = to_shared ? "set_memory_decrypted" : "set_memory_encrypted";
	unsigned from = to_shared ? PG_PRIVATE : PG_SHARED;
	long a, b;

	atomic_fetch_add(to_shared ? &g->decrypt_calls : &g->encrypt_calls, 1);
	if (g_irqs_off)
		guest_violation(g, "%s with interrupts disabled (it may sleep)", what);
	if (phys % G_PAGE || pages == 0 || !range_pages(g, phys, pages * G_PAGE, &a, &b)) {
		guest_violation(g, "%s(%#llx, %zu): unaligned, empty or outside memory", what,
				(unsigned long long)phys, pages);
		return -EINVAL;
	}
	bool fail = countdown_fires(to_shared ? &g->fail_decrypt_in : &g->fail_encrypt_in);
	pthread_mutex_lock(&g->lock);
	for (long i = a; i <= b; i++) {
		unsigned s = atomic_load(&g->state[i]);
		if (s != from) {
			pthread_mutex_unlock(&g->lock);
			guest_violation(g, "%s of a %s page at %#llx", what, state_name(s),
					(unsigned long long)(G_BASE + (uint64_t)i * G_PAGE));
			return -EINVAL;
		}
	}
	for (long i = a; i <= b; i++)
		atomic_store(&g->state[i], fail ? PG_UNKNOWN : (to_shared ? PG_SHARED : PG_PRIVATE));
	/* The shared and private views of a page are different memory: contents die. */
	memset(g->mem + (size_t)a * G_PAGE, to_shared ? 0x5A : 0xC3, pages * G_PAGE);
	pthread_mutex_unlock(&g->lock);
	if (fail)
		return -EIO;
	if (to_shared)
		atomic_fetch_add(&g->pages_shared_now, pages);
	else
		atomic_fetch_sub(&g->pages_shared_now, pages);
	return 0;
}

static int hook_set_decrypted(void *ctx, uint64_t phys, size_t pages)
{
	return convert(ctx, phys, pages, true);
}

static int hook_set_encrypted(void *ctx, uint64_t phys, size_t pages)
{
	return convert(ctx, phys, pages, false);
}

/* ------------------------------------------------------------ CPU, clock, copies */

static uint32_t hook_current_cpu(void *ctx)
{
	(void)ctx;
	return g_cpu;
}

static uint32_t hook_cpu_count(void *ctx)
{
	(void)ctx;
	return G_CPUS;
}

static uint64_t hook_total_ram(void *ctx)
{
	struct guest *g = ctx;
	return (uint64_t)g->npages * G_PAGE;
}

static bool hook_is_confidential(void *ctx)
{
	(void)ctx;
	return true;
}

static uint64_t hook_phys_to_dma(void *ctx, uint64_t phys)
{
	(void)ctx;
	return phys | G_SHARED_BIT;
}

static uint64_t hook_dma_to_phys(void *ctx, uint64_t dma)
{
	(void)ctx;
	return dma & ~G_SHARED_BIT;
}

/* Whether the CPU may touch [phys, phys+len): inside memory, no free or quarantined
 * page. */
static bool cpu_may_touch(struct guest *g, const char *what, uint64_t phys, size_t len)
{
	long a, b;

	if (!range_pages(g, phys, len, &a, &b)) {
		guest_violation(g, "%s of %zu bytes at %#llx: outside guest memory", what, len,
				(unsigned long long)phys);
		return false;
	}
	for (long i = a; i <= b; i++) {
		unsigned s = atomic_load(&g->state[i]);
		if (s == PG_FREE || s == PG_UNKNOWN) {
			guest_violation(g, "%s of %zu bytes at %#llx touches a %s page", what, len,
					(unsigned long long)phys, state_name(s));
			return false;
		}
	}
	return true;
}

static void hook_copy(void *ctx, uint64_t dst, uint64_t src, size_t len)
{
	struct guest *g = ctx;

	atomic_fetch_add(&g->copies, 1);
	if (len == 0)
		return;
	if (!cpu_may_touch(g, "copy (destination)", dst, len) || !cpu_may_touch(g, "copy (source)", src, len))
		return;
	if (dst < src + len && src < dst + len) {
		guest_violation(g, "overlapping copy %#llx -> %#llx (%zu bytes)", (unsigned long long)src,
				(unsigned long long)dst, len);
		return;
	}
	memcpy(g->mem + (dst - G_BASE), g->mem + (src - G_BASE), len);
}

static void hook_fill(void *ctx, uint64_t dst, uint8_t byte, size_t len)
{
	struct guest *g = ctx;

	if (len == 0)
		return;
	if (!cpu_may_touch(g, "fill", dst, len))
		return;
	memset(g->mem + (dst - G_BASE), byte, len);
}

static uint64_t hook_now_ns(void *ctx)
{
	struct timespec ts;

	(void)ctx;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void hook_wake_refill(void *ctx)
{
	struct guest *g = ctx;
	atomic_fetch_add(&g->wakeups, 1);
}

static void hook_log(void *ctx, int level, const char *msg, size_t len)
{
	struct guest *g = ctx;

	atomic_fetch_add(&g->logs, 1);
	if (!msg || msg[len] != '\0')
		guest_violation(g, "log message not NUL-terminated at its length");
	pthread_mutex_lock(&g->lock);
	snprintf(g->last_log, sizeof(g->last_log), "%.*s", (int)len, msg ? msg : "");
	pthread_mutex_unlock(&g->lock);
	if (getenv("BOUNCE_TEST_VERBOSE"))
		fprintf(stderr, "<%d>bounce: %.*s\n", level, (int)len, msg ? msg : "");
}

static void hook_trace(void *ctx, const struct bounce_trace_event *ev)
{
	struct guest *g = ctx;

	atomic_fetch_add(&g->traces, 1);
	if (!ev || ev->size == 0 || (ev->dev_name_len && !ev->dev_name) || !ev->force)
		guest_violation(g, "malformed swiotlb_bounced event");
}

/* Interrupt-disabled sections nest: local_irq_restore must undo local_irq_save in LIFO
 * order. Restoring "enabled" while another save is still outstanding (locks released
 * out of order) would let an interrupt in while a bounce lock is held: counted here. */
static _Thread_local unsigned long g_irq_depth;
atomic_ulong g_irq_order_violations;

/* A breakpoint target for debuggers. */
__attribute__((noinline)) void guest_irq_order_violation(unsigned long depth)
{
	if (atomic_fetch_add(&g_irq_order_violations, 1) == 0)
		fprintf(stderr, "VIOLATION: interrupts re-enabled with %lu IRQ-safe locks still held "
				"(irqsave/irqrestore not nested)%s%s\n", depth, g_context ? " during " : "",
			g_context ? g_context : "");
}

void guest_irq_reset(void)
{
	g_irqs_off = 0;
	g_irq_depth = 0;
	atomic_store(&g_irq_order_violations, 0);
}

unsigned long guest_irq_save(void)
{
	unsigned long old = g_irqs_off;
	g_irqs_off = 1;
	g_irq_depth++;
	return old;
}

void guest_irq_restore(unsigned long flags)
{
	if (g_irq_depth == 0) {
		if (atomic_fetch_add(&g_irq_order_violations, 1) == 0)
			fprintf(stderr, "VIOLATION: irq_restore without irq_save\n");
	} else {
		g_irq_depth--;
	}
	if (flags == 0 && g_irq_depth > 0)
		guest_irq_order_violation(g_irq_depth);
	g_irqs_off = flags;
}

struct bounce_hooks guest_hooks(struct guest *g)
{
	struct bounce_hooks h = {
		.abi_version = BOUNCE_ABI_VERSION,
		.ctx = g,
		.alloc_pages = hook_alloc_pages,
		.free_pages = hook_free_pages,
		.set_decrypted = hook_set_decrypted,
		.set_encrypted = hook_set_encrypted,
		.max_conversion_pages = 512,
		.current_cpu = hook_current_cpu,
		.cpu_count = hook_cpu_count,
		.total_ram_bytes = hook_total_ram,
		.is_confidential = hook_is_confidential,
		.phys_to_dma = hook_phys_to_dma,
		.dma_to_phys = hook_dma_to_phys,
		.copy = hook_copy,
		.fill = hook_fill,
		.now_ns = hook_now_ns,
		.wake_refill = hook_wake_refill,
		.log = hook_log,
		.trace_bounced = hook_trace,
		.irq_save = guest_irq_save,
		.irq_restore = guest_irq_restore,
	};
	return h;
}

/* ------------------------------------------------------------ driver buffers */

uint64_t guest_alloc_private(struct guest *g, size_t bytes)
{
	uint64_t phys = 0;
	size_t pages = (bytes + G_PAGE - 1) / G_PAGE;

	if (alloc_run(g, pages ? pages : 1, UINT64_MAX, &phys))
		return 0;
	return phys;
}

void guest_free_private(struct guest *g, uint64_t phys, size_t bytes)
{
	size_t pages = (bytes + G_PAGE - 1) / G_PAGE;
	hook_free_pages(g, phys, pages ? pages : 1);
}

/* ------------------------------------------------------------ the device */

static int device_check(struct guest *g, const struct bounce_device *d, const char *what, uint64_t dma,
			size_t len, bool check_mask)
{
	long a, b;

	if (len == 0)
		return 0;
	if (check_mask && (dma + (len - 1) < dma || dma + (len - 1) > d->dma_mask)) {
		guest_violation(g, "device %s: %s %#llx + %zu beyond dma_mask %#llx", d->name, what,
				(unsigned long long)dma, len, (unsigned long long)d->dma_mask);
		return -1;
	}
	if (!(dma & G_SHARED_BIT)) {
		guest_violation(g, "device %s: %s of %#llx: a private (non-shared) bus address", d ? d->name : "host",
				what, (unsigned long long)dma);
		return -1;
	}
	uint64_t phys = dma & ~G_SHARED_BIT;
	if (!range_pages(g, phys, len, &a, &b)) {
		guest_violation(g, "device: %s of %#llx + %zu outside guest memory", what, (unsigned long long)dma, len);
		return -1;
	}
	for (long i = a; i <= b; i++) {
		unsigned s = atomic_load(&g->state[i]);
		if (s != PG_SHARED) {
			guest_violation(g, "device: %s of %#llx + %zu touches a %s page", what, (unsigned long long)dma,
					len, state_name(s));
			return -1;
		}
	}
	return 0;
}

int device_read(struct guest *g, const struct bounce_device *d, uint64_t dma, void *buf, size_t len)
{
	if (device_check(g, d, "read", dma, len, true))
		return -1;
	memcpy(buf, g->mem + ((dma & ~G_SHARED_BIT) - G_BASE), len);
	return 0;
}

int device_write(struct guest *g, const struct bounce_device *d, uint64_t dma, const void *buf, size_t len)
{
	if (device_check(g, d, "write", dma, len, true))
		return -1;
	memcpy(g->mem + ((dma & ~G_SHARED_BIT) - G_BASE), buf, len);
	return 0;
}

int host_read(struct guest *g, uint64_t dma, void *buf, size_t len)
{
	static const struct bounce_device host = { .name = "host", .dma_mask = UINT64_MAX };

	if (device_check(g, &host, "host read", dma, len, false))
		return -1;
	memcpy(buf, g->mem + ((dma & ~G_SHARED_BIT) - G_BASE), len);
	return 0;
}
