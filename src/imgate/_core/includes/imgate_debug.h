/* Debug checks compiled in only when IMGATE_DEBUG=1 (setup.py); release builds pay nothing. */
#ifndef IMGATE_DEBUG_H
#define IMGATE_DEBUG_H

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef IMGATE_DEBUG
#define IMGATE_DEBUG 0
#endif

#if IMGATE_DEBUG
#define IMGATE_ASSERT(cond)                                                        \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "imgate assertion failed: %s at %s:%d\n", #cond,       \
                    __FILE__, __LINE__);                                           \
            abort();                                                               \
        }                                                                          \
    } while (0)
#else
#define IMGATE_ASSERT(cond) ((void)0)
#endif

#endif
