/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * A simulated confidential guest for the C ABI tests: an arena of "physical" memory
 * with a per-page state (free / private / shared / unknown), the platform hooks bounce
 * needs (struct bounce_hooks) written against it, and a device that can only touch
 * shared pages below its dma_mask.
 *
 * Everything a correct bounce layer never does is a *violation*: counted, printed, and
 * failing the test run. The hooks refuse the forbidden operation (a copy touching a
 * free or quarantined page is not performed, a free of a shared page is ignored).
 */
#ifndef BOUNCE_TEST_GUEST_H
#define BOUNCE_TEST_GUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "bounce.h"

#define G_PAGE 4096u
/* Guest-physical address of the arena's first byte (physical 0 stays invalid). */
#define G_BASE 0x100000ull
/* TDX: the GPA bit that marks a shared address for the device. */
#define G_SHARED_BIT (1ull << 47)
#define G_CPUS 4u

enum g_page_state { PG_FREE = 0, PG_PRIVATE = 1, PG_SHARED = 2, PG_UNKNOWN = 3 };

struct guest {
	uint8_t *mem;
	size_t npages;
	_Atomic unsigned char *state;
	pthread_mutex_t lock; /* page allocator and state transitions */

	/* fault injection: fail the n-th next call (0: off), or every call */
	atomic_int fail_alloc_in, fail_decrypt_in, fail_encrypt_in;
	atomic_bool fail_all_alloc;

	/* counters */
	atomic_ulong alloc_calls, atomic_alloc_calls, free_calls, decrypt_calls, encrypt_calls;
	atomic_ulong pages_shared_now, wakeups, traces, logs, copies;
	atomic_ulong violations;
	char last_log[256];
	char last_violation[256];
};

/* Thread-local simulated CPU id and interrupt state. */
extern _Thread_local unsigned g_cpu;
extern _Thread_local unsigned long g_irqs_off;
/* The bounce call the test is inside (NULL: none in particular); named in violations. */
extern _Thread_local const char *g_context;

int guest_init(struct guest *g, size_t bytes);
void guest_fini(struct guest *g);
void guest_violation(struct guest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The hook table for this guest (IRQ pair included). */
struct bounce_hooks guest_hooks(struct guest *g);

/* Private buffers the "driver" maps: whole pages from the page allocator. */
uint64_t guest_alloc_private(struct guest *g, size_t bytes);
void guest_free_private(struct guest *g, uint64_t phys, size_t bytes);
/* CPU access to private memory (the test's own view of its buffers). */
void *guest_ptr(struct guest *g, uint64_t phys, size_t len);
size_t guest_count_state(struct guest *g, enum g_page_state s);

/* The device: DMA through bus addresses; refuses (and records a violation for) any
 * access that is not to shared pages below the device's mask. Returns 0 or -1. */
int device_read(struct guest *g, const struct bounce_device *d, uint64_t dma, void *buf, size_t len);
int device_write(struct guest *g, const struct bounce_device *d, uint64_t dma, const void *buf, size_t len);
/* A hostile host reading shared memory outside any mapping (scrub checks). */
int host_read(struct guest *g, uint64_t dma, void *buf, size_t len);

/* Restores that re-enabled interrupts while another IRQ-safe lock was still held. */
extern atomic_ulong g_irq_order_violations;

/* Starts a test group with interrupts enabled and the order counter at 0 (so one
 * strategy's lock bug does not cascade into the next group). */
void guest_irq_reset(void);

/* The simulated local_irq_save/restore (process-wide, no context). */
unsigned long guest_irq_save(void);
void guest_irq_restore(unsigned long flags);

#endif
