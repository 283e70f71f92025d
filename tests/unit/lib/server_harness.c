#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../../core/altgrad.h"
#include "../../../proto/proto.h"
#include "server_harness.h"

double srvh_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void srvh_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- the server process ---------------------------------------------------------------- */

int srvh_start(srvh_server *s, const char *const *args)
{
    memset(s, 0, sizeof *s);
    const char *bin = getenv("ALTGRAD_SERVER");
    if (!bin || !*bin) bin = "build/altgradd";
    snprintf(s->dir, sizeof s->dir, "/tmp/altgrad-srvh-XXXXXX");
    if (!mkdtemp(s->dir)) return -1;
    char portfile[192];
    snprintf(portfile, sizeof portfile, "%s/port", s->dir);
    snprintf(s->log, sizeof s->log, "%s/server.log", s->dir);

    const char *argv[64];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--listen";
    argv[argc++] = "127.0.0.1:0";
    argv[argc++] = "--port-file";
    argv[argc++] = portfile;
    argv[argc++] = "--calibrate";
    argv[argc++] = "0";
    for (int i = 0; args && args[i] && argc < 62; i++) argv[argc++] = args[i];
    argv[argc] = NULL;

    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            dup2(fd, STDOUT_FILENO);
            close(fd);
        }
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    double t0 = srvh_now();
    while (srvh_now() - t0 < 20) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            int port = 0;
            int ok = fscanf(f, "%d", &port) == 1;
            fclose(f);
            if (ok && port > 0) {
                s->port = port;
                snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", port);
                return 0;
            }
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            srvh_dump_log(s);
            return -1;
        }
        srvh_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s->pid = 0;
    return -1;
}

static void remove_dir(const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, "%s/port", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/server.log", dir);
    unlink(p);
    rmdir(dir);
}

int srvh_stop(srvh_server *s, int sig, double timeout_s)
{
    int result = -1;
    if (s->pid > 0) {
        kill(s->pid, sig);
        double t0 = srvh_now();
        int st = 0;
        pid_t got = 0;
        while ((got = waitpid(s->pid, &st, WNOHANG)) == 0 && srvh_now() - t0 < timeout_s)
            srvh_sleep_ms(10);
        if (got == s->pid) {
            result = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        } else {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
        }
        s->pid = 0;
    }
    if (result != 0) srvh_dump_log(s);
    if (s->dir[0]) remove_dir(s->dir);
    s->dir[0] = 0;
    return result;
}

void srvh_dump_log(const srvh_server *s)
{
    FILE *f = fopen(s->log, "r");
    if (!f) return;
    static char lines[40][512];
    int n = 0;
    while (fgets(lines[n % 40], sizeof lines[0], f)) n++;
    fclose(f);
    fprintf(stderr, "---- last lines of %s ----\n", s->log);
    for (int i = n > 40 ? n - 40 : 0; i < n; i++) fputs(lines[i % 40], stderr);
}

int srvh_log_count(const srvh_server *s, const char *needle)
{
    FILE *f = fopen(s->log, "r");
    if (!f) return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle)) n++;
    fclose(f);
    return n;
}

