/* altgrad core: the public API of the gradient engine.
 *
 * Conventions (see docs/api.md): row vectors, y = x @ W + b with W [d_in, d_out], row-major
 * float32 everywhere. A batch is [b, n, d_model]; each sequence runs independently and the
 * weight gradients are summed over the batch.
 *
 * Ownership: the caller owns every input; ag_gradients() fills an ag_result whose buffers are
 * owned by the result and released by ag_result_free(). No globals: every function is
 * re-entrant, and concurrent calls on different results never share state.
 */
#ifndef ALTGRAD_CORE_H
#define ALTGRAD_CORE_H

#include <stdatomic.h>
#include <stddef.h>

#define AG_MAX_DEGREE 20
#define AG_DEFAULT_EPSILON 1e-3
#define AG_DEFAULT_RANK_CEILING 20000

/* ---- errors ---------------------------------------------------------------------------- */

typedef enum {
    AG_OK = 0,
    AG_ERR_INVALID,     /* bad argument: shapes, config, values */
    AG_ERR_NOMEM,       /* an allocation failed */
    AG_ERR_CANCELLED,   /* the cancel flag was raised */
    AG_ERR_UNREACHABLE, /* method "approx" cannot meet the requested epsilon */
    AG_ERR_LIMIT        /* the job exceeds a configured limit (rank ceiling, memory) */
} ag_status;

typedef struct {
    ag_status status;
    char field[96];    /* which input is at fault, e.g. "layers[1].wq" or "" */
    char message[256]; /* human-readable reason */
} ag_error;

