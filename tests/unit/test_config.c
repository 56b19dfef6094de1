/* test_config.c - server/config.c: the settings file's values (quoting, comments, a '#' inside
 * a value) and the settings issue 27 added. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/config.h"

/* Loads a settings file holding `text` (and nothing from the environment); the result of
 * srv_config_load. */
static int load(const char *text, srv_config *cfg)
{
    char path[] = "/tmp/lunaserve-test-config-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    unsetenv("LUNASERVE_API_KEY");
    unsetenv("LUNASERVE_CONFIG");
    char *argv[] = {"lunaserve", "--config", path, NULL};
    int rc = srv_config_load(cfg, 3, argv);
    unlink(path);
    return rc;
}

/* Issue 27: "api-key = abc#def" silently became the key "abc". Quoted, '#' is the value's; a
 * comment needs a blank before it; an unquoted '#' right after other characters is an error. */
Test(config, hash_inside_a_value)
{
    srv_config c;
    cr_assert_eq(load("api-key = abc#def\n", &c), -1, "an unquoted # inside a value is refused");
    cr_assert_eq(load("api-key = \"abc#def\"\n", &c), 0);
    cr_assert_eq(c.n_api_keys, 1);
    cr_expect_str_eq(c.api_keys[0], "abc#def");
    cr_assert_eq(load("api-key = \"a b#c\"   # the key\nport = 9000 # a comment\n# api-key = x\n", &c), 0);
    cr_expect_str_eq(c.api_keys[0], "a b#c");
    cr_expect_eq(c.port, 9000);
    cr_expect_eq(c.n_api_keys, 1);
    cr_assert_eq(load("generate-model = \"\"\n", &c), 0);
    cr_expect_str_eq(c.generate_model, "", "an empty value, quoted");
    cr_expect_eq(load("api-key = \"abc\n", &c), -1, "no closing quote");
    cr_expect_eq(load("api-key = \"abc\" def\n", &c), -1, "text after the quotes");
    cr_assert_eq(load("max-queue = 7#\n", &c), -1);
    cr_assert_eq(load("max-queue = 7\t#8\n", &c), 0);
    cr_expect_eq(c.max_queue, 7);
}

Test(config, metrics_auth)
{
    srv_config c;
    cr_assert_eq(load("", &c), 0);
    cr_expect_eq(c.metrics_auth, 0, "off by default");
    cr_assert_eq(load("metrics-auth = 1\n", &c), 0);
    cr_expect_eq(c.metrics_auth, 1);
    cr_expect_eq(load("metrics-auth = 2\n", &c), -1);
}

/* Issue 27: the per-address limit was 0 (off); the slow-client bounds and the per-client limits
 * have defaults too; the health listener is off unless asked for, and never on the port. */
Test(config, connection_and_client_limits)
{
    srv_config c;
    cr_assert_eq(load("", &c), 0);
    cr_expect_eq(c.max_connections, 1024);
    cr_expect_eq(c.max_connections_per_ip, 128);
    cr_expect_eq(c.header_timeout, 10);
    cr_expect_eq(c.body_timeout, 30);
    cr_expect_eq(c.body_min_rate, 16384);
    cr_expect_eq(c.health_port, -1);
    cr_expect_eq(c.max_queued_per_key, 32 + 64 / 4, "the batch (32) and a quarter of the queue (64)");
    cr_expect_eq(c.max_requests_per_key, 48 + 64 / 4);
    cr_assert_eq(load("max-batch = 1\nmax-queue = 8\n", &c), 0);
    cr_expect_eq(c.max_queued_per_key, 3);
    cr_expect_eq(c.max_requests_per_key, 5);
    cr_assert_eq(load("max-queued-per-key = 0\n", &c), 0);
    cr_expect_eq(c.max_requests_per_key, 0, "no job limit, no request limit unless set");
    cr_assert_eq(load("max-queued-per-key = 7\nmax-requests-per-key = 9\n", &c), 0);
    cr_expect_eq(c.max_queued_per_key, 7);
    cr_expect_eq(c.max_requests_per_key, 9);
    cr_assert_eq(load("health-port = 0\nbody-min-rate = 1M\nmax-queued-per-key = 0\n", &c), 0);
    cr_expect_eq(c.health_port, 0);
    cr_expect_eq(c.body_min_rate, 1 << 20);
    cr_expect_eq(c.max_queued_per_key, 0);
    cr_expect_eq(load("port = 9000\nhealth-port = 9000\n", &c), -1, "the health port is another port");
    cr_expect_eq(load("header-timeout = 0\n", &c), -1);
    cr_expect_eq(load("health-port = -2\n", &c), -1);
}
