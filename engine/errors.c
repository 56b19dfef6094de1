/* errors.c - names, messages and HTTP statuses of the engine's error codes.
 *
 * All three come from the one table in luna.h (LUNA_ERRNO_MAP), so a new code needs one line
 * there and nothing here. */
#include "engine/luna.h"

const char *luna_strerror(int err)
{
    switch (err) {
#define LUNA_XX_MSG(name, value, msg, http) \
    case LUNA_##name:                       \
        return msg;
        LUNA_ERRNO_MAP(LUNA_XX_MSG)
#undef LUNA_XX_MSG
    }
    return "unknown error";
}

const char *luna_err_name(int err)
{
    switch (err) {
#define LUNA_XX_NAME(name, value, msg, http) \
    case LUNA_##name:                        \
        return "LUNA_" #name;
        LUNA_ERRNO_MAP(LUNA_XX_NAME)
#undef LUNA_XX_NAME
    }
    return "LUNA_EUNKNOWN";
}

int luna_err_http_status(int err)
{
    switch (err) {
#define LUNA_XX_HTTP(name, value, msg, http) \
    case LUNA_##name:                        \
        return http;
        LUNA_ERRNO_MAP(LUNA_XX_HTTP)
#undef LUNA_XX_HTTP
    }
    return 500;
}
