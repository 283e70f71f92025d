#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "log.h"

/* Debian's DYNAMIC_ARCH OpenBLAS 0.3.21 identifies some virtual CPUs (generic "Intel Xeon
 * Processor" CPUID) as Prescott and runs its SSE3 kernels, 3-4x slower than the AVX-512 ones
 * on the same machine. */
static const char *better_coretype(void)
{
    const char *name = openblas_get_corename();
    if (!name || strcmp(name, "Prescott") != 0) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
    if (__builtin_cpu_supports("avx2")) return "Haswell";
    return NULL;
}

void srv_blas_setup(char **argv)
{
    if (getenv("ALTGRAD_BLAS_REEXEC")) return; /* already did it once */
    int reexec = 0;
    if (!getenv("OPENBLAS_NUM_THREADS")) {
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        reexec = 1;
    }
    const char *core = getenv("OPENBLAS_CORETYPE") ? NULL : better_coretype();
    if (core) {
        setenv("OPENBLAS_CORETYPE", core, 1);
        reexec = 1;
    }
    if (!reexec) return;
    setenv("ALTGRAD_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    srv_log("warn", "could not re-execute with OPENBLAS_* set; BLAS keeps its defaults");
}
