/* Bearer-token checks of altgradd (server/auth.c, compiled in here): the right answers, and a
 * comparison whose time does not depend on how much of a token a guess gets right (issue 8).
 * Timing is the minimum over many rounds, which strips scheduler noise; the bound is loose
 * (25%) because a leaking compare differs by an order of magnitude between a first-byte and a
 * last-byte mismatch. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../server/auth.c"

static const char *const TOKENS[] = {
    "k9Qm2vX7pL4rT8wZ1nB6cY3hJ5dF0gS2aE7uI4oP9qR1tW6yU3iO8pA5sD2fG7hJ4", /* 64 chars */
    "second-token-0123456789",
    "third",
};
enum { N_TOKENS = 3 };

static srv_auth A;

static void setup(void)
{
    char path[] = "/tmp/altgrad-auth-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# comment\n\n");
    for (int i = 0; i < N_TOKENS; i++) fprintf(f, "  %s \n", TOKENS[i]);
    fclose(f);
    char msg[256];
    ck_assert_msg(srv_auth_load(&A, path, msg, sizeof msg) == 0, "%s", msg);
    unlink(path);
}

static void teardown(void)
{
    srv_auth_free(&A);
}

static int check(const char *token)
{
    char h[1200];
    snprintf(h, sizeof h, "Bearer %s", token);
    return srv_auth_check(&A, h);
}

START_TEST(test_answers)
{
    ck_assert_int_eq(A.count, N_TOKENS);
    for (int i = 0; i < N_TOKENS; i++) ck_assert_int_eq(check(TOKENS[i]), i);
    ck_assert_int_eq(srv_auth_check(&A, "bearer\tthird  "), 2);
    ck_assert_int_eq(srv_auth_check(&A, NULL), -1);
    ck_assert_int_eq(srv_auth_check(&A, "Basic third"), -1);
    ck_assert_int_eq(srv_auth_check(&A, "Bearer"), -1);
    ck_assert_int_eq(srv_auth_check(&A, "Bearerthird"), -1);
    ck_assert_int_eq(check("thir"), -1);
    ck_assert_int_eq(check("thirdd"), -1);
    ck_assert_int_eq(check("THIRD"), -1);
    char long_tok[700];
    memset(long_tok, 'a', sizeof long_tok - 1);
    long_tok[sizeof long_tok - 1] = 0;
    ck_assert_int_eq(check(long_tok), -1);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Minimum over rounds of the time of reps checks of header h. */
static double time_check(const char *h, int rounds, int reps)
{
    double best = 1e9;
    volatile int sink = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++) sink += srv_auth_check(&A, h);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    (void)sink;
    return best;
}

START_TEST(test_constant_time)
{
    const char *t = TOKENS[0];
    size_t n = strlen(t);
    char right[80], first[80], middle[80], last[80];
    snprintf(right, sizeof right, "Bearer %s", t);
    memcpy(first, right, sizeof right);
    memcpy(middle, right, sizeof right);
    memcpy(last, right, sizeof right);
    first[7] ^= 1;              /* wrong from the first byte */
    middle[7 + n / 2] ^= 1;     /* right for half of it */
    last[7 + n - 1] ^= 1;       /* right but for the last byte */
    const char *hs[] = {right, first, middle, last};
    const char *names[] = {"right", "first byte wrong", "middle byte wrong", "last byte wrong"};
    /* A machine shared with other jobs can slow one case by accident: a real dependence on the
     * guess shows in every attempt, noise rarely in three in a row. */
    double ratio = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        double tm[4];
        /* Interleaved passes, so that a slow spell of the machine hits every case alike. */
        for (int k = 0; k < 4; k++) tm[k] = 1e9;
        for (int pass = 0; pass < 5; pass++)
            for (int k = 0; k < 4; k++) {
                double v = time_check(hs[k], 40, 200);
                if (v < tm[k]) tm[k] = v;
            }
        double lo = tm[0], hi = tm[0];
        for (int k = 0; k < 4; k++) {
            printf("auth check, %-18s %.1f ns\n", names[k], tm[k] / 200 * 1e9);
            if (tm[k] < lo) lo = tm[k];
            if (tm[k] > hi) hi = tm[k];
        }
        ratio = hi / lo;
        if (ratio < 1.25) break;
    }
    ck_assert_msg(ratio < 1.25, "token check time depends on the guess: %.2fx", ratio);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("auth");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_answers);
    tcase_add_test(tc, test_constant_time);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
