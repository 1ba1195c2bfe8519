/*
 * troupe-shim: the jail's command, there to measure the program's peak memory.
 *
 * bubblewrap's own process cannot give it: Troupe forks it, so it carries Troupe's resident-set high-water
 * mark (Linux keeps it across fork and exec). This shim, a few hundred KB, runs inside the jail, forks the
 * program, waits for it with wait4 and reports the largest peak among the program (its waited-for children
 * included) and the orphans it reaped.
 *
 *   troupe-shim REPORT_FD PROGRAM [ARG...]
 *
 * It is the jail's pid 1 (bubblewrap --as-pid-1): when it exits, the kernel kills whatever else the program
 * left in the jail, and the program cannot signal it. Once PROGRAM has been reaped it writes "maxrss KB\n"
 * on REPORT_FD and exits with PROGRAM's code, or 128 + the signal that killed PROGRAM. PROGRAM gets no
 * descriptor above 2 (all are closed on its exec). The shim's own failures: a message on stderr, exit 125
 * (127 when PROGRAM cannot be executed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* Marks every descriptor above 2 close-on-exec (close_range, or one by one on kernels before 5.11). */
static void close_on_exec_above_stderr(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0) {
        return;
    }
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 ? max : 1024); fd++) {
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "troupe-shim: usage: troupe-shim REPORT_FD PROGRAM [ARG...]\n");
        return 125;
    }
    char *end = NULL;
    long report = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || report < 3 || report > 65535 ||
        fcntl((int)report, F_GETFD) < 0) {
        fprintf(stderr, "troupe-shim: bad report descriptor '%s'\n", argv[1]);
        return 125;
    }
    close_on_exec_above_stderr();
    pid_t child = fork();
    if (child < 0) {
        fprintf(stderr, "troupe-shim: fork: %s\n", strerror(errno));
        return 125;
    }
    if (child == 0) {
        execv(argv[2], argv + 2);
        fprintf(stderr, "troupe-shim: cannot run %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    /* As init, the shim also inherits the program's orphans: reap them as they end (they would count
     * against RLIMIT_NPROC as zombies) and keep the largest peak among everything reaped. */
    int status = 0;
    long maxrss = 0;
    for (;;) {
        int reaped_status = 0;
        struct rusage usage;
        memset(&usage, 0, sizeof usage);
        pid_t reaped = wait4(-1, &reaped_status, 0, &usage);
        if (reaped < 0) {
            if (errno == EINTR) {
                continue;
            }
            fprintf(stderr, "troupe-shim: wait4: %s\n", strerror(errno));
            return 125;
        }
        if (usage.ru_maxrss > maxrss) {
            maxrss = usage.ru_maxrss;
        }
        if (reaped == child) {
            status = reaped_status;
            break;
        }
    }
    dprintf((int)report, "maxrss %ld\n", maxrss);
    close((int)report);
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status)) {
        /* As the pid namespace's init the shim cannot re-raise the signal on itself (init ignores signals
         * it has no handler for), so it exits as a shell reports a killed command: 128 + signal. */
        return 128 + WTERMSIG(status);
    }
    return 125;
}
