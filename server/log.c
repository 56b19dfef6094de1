/* log.c - structured logs: one JSON object per line on stderr. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "server/server.h"

static srv_log_level min_level = LOG_INFO;
static const char *const NAMES[] = {"debug", "info", "warn", "error"};

void srv_log_init(const char *level)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(level, NAMES[i])) min_level = (srv_log_level)i;
}

const char *srv_json_esc(const char *s, char *buf, size_t n)
{
    size_t j = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && j + 7 < n; p++) {
        if (*p == '"' || *p == '\\') buf[j++] = '\\', buf[j++] = (char)*p;
        else if (*p < 0x20) j += (size_t)snprintf(buf + j, n - j, "\\u%04x", *p);
        else buf[j++] = (char)*p;
    }
    buf[j] = 0;
    return buf;
}

void srv_log(srv_log_level lvl, const char *msg, const char *fields_fmt, ...)
{
    if (lvl < min_level) return;
    char fields[2048] = "", line[4096], esc[512];
    if (fields_fmt) {
        va_list ap;
        va_start(ap, fields_fmt);
        vsnprintf(fields, sizeof fields, fields_fmt, ap);
        va_end(ap);
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    int n = snprintf(line, sizeof line, "{\"time\":\"%s.%03dZ\",\"level\":\"%s\",\"msg\":\"%s\"%s%s}\n", ts,
                     (int)(tv.tv_usec / 1000), NAMES[lvl], srv_json_esc(msg, esc, sizeof esc),
                     fields[0] ? "," : "", fields);
    if (n > 0) fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, stderr);
}
