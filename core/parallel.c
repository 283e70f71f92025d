#include <pthread.h>
#include <stdlib.h>

#include "parallel.h"

typedef struct {
    ag_parallel_fn fn;
    void *ctx;
    size_t begin, end;
    int tid;
    int result;
} parallel_slice;

static void *run_slice(void *arg)
{
    parallel_slice *s = arg;
    s->result = s->fn(s->ctx, s->begin, s->end, s->tid);
    return NULL;
}

int ag_parallel_for(int threads, size_t count, ag_parallel_fn fn, void *ctx)
{
    if (count == 0) return 0;
    if (threads < 1) threads = 1;
    if ((size_t)threads > count) threads = (int)count;
    if (threads == 1) return fn(ctx, 0, count, 0);

    enum { MAX_THREADS = 256 };
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    parallel_slice slices[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        slices[t] = (parallel_slice){fn, ctx, count * (size_t)t / (size_t)threads,
                                     count * (size_t)(t + 1) / (size_t)threads, t, 0};
    }
    /* Slice 0 runs on the calling thread; a slice whose thread could not start runs here too. */
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, run_slice, &slices[t]) == 0;
    run_slice(&slices[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else run_slice(&slices[t]);
    }
    for (int t = 0; t < threads; t++)
        if (slices[t].result) return slices[t].result;
    return 0;
}
