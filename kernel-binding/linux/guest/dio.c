// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * dio - O_DIRECT integrity and throughput test for the bounce guest.
 *
 * Every byte a virtio-blk request moves goes through the guest's swiotlb
 * (swiotlb=force, iommu_platform=on), so this program checks the bounce path
 * end to end: the data written must come back bit for bit, and the bytes
 * around each buffer must stay untouched (a bounce that copies too much or
 * to the wrong place shows up as a guard-byte failure).
 *
 * Integrity mode (default):
 *   for each size in the list, every thread writes a deterministic pattern
 *   (a function of the absolute device offset, the seed and the pass number)
 *   to its own region of the device with O_DIRECT, then reads each block back
 *   into a poisoned buffer and compares every byte. Buffers alternate between
 *   page-aligned and 512-byte-offset starts. One line per size, then
 *   "dio: N passed, M failed". Exit status 1 on any failure.
 *
 * Throughput mode (-T seconds):
 *   fio-like O_DIRECT loop of one block size over each thread's region for the
 *   given time, writes then reads (or -m read|write), printing
 *   "tput: mode=... bs=... threads=... seconds=... ops=... bytes=... MBps=... iops=..."
 *
 * Build: gcc -O2 -static -pthread -o dio dio.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GUARD 4096          /* guard bytes on each side of a buffer */
#define GUARD_BYTE 0x5a
#define POISON_BYTE 0xa5
#define MAX_THREADS 64

/* Sizes of the integrity pass: powers of two and odd multiples of 512 that
 * O_DIRECT allows, from one sector to beyond swiotlb's 256 KiB mapping limit. */
static const size_t default_sizes[] = {
	512, 1536, 4096, 7680, 8192, 12800, 65024, 65536, 131072,
	262144, 266752, 1048576, 1049088, 4194304,
};

struct opts {
	const char *dev;
	int threads;
	uint64_t seed;
	uint64_t region;       /* bytes per thread, 0 = device size / threads */
	uint64_t budget;       /* bytes per thread per size (integrity) */
	uint64_t max_blocks;   /* blocks per thread per size (integrity) */
	double tput_seconds;   /* > 0: throughput mode */
	size_t bs;
	const char *mode;      /* read | write | both */
	int random;
	int verbose;
	int fault;             /* -F: corrupt one byte on disk per size (self-test) */
	size_t sizes[64];
	int nsizes;
};

static struct opts o = {
	.dev = "/dev/vda", .threads = 4, .seed = 0x626f756e6365ULL, /* "bounce" */
	.budget = 2 << 20, .max_blocks = 128, .bs = 65536, .mode = "both",
};
static uint64_t dev_size;
static unsigned int lbs = 512;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* The pattern: one 64-bit word per 8 bytes of device offset. */
static void fill_pattern(uint8_t *buf, size_t len, uint64_t dev_off, uint64_t seed)
{
	uint64_t key = splitmix64(seed);

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix64(key ^ (dev_off + i));

		memcpy(buf + i, &v, 8);
	}
}

/* FNV-1a over a block, folded with its offset so that the per-size sum does
 * not depend on the order in which threads finish. */
