/* Preloaded ahead of libfaketime: CLOCK_MONOTONIC sleeps go straight to the kernel.
 *
 * libfaketime 0.9.10 (Debian 12) shifts absolute CLOCK_MONOTONIC deadlines by the fake offset
 * even under FAKETIME_DONT_FAKE_MONOTONIC (upstream issue wolfcw/libfaketime#426), and Python
 * 3.11's time.sleep() sleeps exactly that way, so every time.sleep() in a faked process fails
 * with EINVAL. The monotonic clock is left real on purpose, so its sleeps need no translation;
 * every other clock still goes through libfaketime.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req, struct timespec *rem)
{
    static clock_nanosleep_fn next;
    if (clock == CLOCK_MONOTONIC)
        return syscall(SYS_clock_nanosleep, clock, flags, req, rem) == 0 ? 0 : errno;
    if (next == NULL)
        next = (clock_nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock, flags, req, rem);
}
