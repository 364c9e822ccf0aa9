/* backend.c: what every backend shares: destruction through its table. The
 * backends themselves live in lib/cpu/ and cuda/. */
#include "backend.h"

#include <stddef.h>

void qn_backend_destroy(qn_backend **be)
{
    if (!be || !*be) return;
    (*be)->iface->destroy(*be);
    *be = NULL;
}