static uint64_t block_hash(const uint8_t *buf, size_t len, uint64_t dev_off)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ dev_off;

	for (size_t i = 0; i < len; i++) {
		h ^= buf[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

struct buffer {
	uint8_t *base;   /* GUARD | data (at offset `skew`) | GUARD */
	uint8_t *data;
	size_t alloc;
	size_t skew;
};

static int buf_alloc(struct buffer *b, size_t size, size_t skew)
{
	b->alloc = GUARD + skew + size + GUARD;
	b->alloc = (b->alloc + 4095) & ~(size_t)4095;
	if (posix_memalign((void **)&b->base, 4096, b->alloc))
		return -1;
	b->skew = skew;
	b->data = b->base + GUARD + skew;
	return 0;
}

/* Places the data `skew` bytes after the leading guard. */
static uint8_t *buf_place(struct buffer *b, size_t skew)
{
	b->skew = skew;
	b->data = b->base + GUARD + skew;
	return b->data;
}

static void buf_guards_set(struct buffer *b, size_t size)
{
	memset(b->base, GUARD_BYTE, GUARD + b->skew);
	memset(b->data + size, GUARD_BYTE, b->alloc - (GUARD + b->skew + size));
}

/* Returns the number of guard bytes that changed. */
static size_t buf_guards_check(const struct buffer *b, size_t size)
{
	size_t bad = 0;
	const uint8_t *end = b->base + b->alloc;

	for (const uint8_t *p = b->base; p < b->data; p++)
		bad += *p != GUARD_BYTE;
	for (const uint8_t *p = b->data + size; p < end; p++)
		bad += *p != GUARD_BYTE;
	return bad;
}

/* ------------------------------------------------------------ integrity */

struct ithread {
	pthread_t tid;
	int idx;
	int fd;
	size_t size;
	uint64_t seed;
	uint64_t region_off, region_len;
	/* results */
	uint64_t blocks, bytes, bad_bytes, bad_guards, io_errors;
	uint64_t hash_expect, hash_read;
	double t_write, t_read;
	char first_error[256];
};

static void note_error(struct ithread *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void note_error(struct ithread *t, const char *fmt, ...)
{
	va_list ap;

	if (t->first_error[0])
		return;
	va_start(ap, fmt);
	vsnprintf(t->first_error, sizeof(t->first_error), fmt, ap);
	va_end(ap);
}

static void *integrity_thread(void *arg)
{
	struct ithread *t = arg;
	struct buffer wb, rb, eb;
	uint64_t nblocks = t->region_len / t->size;
	double t0;

	if (nblocks > o.budget / t->size)
		nblocks = o.budget / t->size;
	if (nblocks > o.max_blocks)
		nblocks = o.max_blocks;
	if (nblocks < 2 && t->region_len / t->size >= 2)
		nblocks = 2;   /* one aligned and one skewed buffer at least */
	if (nblocks == 0) {
		note_error(t, "region of %" PRIu64 " bytes is smaller than the size", t->region_len);
		t->io_errors++;
		return NULL;
	}
	if (buf_alloc(&wb, t->size, lbs) || buf_alloc(&rb, t->size, lbs) ||
	    buf_alloc(&eb, t->size, 0)) {
		note_error(t, "posix_memalign failed");
		t->io_errors++;
		return NULL;
	}

	/* Write pass: block i alternates between a page-aligned and a
	 * sector-offset buffer. */
	t0 = now();
	for (uint64_t i = 0; i < nblocks; i++) {
		uint64_t off = t->region_off + i * t->size;
		struct buffer *b = &wb;
		uint8_t *data = buf_place(b, (i & 1) ? lbs : 0);
		ssize_t n;

		buf_guards_set(b, t->size);
		fill_pattern(data, t->size, off, t->seed);
		n = pwrite(t->fd, data, t->size, off);
		if (n != (ssize_t)t->size) {
			note_error(t, "pwrite(off=%" PRIu64 ", len=%zu) = %zd: %s",
				   off, t->size, n, n < 0 ? strerror(errno) : "short");
			t->io_errors++;
		}
		if (buf_guards_check(b, t->size)) {
			note_error(t, "write buffer guard bytes changed at off=%" PRIu64, off);
			t->bad_guards++;
		}
	}
	if (o.fault && t->idx == 0) {
		/* Self-test of the checker: rewrite block 0 with one byte flipped. */
		uint8_t *data = buf_place(&wb, 0);

		fill_pattern(data, t->size, t->region_off, t->seed);
		data[t->size / 2] ^= 0x01;
		if (pwrite(t->fd, data, t->size, t->region_off) != (ssize_t)t->size)
			note_error(t, "fault injection pwrite failed: %s", strerror(errno));
	}
	if (fdatasync(t->fd) && !t->first_error[0])
		note_error(t, "fdatasync: %s", strerror(errno));
	t->t_write = now() - t0;

	/* Read pass: poisoned buffer, guards around it, compare every byte. */
	t0 = now();
	for (uint64_t i = 0; i < nblocks; i++) {
		uint64_t off = t->region_off + i * t->size;
		struct buffer *b = &rb;
		uint8_t *data = buf_place(b, (i & 1) ? 0 : lbs);
		ssize_t n;

		buf_guards_set(b, t->size);
		memset(data, POISON_BYTE, t->size);
		n = pread(t->fd, data, t->size, off);
		if (n != (ssize_t)t->size) {
			note_error(t, "pread(off=%" PRIu64 ", len=%zu) = %zd: %s",
				   off, t->size, n, n < 0 ? strerror(errno) : "short");
			t->io_errors++;
		}
		fill_pattern(eb.data, t->size, off, t->seed);
		t->hash_expect += block_hash(eb.data, t->size, off);
		t->hash_read += block_hash(data, t->size, off);
		if (memcmp(data, eb.data, t->size)) {
			size_t first = SIZE_MAX, bad = 0;

			for (size_t k = 0; k < t->size; k++)
				if (data[k] != eb.data[k]) {
					bad++;
					if (first == SIZE_MAX)
						first = k;
				}
			note_error(t, "data mismatch at dev off %" PRIu64 " (+%zu in a %zu-byte block): "
				   "got 0x%02x want 0x%02x, %zu bad bytes in block",
				   off + first, first, t->size, data[first], eb.data[first], bad);
			t->bad_bytes += bad;
		}
		if (buf_guards_check(b, t->size)) {
			note_error(t, "read buffer guard bytes changed around dev off %" PRIu64
				   " (len %zu, buffer skew %zu)", off, t->size, b->skew);
			t->bad_guards++;
		}
		t->blocks++;
		t->bytes += t->size;
	}
	t->t_read = now() - t0;
	free(wb.base);
	free(rb.base);
	free(eb.base);
	return NULL;
}

static int run_integrity(int fd)
{
	int passed = 0, failed = 0;
	uint64_t region = o.region ? o.region : (dev_size / o.threads) & ~(uint64_t)(lbs - 1);

	if (region * o.threads > dev_size) {
		fprintf(stderr, "dio: %d regions of %" PRIu64 " bytes do not fit in %s (%" PRIu64 " bytes)\n",
			o.threads, region, o.dev, dev_size);
		return 2;
	}
	printf("dio: device=%s size=%" PRIu64 " lbs=%u threads=%d region=%" PRIu64 " seed=0x%" PRIx64 "\n",
	       o.dev, dev_size, lbs, o.threads, region, o.seed);
	fflush(stdout);

	for (int s = 0; s < o.nsizes; s++) {
		size_t size = o.sizes[s];
		struct ithread th[MAX_THREADS];
		uint64_t blocks = 0, bytes = 0, bad = 0, guards = 0, ioerr = 0;
		uint64_t he = 0, hr = 0;
		double tw = 0, tr = 0;
		const char *err = NULL;
		int ok;

		if (size % lbs) {
			printf("dio: size=%zu SKIP (not a multiple of the %u-byte logical block)\n", size, lbs);
			continue;
		}
		memset(th, 0, sizeof(th));
		for (int i = 0; i < o.threads; i++) {
			th[i].idx = i;
			th[i].fd = fd;
			th[i].size = size;
			/* A new seed per size: a write that never reached the disk
			 * leaves the previous pass's pattern and fails the compare. */
			th[i].seed = o.seed + (uint64_t)s * 0x1000193ULL;
			th[i].region_off = (uint64_t)i * region;
			th[i].region_len = region;
			if (pthread_create(&th[i].tid, NULL, integrity_thread, &th[i])) {
				perror("pthread_create");
				return 2;
			}
		}
		for (int i = 0; i < o.threads; i++) {
			pthread_join(th[i].tid, NULL);
			blocks += th[i].blocks;
			bytes += th[i].bytes;
			bad += th[i].bad_bytes;
			guards += th[i].bad_guards;
			ioerr += th[i].io_errors;
			he += th[i].hash_expect;
			hr += th[i].hash_read;
			if (th[i].t_write > tw)
				tw = th[i].t_write;
			if (th[i].t_read > tr)
				tr = th[i].t_read;
			if (!err && th[i].first_error[0])
				err = th[i].first_error;
		}
		ok = !bad && !guards && !ioerr && he == hr && blocks > 0;
		printf("dio: size=%zu threads=%d blocks=%" PRIu64 " bytes=%" PRIu64
		       " write_MBps=%.1f read_MBps=%.1f csum_expect=%016" PRIx64
		       " csum_read=%016" PRIx64 " bad_bytes=%" PRIu64 " bad_guards=%" PRIu64
		       " io_errors=%" PRIu64 " %s\n",
		       size, o.threads, blocks, bytes, tw > 0 ? bytes / tw / 1e6 : 0.0,
		       tr > 0 ? bytes / tr / 1e6 : 0.0, he, hr, bad, guards, ioerr,
		       ok ? "PASS" : "FAIL");
		if (err)
			printf("dio:   first error: %s\n", err);
		fflush(stdout);
		if (ok)
			passed++;
		else
			failed++;
	}
	printf("dio: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

/* ------------------------------------------------------------ throughput */

struct tthread {
	pthread_t tid;
	int fd;
	int write;
	uint64_t region_off, region_len;
	double seconds;
	uint64_t ops, bytes, errors;
	unsigned idx;
};

static void *tput_thread(void *arg)
{
	struct tthread *t = arg;
	struct buffer b;
	uint64_t nblk = t->region_len / o.bs, i = 0, rnd = splitmix64(t->idx + 1);
	double end;

	if (buf_alloc(&b, o.bs, 0)) {
		t->errors++;
		return NULL;
	}
	fill_pattern(b.data, o.bs, t->region_off, o.seed);
	end = now() + t->seconds;
	while (now() < end) {
		uint64_t blk;
		ssize_t n;

		if (o.random) {
			rnd = splitmix64(rnd);
			blk = rnd % nblk;
		} else {
			blk = i++ % nblk;
		}
		uint64_t off = t->region_off + blk * o.bs;

		n = t->write ? pwrite(t->fd, b.data, o.bs, off) : pread(t->fd, b.data, o.bs, off);
		if (n != (ssize_t)o.bs) {
			t->errors++;
			if (t->errors > 10)
				break;
			continue;
		}
		t->ops++;
		t->bytes += o.bs;
	}
	free(b.base);
	return NULL;
}

static int run_tput_one(int fd, int write)
{
	struct tthread th[MAX_THREADS];
	uint64_t region = o.region ? o.region : (dev_size / o.threads) & ~(uint64_t)(lbs - 1);
	uint64_t ops = 0, bytes = 0, errors = 0;
	double t0, el;

	if (region < o.bs) {
		fprintf(stderr, "dio: region %" PRIu64 " smaller than block size %zu\n", region, o.bs);
		return 2;
	}
	memset(th, 0, sizeof(th));
	t0 = now();
	for (int i = 0; i < o.threads; i++) {
		th[i].fd = fd;
		th[i].write = write;
		th[i].idx = i;
		th[i].region_off = (uint64_t)i * region;
		th[i].region_len = region;
		th[i].seconds = o.tput_seconds;
		if (pthread_create(&th[i].tid, NULL, tput_thread, &th[i])) {
			perror("pthread_create");
			return 2;
		}
	}
	for (int i = 0; i < o.threads; i++) {
		pthread_join(th[i].tid, NULL);
		ops += th[i].ops;
		bytes += th[i].bytes;
		errors += th[i].errors;
	}
	if (write)
		fdatasync(fd);
	el = now() - t0;
	printf("tput: mode=%s pattern=%s bs=%zu threads=%d seconds=%.3f ops=%" PRIu64
	       " bytes=%" PRIu64 " MBps=%.2f iops=%.1f errors=%" PRIu64 "\n",
	       write ? "write" : "read", o.random ? "random" : "seq", o.bs, o.threads, el, ops,
	       bytes, bytes / el / 1e6, ops / el, errors);
	fflush(stdout);
	return errors ? 1 : 0;
}

static int run_tput(int fd)
{
	int rc = 0;

	if (o.bs % lbs) {
		fprintf(stderr, "dio: block size %zu is not a multiple of %u\n", o.bs, lbs);
		return 2;
	}
	if (!strcmp(o.mode, "write") || !strcmp(o.mode, "both"))
		rc |= run_tput_one(fd, 1);
	if (!strcmp(o.mode, "read") || !strcmp(o.mode, "both"))
		rc |= run_tput_one(fd, 0);
	return rc;
}

/* ------------------------------------------------------------ main */

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);

	switch (*end) {
	case 'k': case 'K': v <<= 10; break;
	case 'm': case 'M': v <<= 20; break;
	case 'g': case 'G': v <<= 30; break;
	}
	return v;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: dio [-d dev] [-t threads] [-s seed] [-R region] [-B budget] [-N blocks] [-z sizes] [-F]\n"
		"       dio -T seconds [-b bs] [-t threads] [-m read|write|both] [-r] [-d dev] [-R region]\n"
		"  -d dev      block device (default /dev/vda); its content is overwritten\n"
		"  -t threads  concurrent threads, each on its own region (default 4)\n"
		"  -s seed     pattern seed\n"
		"  -R bytes    region per thread (default: device size / threads)\n"
		"  -B bytes    integrity: at most this many bytes per thread per size (default 2M)\n"
		"  -N count    integrity: at most this many blocks per thread per size (default 128)\n"
		"  -z list     integrity: comma-separated sizes (k/M suffixes allowed)\n"
		"  -T seconds  throughput mode\n"
		"  -b bytes    throughput block size (default 64k)\n"
		"  -m mode     throughput: read, write or both (default both: write then read)\n"
		"  -r          throughput: random offsets instead of sequential\n"
		"  -F          integrity self-test: flip one byte on disk per size; every size must FAIL\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int c, fd, rc;

	while ((c = getopt(argc, argv, "d:t:s:R:B:N:z:T:b:m:rFvh")) != -1) {
		switch (c) {
		case 'd': o.dev = optarg; break;
		case 't': o.threads = atoi(optarg); break;
		case 's': o.seed = strtoull(optarg, NULL, 0); break;
		case 'R': o.region = parse_size(optarg); break;
		case 'B': o.budget = parse_size(optarg); break;
		case 'N': o.max_blocks = parse_size(optarg); break;
		case 'z': {
			char *tok, *save, *list = strdup(optarg);

			for (tok = strtok_r(list, ",", &save); tok && o.nsizes < 64;
			     tok = strtok_r(NULL, ",", &save))
				o.sizes[o.nsizes++] = parse_size(tok);
			break;
		}
		case 'T': o.tput_seconds = atof(optarg); break;
		case 'b': o.bs = parse_size(optarg); break;
		case 'm': o.mode = optarg; break;
		case 'r': o.random = 1; break;
		case 'F': o.fault = 1; break;
		case 'v': o.verbose = 1; break;
		default: usage();
		}
	}
	if (o.threads < 1 || o.threads > MAX_THREADS || o.bs == 0 ||
	    (strcmp(o.mode, "read") && strcmp(o.mode, "write") && strcmp(o.mode, "both")))
		usage();
	if (!o.nsizes) {
		memcpy(o.sizes, default_sizes, sizeof(default_sizes));
		o.nsizes = sizeof(default_sizes) / sizeof(default_sizes[0]);
	}

	fd = open(o.dev, O_RDWR | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "dio: open %s: %s\n", o.dev, strerror(errno));
		return 2;
	}
	if (ioctl(fd, BLKGETSIZE64, &dev_size)) {
		struct stat st;

		if (fstat(fd, &st)) {
			perror("dio: size");
			return 2;
		}
		dev_size = st.st_size;
	}
	{
		int ss = 0;

		if (!ioctl(fd, BLKSSZGET, &ss) && ss > 0)
			lbs = ss;
	}
	rc = o.tput_seconds > 0 ? run_tput(fd) : run_integrity(fd);
	close(fd);
	return rc;
}
