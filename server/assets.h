/* assets.h - the playground's files (web/), compiled into lunaserve by tools/embed.sh, so that
 * GET / works offline from the binary alone. srv_assets ends with an entry whose path is NULL.
 * Read-only data: any thread may read it. */
#ifndef SRV_ASSETS_H
#define SRV_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *path;          /* "/" for index.html, else "/<file name>" */
    const char *content_type;
    const unsigned char *data; /* (len) bytes, plus a NUL after them */
    size_t len;
} srv_asset;

extern const srv_asset srv_assets[];

#endif