/* Fills err (may be NULL) and returns status. printf-style message. */
ag_status ag_error_set(ag_error *err, ag_status status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Name of a status ("ok", "invalid", ...); never NULL. */
const char *ag_status_name(ag_status status);

/* ---- model ----------------------------------------------------------------------------- */

typedef enum { AG_NORM_NONE = 0, AG_NORM_LAYERNORM } ag_norm;
typedef enum { AG_ACT_GELU = 0, AG_ACT_RELU } ag_activation;

typedef struct {
    int d_model;  /* width of the residual stream, >= 1 */
    int n_heads;  /* d_model % n_heads == 0 */
    int n_layers; /* >= 1 */
    int d_ff;     /* MLP hidden width; 0 = no MLP sub-block */
    int causal;   /* lower-triangular mask */
    ag_norm norm;
    ag_activation activation;
    int residual;
} ag_model_config;

/* Returns AG_OK or AG_ERR_INVALID naming the offending field ("model.n_heads", ...). */
ag_status ag_model_config_check(const ag_model_config *cfg, ag_error *err);

/* The per-layer parameters of docs/api.md. Absent ones (not used by the config) are NULL. */
enum {
    AG_P_WQ = 0, AG_P_WK, AG_P_WV, AG_P_WO,
    AG_P_LN1_GAMMA, AG_P_LN1_BETA, AG_P_LN2_GAMMA, AG_P_LN2_BETA,
    AG_P_W1, AG_P_B1, AG_P_W2, AG_P_B2,
    AG_P_COUNT
};

typedef struct {
    float *p[AG_P_COUNT]; /* indexed by AG_P_*; NULL when absent */
    void *block;          /* owning allocation when made by ag_layer_params_alloc, else NULL */
} ag_layer_params;

/* Wire name of parameter idx ("wq", "ln1_gamma", ...). */
const char *ag_param_name(int idx);
/* Index of a wire name, or -1. */
int ag_param_index(const char *name);
/* Shape of parameter idx under cfg: returns its ndim (1 or 2) and fills shape[0..ndim-1], or 0
 * when the config does not use the parameter. */
int ag_param_shape(const ag_model_config *cfg, int idx, size_t shape[2]);
/* Element count of parameter idx under cfg (0 when absent). */
size_t ag_param_numel(const ag_model_config *cfg, int idx);

/* Allocates every parameter the config uses in one zeroed block. AG_ERR_NOMEM on failure
 * (params left empty). Free with ag_layer_params_free. */
ag_status ag_layer_params_alloc(const ag_model_config *cfg, ag_layer_params *params, ag_error *err);
/* Frees a block made by ag_layer_params_alloc; NULL-safe; leaves params empty. */
void ag_layer_params_free(ag_layer_params *params);

/* ---- loss ------------------------------------------------------------------------------ */

typedef enum { AG_LOSS_MSE = 0, AG_LOSS_SUM, AG_LOSS_GRAD_OUTPUT } ag_loss_kind;

typedef struct {
    ag_loss_kind kind;
    const float *tensor; /* mse: the target; grad_output: dL/dy; sum: NULL. [b, n, d_model] */
} ag_loss;

/* ---- method ---------------------------------------------------------------------------- */

typedef enum { AG_METHOD_EXACT = 0, AG_METHOD_APPROX, AG_METHOD_AUTO } ag_method_kind;
typedef enum { AG_ROUTE_FEATURES = 0, AG_ROUTE_PAPER } ag_route;
typedef enum { AG_POLY_CHEBYSHEV = 0, AG_POLY_TAYLOR } ag_poly;

typedef struct {
    ag_method_kind kind;
    double epsilon; /* target relative error of the attention matrix, in (0, 1) */
    int degree;     /* fixed degree 1..AG_MAX_DEGREE; 0 = choose from epsilon */
    ag_route route;
    ag_poly poly;
} ag_method;

/* exact: "exact"; approx/auto: epsilon AG_DEFAULT_EPSILON, features route, Chebyshev. */
ag_method ag_method_default(ag_method_kind kind);
/* The method contract (core/method.c), run by every layer that accepts a method: kind, route
 * and poly known; for approx/auto a degree from ag_method_degree_check, or degree 0 and epsilon
 * in (0, 1). AG_OK or AG_ERR_INVALID with err->field the wire path ("method.epsilon") and the
 * message starting with it. The wire's "epsilon or degree, not both" is a rule of the JSON
 * (the struct holds both; degree > 0 wins), checked where the JSON is read. */
ag_status ag_method_check(const ag_method *m, ag_error *err);
/* A fixed degree as a caller gave it (the wire's "degree", the CLI's --degree): AG_OK for
 * 1..AG_MAX_DEGREE, else AG_ERR_INVALID at "method.degree". */
ag_status ag_method_degree_check(long long degree, ag_error *err);
const char *ag_method_name(ag_method_kind kind);
const char *ag_route_name(ag_route route);
const char *ag_poly_name(ag_poly poly);

/* Measured speed constants for the auto cost model (seconds per unit of work). */
typedef struct {
    double exact_s_per_flop;  /* blocked exact attention, forward + backward */
    double approx_s_per_flop; /* low-rank attention, forward + backward */
} ag_cost_model;

/* Conservative defaults (measured on the 2-core development machine). */
ag_cost_model ag_cost_model_default(void);
/* Times small exact and approximate attention kernels on this machine (~0.2 s, single
 * thread) and fills model. AG_ERR_NOMEM on allocation failure (model keeps defaults). */
ag_status ag_cost_model_calibrate(ag_cost_model *model, ag_error *err);

/* What was done for one (layer, head); the method block of the response. */
typedef struct {
    ag_method_kind method; /* AG_METHOD_EXACT or AG_METHOD_APPROX, never AUTO */
    ag_route route;
    ag_poly poly;
    int degree;         /* 0 for exact */
    size_t rank;        /* C(d_head + degree, degree); 0 for exact */
    double bound;       /* R: max |c q_i . k_j| bound after centring the keys */
    double error_bound; /* a-priori relative error bound of the attention matrix; 0 for exact */
    const char *reason; /* static string: why this method was chosen */
} ag_head_report;

/* ---- running --------------------------------------------------------------------------- */

typedef struct {
    int threads;                    /* worker threads for this job, >= 1 (0 means 1) */
    const atomic_int *cancel;       /* checked between blocks; non-zero stops with CANCELLED */
    void (*progress)(void *ctx, double fraction); /* called from the calling thread, 0..1 */
    void *progress_ctx;
    const ag_cost_model *cost;      /* NULL = ag_cost_model_default() */
    size_t rank_ceiling;            /* 0 = AG_DEFAULT_RANK_CEILING */
    int want_output;                /* also return the model output y */
} ag_run_opts;

typedef struct {
    int has_loss;              /* 0 for grad_output */
    double loss;
    size_t batch, n, d_model;  /* shape of output / grad_input */
    float *output;             /* [batch, n, d_model] when opts.want_output, else NULL */
    float *grad_input;         /* [batch, n, d_model] */
    int n_layers, n_heads;
    ag_layer_params *grad_layers; /* [n_layers], same parameters as the config uses */
    ag_head_report *heads;     /* [n_layers * n_heads], layer-major */
} ag_result;

/* Loss, gradients of every weight and of the input for input [batch, n, d_model].
 * layers: [cfg->n_layers]; loss->tensor (when needed) has the input's shape. On failure
 * returns the status, fills err, and leaves res empty (nothing to free). */
ag_status ag_gradients(const ag_model_config *cfg, const ag_layer_params *layers,
                       const float *input, size_t batch, size_t n, const ag_loss *loss,
                       const ag_method *method, const ag_run_opts *opts, ag_result *res,
                       ag_error *err);

/* Frees everything a result owns; NULL-safe; leaves res zeroed. */
void ag_result_free(ag_result *res);

/* Upper estimate of the peak bytes ag_gradients allocates for this job (the server checks it
 * against its memory limit before running). Returns SIZE_MAX on overflow. */
size_t ag_gradients_workspace_bytes(const ag_model_config *cfg, size_t batch, size_t n,
                                    const ag_method *method);

/* Relative Frobenius error |a - b| / max(|b|, tiny) of two arrays of count floats. */
double ag_rel_error(const float *a, const float *b, size_t count);

#endif
