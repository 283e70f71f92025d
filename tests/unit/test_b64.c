/* Base64 (proto/b64.c): RFC 4648 vectors, round trips, and every kind of invalid input. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../proto/proto.h"

static const size_t BAD = (size_t)-1;

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t dec(const char *s, uint8_t *out, size_t cap)
{
    return ag_b64_decode(s, strlen(s), out, cap);
}

START_TEST(test_rfc4648_vectors)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                        "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        size_t n = strlen(plain[i]);
        char out[16] = {0};
        ck_assert_uint_eq(ag_b64_encoded_len(n), strlen(coded[i]));
        ag_b64_encode((const uint8_t *)plain[i], n, out);
        ck_assert_str_eq(out, coded[i]);
        uint8_t back[16];
        memset(back, 0xAA, sizeof back);
        ck_assert_uint_eq(dec(coded[i], back, sizeof back), n);
        ck_assert(memcmp(back, plain[i], n) == 0);
        ck_assert_uint_eq(back[n], 0xAA); /* nothing written past the result */
    }
}
END_TEST

START_TEST(test_alphabet_and_all_bytes)
{
    uint8_t bytes[256];
    for (int i = 0; i < 256; i++) bytes[i] = (uint8_t)i;
    char enc[400];
    size_t len = ag_b64_encoded_len(256);
    ag_b64_encode(bytes, 256, enc);
    for (size_t i = 0; i < len; i++) {
        char c = enc[i];
        ck_assert(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", c));
    }
    uint8_t back[256];
    ck_assert_uint_eq(ag_b64_decode(enc, len, back, sizeof back), 256);
    ck_assert(memcmp(back, bytes, 256) == 0);
    /* The two characters that differ from the URL-safe alphabet. */
    uint8_t ff[3] = {0xFB, 0xEF, 0xBE};
    char e4[5] = {0};
    ag_b64_encode(ff, 3, e4);
    ck_assert_str_eq(e4, "++++");
    uint8_t ff2[3] = {0xFF, 0xFF, 0xFF};
    ag_b64_encode(ff2, 3, e4);
    ck_assert_str_eq(e4, "////");
}
END_TEST

START_TEST(test_round_trip_random_lengths)
{
    uint64_t seed = 0x9E3779B97F4A7C15u;
    uint8_t *in = malloc(5000), *back = malloc(5000 + 8);
    char *enc = malloc(ag_b64_encoded_len(5000));
    for (int iter = 0; iter < 400; iter++) {
        size_t n = iter < 50 ? (size_t)iter : rng_next(&seed) % 5000;
        for (size_t i = 0; i < n; i++) in[i] = (uint8_t)rng_next(&seed);
        size_t len = ag_b64_encoded_len(n);
        ck_assert_uint_eq(len % 4, 0);
        ag_b64_encode(in, n, enc);
        memset(back, 0x5A, n + 8);
        ck_assert_uint_eq(ag_b64_decode(enc, len, back, n), n); /* exact capacity is enough */
        ck_assert(memcmp(back, in, n) == 0);
        for (int k = 0; k < 8; k++) ck_assert_uint_eq(back[n + (size_t)k], 0x5A);
    }
    free(in);
    free(back);
    free(enc);
}
END_TEST

START_TEST(test_invalid_characters)
{
    uint8_t out[64];
    /* Every byte outside the alphabet, at every position of a quantum, is refused. */
    for (int c = 0; c < 256; c++) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '+' || c == '/')
            continue;
        for (int pos = 0; pos < 8; pos++) {
            char s[9] = "QUJDREVG"; /* "ABCDEF" */
            s[pos] = (char)c;
            if (c == '=' && pos >= 6) continue; /* legal padding positions, tested below */
            ck_assert_msg(ag_b64_decode(s, 8, out, sizeof out) == BAD,
                          "byte 0x%02x at %d accepted", c, pos);
        }
    }
    /* URL-safe alphabet and whitespace (MIME line breaks) are not base64 here. */
    ck_assert_uint_eq(dec("Zm9v-_9v", out, sizeof out), BAD);
    ck_assert_uint_eq(dec("Zm9v\nZm9v", out, sizeof out), BAD);
    ck_assert_uint_eq(dec("Zm9v Zm9v", out, sizeof out), BAD);
}
END_TEST

START_TEST(test_bad_padding_and_length)
{
    uint8_t out[64];
    ck_assert_uint_eq(dec("Zg", out, sizeof out), BAD);        /* padding missing */
    ck_assert_uint_eq(dec("Zg=", out, sizeof out), BAD);       /* length 3 */
    ck_assert_uint_eq(dec("Z", out, sizeof out), BAD);
    ck_assert_uint_eq(dec("Zm9vY", out, sizeof out), BAD);     /* length 5 */
    ck_assert_uint_eq(dec("Z===", out, sizeof out), BAD);      /* three pads */
    ck_assert_uint_eq(dec("====", out, sizeof out), BAD);
    ck_assert_uint_eq(dec("Zg==Zm9v", out, sizeof out), BAD);  /* padding in the middle */
    ck_assert_uint_eq(dec("Zm=v", out, sizeof out), BAD);      /* '=' then data */
    ck_assert_uint_eq(dec("Z=g=", out, sizeof out), BAD);
    ck_assert_uint_eq(dec("Zh==", out, sizeof out), BAD);      /* stray bits after 'f' */
    ck_assert_uint_eq(dec("Zm9=", out, sizeof out), BAD);      /* stray bits after "fo" */
    ck_assert_uint_eq(dec("Zg==", out, sizeof out), 1);
    ck_assert_uint_eq(dec("Zm8=", out, sizeof out), 2);
    ck_assert_uint_eq(dec("", out, sizeof out), 0);
}
END_TEST

START_TEST(test_over_capacity)
{
    uint8_t out[8];
    memset(out, 0x77, sizeof out);
    ck_assert_uint_eq(dec("Zm9vYmFy", out, 5), BAD); /* needs 6 */
    ck_assert_uint_eq(dec("Zm9vYmE=", out, 4), BAD); /* needs 5 */
    ck_assert_uint_eq(dec("Zg==", out, 0), BAD);
    for (int i = 0; i < 8; i++) ck_assert_uint_eq(out[i], 0x77); /* refused before writing */
    ck_assert_uint_eq(dec("Zm9vYmE=", out, 5), 5);
}
END_TEST

static Suite *b64_suite(void)
{
    Suite *s = suite_create("b64");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_rfc4648_vectors);
    tcase_add_test(tc, test_alphabet_and_all_bytes);
    tcase_add_test(tc, test_round_trip_random_lengths);
    tcase_add_test(tc, test_invalid_characters);
    tcase_add_test(tc, test_bad_padding_and_length);
    tcase_add_test(tc, test_over_capacity);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(b64_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