/* ---- libcurl --------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} growbuf;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    growbuf *g = ud;
    size_t n = size * nmemb;
    if (g->len + n + 1 > g->cap) {
        size_t cap = (g->len + n + 1) * 2;
        char *np = realloc(g->p, cap);
        if (!np) return 0;
        g->p = np;
        g->cap = cap;
    }
    memcpy(g->p + g->len, ptr, n);
    g->len += n;
    g->p[g->len] = 0;
    return n;
}

int srvh_request_url(const char *url, const char *cafile, const char *method,
                     const char *const *headers, const char *body, size_t len, srvh_resp *out)
{
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    if (!c) return -1;
    growbuf b = {0}, h = {0};
    struct curl_slist *hl = NULL;
    for (int i = 0; headers && headers[i]; i++) hl = curl_slist_append(hl, headers[i]);
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    if (cafile) curl_easy_setopt(c, CURLOPT_CAINFO, cafile);
    double t0 = srvh_now();
    CURLcode rc = curl_easy_perform(c);
    out->seconds = srvh_now() - t0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    out->body = b.p ? b.p : calloc(1, 1);
    out->len = b.len;
    out->headers = h.p ? h.p : calloc(1, 1);
    return rc == CURLE_OK ? 0 : -1;
}

int srvh_request(const srvh_server *s, const char *method, const char *path,
                 const char *const *headers, const char *body, size_t len, srvh_resp *out)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", s->base, path);
    return srvh_request_url(url, NULL, method, headers, body, len, out);
}

void srvh_resp_free(srvh_resp *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof *r);
}

int srvh_resp_header(const srvh_resp *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *line = r->headers; line && *line;) {
        const char *end = strstr(line, "\r\n");
        size_t ll = end ? (size_t)(end - line) : strlen(line);
        if (ll > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ') v++;
            size_t vl = ll - (size_t)(v - line);
            if (vl >= cap) vl = cap - 1;
            memcpy(out, v, vl);
            out[vl] = 0;
            return 0;
        }
        if (!end) break;
        line = end + 2;
    }
    return -1;
}

int srvh_post_json(const srvh_server *s, const char *path, const char *body, srvh_resp *out)
{
    const char *h[] = {"Content-Type: application/json", NULL};
    return srvh_request(s, "POST", path, h, body, strlen(body), out);
}

int srvh_error_of(const srvh_resp *r, char *code, size_t code_cap, char *field,
                  size_t field_cap)
{
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, 0, &je);
    if (!j) return -1;
    json_t *e = json_object_get(j, "error");
    const char *c = json_string_value(json_object_get(e, "code"));
    const char *f = json_string_value(json_object_get(e, "field"));
    const char *m = json_string_value(json_object_get(e, "message"));
    int ok = c && f && m && json_object_size(j) == 1;
    if (ok) {
        snprintf(code, code_cap, "%s", c);
        snprintf(field, field_cap, "%s", f);
    }
    json_decref(j);
    return ok ? 0 : -1;
}

/* ---- raw sockets ----------------------------------------------------------------------- */

int srvh_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int srvh_send_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

size_t srvh_read_all(int fd, char *buf, size_t cap, double timeout_s)
{
    size_t got = 0;
    double t0 = srvh_now();
    while (got + 1 < cap) {
        double left = timeout_s - (srvh_now() - t0);
        if (left <= 0) break;
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, (int)(left * 1000) + 1);
        if (pr <= 0) break;
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    buf[got] = 0;
    return got;
}

int srvh_read_response(int fd, char *buf, size_t cap, double timeout_s)
{
    size_t got = 0;
    double t0 = srvh_now();
    for (;;) {
        buf[got] = 0;
        char *hend = strstr(buf, "\r\n\r\n");
        if (hend) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            size_t body = cl && cl < hend ? (size_t)strtoul(cl + 17, NULL, 10) : 0;
            if (got >= (size_t)(hend + 4 - buf) + body) break;
        }
        double left = timeout_s - (srvh_now() - t0);
        if (left <= 0 || got + 1 >= cap) return -1;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) return -1;
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return -1;
    return status;
}

/* ---- requests -------------------------------------------------------------------------- */

srvh_model srvh_small_model(void)
{
    srvh_model m = {.d_model = 8, .n_heads = 2, .n_layers = 1, .d_ff = 16, .causal = 1,
                    .layernorm = 1, .gelu = 1, .residual = 1, .batch = 0, .n = 8, .b64 = 0,
                    .loss = "mse", .method = "{\"name\":\"exact\"}", .extra = NULL, .seed = 1};
    return m;
}

srvh_model srvh_slow_model(void)
{
    srvh_model m = srvh_small_model();
    m.d_model = 64;
    m.n_heads = 4;
    m.n_layers = 2;
    m.d_ff = 0;
    m.n = 4096; /* about a second of exact attention on 2 cores with AVX-512 BLAS kernels */
    m.batch = 4;
    m.b64 = 1;
    m.causal = 0;
    return m;
}

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} sb;

