/* Fork-join parallelism for one job: the core's own threads, each calling single-threaded
 * BLAS (Debian's pthread OpenBLAS serialises concurrent multithreaded calls behind one lock,
 * so the process runs with OPENBLAS_NUM_THREADS=1 and parallelises here instead). */
#ifndef ALTGRAD_PARALLEL_H
#define ALTGRAD_PARALLEL_H

#include <stddef.h>

/* Body of a parallel loop: runs items [begin, end) on worker `tid` (0..threads-1). Returns 0,
 * or non-zero to report a failure (the first one is returned by ag_parallel_for). */
typedef int (*ag_parallel_fn)(void *ctx, size_t begin, size_t end, int tid);

/* Splits [0, count) into contiguous chunks over up to `threads` threads (the calling thread is
 * one of them) and waits for all. Falls back to running serially when a thread cannot be
 * created. Returns the first non-zero result of fn, else 0. */
int ag_parallel_for(int threads, size_t count, ag_parallel_fn fn, void *ctx);

#endif
