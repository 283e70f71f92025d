/* OpenBLAS set-up that must happen before the library's first use. */
#ifndef ALTGRAD_SERVER_BLAS_H
#define ALTGRAD_SERVER_BLAS_H

/* Makes sure OpenBLAS runs one thread per caller and a kernel family the CPU supports: when
 * OPENBLAS_NUM_THREADS is unset, or when OpenBLAS mis-detected an AVX2/AVX-512 CPU as the SSE3
 * "Prescott" family and OPENBLAS_CORETYPE is unset, sets them and re-executes the program once
 * (OpenBLAS reads both only when it loads). Returns only when no re-exec happened or it failed
 * (then the process carries on as it is). */
void srv_blas_setup(char **argv);

#endif
