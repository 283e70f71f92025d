/* Local files of the CLI: request bodies in, response bodies out ("-" is stdin / stdout). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"


char *cli_read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "altgrad: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    const size_t max = (size_t)8 << 30; /* larger than any body a server accepts */
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= max) {
                fprintf(stderr, "altgrad: %s: larger than 8 GiB\n", path);
                free(buf);
                buf = NULL;
                break;
            }
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                fprintf(stderr, "altgrad: %s: read error\n", path);
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (!buf) fprintf(stderr, "altgrad: %s: could not read\n", path);
    if (f != stdin) fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

int cli_write_file(const char *path, const char *data, size_t len)
{
    int to_stdout = strcmp(path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "altgrad: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int bad = fwrite(data, 1, len, f) != len;
    if (to_stdout && len && data[len - 1] != '\n') bad |= fputc('\n', f) == EOF;
    bad |= to_stdout ? fflush(f) != 0 : fclose(f) != 0;
    if (bad) {
        fprintf(stderr, "altgrad: %s: write failed\n", path);
        return -1;
    }
    return 0;
}