static void sb_put(sb *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(sb *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static uint32_t rng_next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Uniform in [-scale, scale]. */
static float rng_float(uint32_t *s, float scale)
{
    return scale * ((float)(rng_next(s) >> 8) / 8388608.0f - 1.0f);
}

static void put_tensor(sb *b, const size_t *dims, int nd, uint32_t *rng, float scale, float offset,
                       int b64)
{
    size_t count = 1;
    char tmp[64];
    sb_str(b, "{\"shape\":[");
    for (int i = 0; i < nd; i++) {
        snprintf(tmp, sizeof tmp, "%s%zu", i ? "," : "", dims[i]);
        sb_str(b, tmp);
        count *= dims[i];
    }
    sb_str(b, "],\"dtype\":\"float32\",");
    float *v = malloc(count * sizeof *v);
    if (!v) {
        b->failed = 1;
        return;
    }
    for (size_t i = 0; i < count; i++) v[i] = offset + rng_float(rng, scale);
    if (b64) {
        size_t el = ag_b64_encoded_len(count * sizeof(float));
        char *enc = malloc(el + 1);
        if (!enc) {
            free(v);
            b->failed = 1;
            return;
        }
        ag_b64_encode((const uint8_t *)v, count * sizeof(float), enc);
        sb_str(b, "\"b64\":\"");
        sb_put(b, enc, el);
        sb_str(b, "\"}");
        free(enc);
    } else {
        sb_str(b, "\"data\":[");
        for (size_t i = 0; i < count; i++) {
            snprintf(tmp, sizeof tmp, "%s%.9g", i ? "," : "", (double)v[i]);
            sb_str(b, tmp);
        }
        sb_str(b, "]}");
    }
    free(v);
}

char *srvh_make_request(const srvh_model *m, size_t *len)
{
    sb b = {0};
    char tmp[512];
    uint32_t rng = m->seed ? m->seed * 2654435761u : 12345u;
    snprintf(tmp, sizeof tmp,
             "{\"model\":{\"d_model\":%d,\"n_heads\":%d,\"n_layers\":%d,\"d_ff\":%d,"
             "\"causal\":%s,\"norm\":\"%s\",\"activation\":\"%s\",\"residual\":%s},"
             "\"layers\":[",
             m->d_model, m->n_heads, m->n_layers, m->d_ff, m->causal ? "true" : "false",
             m->layernorm ? "layernorm" : "none", m->gelu ? "gelu" : "relu",
             m->residual ? "true" : "false");
    sb_str(&b, tmp);
    ag_model_config cfg = {.d_model = m->d_model, .n_heads = m->n_heads,
                           .n_layers = m->n_layers, .d_ff = m->d_ff, .causal = m->causal,
                           .norm = m->layernorm ? AG_NORM_LAYERNORM : AG_NORM_NONE,
                           .activation = m->gelu ? AG_ACT_GELU : AG_ACT_RELU,
                           .residual = m->residual};
    float wscale = 1.0f / (float)m->d_model;
    for (int l = 0; l < m->n_layers; l++) {
        sb_str(&b, l ? ",{" : "{");
        int first = 1;
        for (int p = 0; p < AG_P_COUNT; p++) {
            size_t shape[2];
            int nd = ag_param_shape(&cfg, p, shape);
            if (!nd) continue;
            snprintf(tmp, sizeof tmp, "%s\"%s\":", first ? "" : ",", ag_param_name(p));
            sb_str(&b, tmp);
            first = 0;
            int gamma = p == AG_P_LN1_GAMMA || p == AG_P_LN2_GAMMA;
            put_tensor(&b, shape, nd, &rng, gamma ? 0.1f : 2.0f * wscale, gamma ? 1.0f : 0.0f,
                       m->b64);
        }
        sb_str(&b, "}");
    }
    sb_str(&b, "],\"input\":");
    size_t dims[3];
    int nd = 0;
    if (m->batch > 0) dims[nd++] = (size_t)m->batch;
    dims[nd++] = (size_t)m->n;
    dims[nd++] = (size_t)m->d_model;
    put_tensor(&b, dims, nd, &rng, 1.0f, 0.0f, m->b64);
    if (strcmp(m->loss, "mse") == 0) {
        sb_str(&b, ",\"loss\":{\"type\":\"mse\",\"target\":");
        put_tensor(&b, dims, nd, &rng, 1.0f, 0.0f, m->b64);
        sb_str(&b, "}");
    } else if (strcmp(m->loss, "grad_output") == 0) {
        sb_str(&b, ",\"loss\":{\"type\":\"grad_output\",\"grad\":");
        put_tensor(&b, dims, nd, &rng, 1.0f, 0.0f, m->b64);
        sb_str(&b, "}");
    } else {
        sb_str(&b, ",\"loss\":{\"type\":\"sum\"}");
    }
    if (m->method) {
        sb_str(&b, ",\"method\":");
        sb_str(&b, m->method);
    }
    if (m->extra) {
        sb_str(&b, ",");
        sb_str(&b, m->extra);
    }
    sb_str(&b, "}");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
