#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "jobs.h"

srv_blob *srv_blob_new(char *data, size_t len)
{
    srv_blob *b = malloc(sizeof *b);
    if (!b) {
        free(data);
        return NULL;
    }
    b->refs = 1;
    b->len = len;
    b->data = data;
    return b;
}

void srv_blob_ref(srv_blob *b)
{
    b->refs++;
}

void srv_blob_unref(srv_blob *b)
{
    if (!b || --b->refs > 0) return;
    free(b->data);
    free(b);
}

int srv_job_table_init(srv_job_table *t, size_t nbuckets, srv_budget *budget)
{
    memset(t, 0, sizeof *t);
    t->buckets = calloc(nbuckets, sizeof *t->buckets);
    if (!t->buckets) return -1;
    t->nbuckets = nbuckets;
    t->budget = budget;
    return 0;
}

static size_t hash_id(const char *id, size_t nbuckets)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *id; id++) h = (h ^ (unsigned char)*id) * 1099511628211ULL;
    return (size_t)(h % nbuckets);
}

srv_job *srv_job_new(srv_job_table *t)
{
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->owner = -1;
    j->method_kind = -1;
    atomic_init(&j->state, SRV_JOB_QUEUED);
    atomic_init(&j->cancel, 0);
    atomic_init(&j->cancel_why, SRV_CANCEL_NONE);
    atomic_init(&j->progress_ppm, 0);
    j->all_next = t->all;
    if (t->all) t->all->all_prev = j;
    t->all = j;
    t->live++;
    return j;
}

int srv_job_register(srv_job_table *t, srv_job *j, const char *node_id)
{
    unsigned char rnd[16];
    size_t got = 0;
    while (got < sizeof rnd) {
        ssize_t n = getrandom(rnd + got, sizeof rnd - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        got += (size_t)n;
    }
    char hex[33];
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    if (node_id && *node_id) snprintf(j->id, sizeof j->id, "%s-%s", node_id, hex);
    else snprintf(j->id, sizeof j->id, "%s", hex);
    size_t b = hash_id(j->id, t->nbuckets);
    j->hash_next = t->buckets[b];
    t->buckets[b] = j;
    j->async = 1;
    t->count++;
    return 0;
}

srv_job *srv_job_find(const srv_job_table *t, const char *id)
{
    for (srv_job *j = t->buckets[hash_id(id, t->nbuckets)]; j; j = j->hash_next)
        if (strcmp(j->id, id) == 0) return j;
    return NULL;
}

void srv_job_destroy(srv_job_table *t, srv_job *j)
{
    if (j->async && j->id[0]) {
        srv_job **pp = &t->buckets[hash_id(j->id, t->nbuckets)];
        while (*pp && *pp != j) pp = &(*pp)->hash_next;
        if (*pp) {
            *pp = j->hash_next;
            t->count--;
        }
    }
    if (j->all_prev) j->all_prev->all_next = j->all_next;
    else t->all = j->all_next;
    if (j->all_next) j->all_next->all_prev = j->all_prev;
    t->live--;
    free(j->body);
    srv_budget_release(t->budget, &j->body_charge);
    free(j->out);
    srv_blob_unref(j->result);
    srv_budget_release(t->budget, &j->result_charge);
    free(j);
}

void srv_job_table_free(srv_job_table *t)
{
    while (t->all) srv_job_destroy(t, t->all);
    free(t->buckets);
    memset(t, 0, sizeof *t);
}

void srv_job_url(const srv_job *j, const char *tail, char *out, size_t cap)
{
    snprintf(out, cap, "/v1/jobs/%s%s", j->id, tail);
}

const char *srv_job_state_name(srv_job_state s)
{
    switch (s) {
    case SRV_JOB_QUEUED: return "queued";
    case SRV_JOB_RUNNING: return "running";
    case SRV_JOB_DONE: return "done";
    case SRV_JOB_FAILED: return "failed";
    case SRV_JOB_CANCELLED: return "cancelled";
    }
    return "unknown";
}

int srv_job_state_terminal(srv_job_state s)
{
    return s == SRV_JOB_DONE || s == SRV_JOB_FAILED || s == SRV_JOB_CANCELLED;
}
