/* Benchmark helper (compiled by bench/run; not part of netshape).
 *
 *   probe TARGET ADDR PORT   from its first instruction, sends one UDP packet to ADDR:PORT every
 *                            100 us for 10 ms, and watches /proc/self/cgroup until a line contains
 *                            TARGET; prints {"classified_us": T, "sent_before": N, "sent": M}.
 *   storm RATE SECONDS PATH  fork+exec PATH at RATE per second for SECONDS, reaping as it goes.
 *   sockets N                socket + connect + accept + close N times against its own listener on
 *                            127.0.0.1; prints {"per_second": R} (what a sock_create program costs).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int in_target(const char *target) {
    char buf[4096];
    int fd = open("/proc/self/cgroup", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return strstr(buf, target) != NULL;
}

static int probe(const char *target, const char *addr, int port) {
    long long t0 = now_us();
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &to.sin_addr);
    char payload[64] = "netshape-bench";
    long long classified = -1;
    int sent = 0, sent_before = -1;
    while (now_us() - t0 < 50000) {
        if (now_us() - t0 < 10000) {
            sendto(s, payload, sizeof(payload), 0, (struct sockaddr *)&to, sizeof(to));
            sent++;
        }
        if (classified < 0 && in_target(target)) {
            classified = now_us() - t0;
            sent_before = sent;
        }
        if (classified >= 0 && now_us() - t0 >= 10000) break;
        usleep(100);
    }
    printf("{\"classified_us\": %lld, \"sent_before\": %d, \"sent\": %d}\n", classified, sent_before, sent);
    return 0;
}

static int storm(int rate, int seconds, const char *path) {
    long long start = now_us(), period = 1000000LL / rate;
    long long next = start;
    int spawned = 0;
    while (now_us() - start < seconds * 1000000LL) {
        pid_t p = fork();
        if (p == 0) {
            execl(path, path, (char *)NULL);
            _exit(127);
        }
        if (p > 0) spawned++;
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        next += period;
        long long wait = next - now_us();
        if (wait > 0) usleep(wait);
    }
    while (wait(NULL) > 0) {}
    printf("{\"spawned\": %d}\n", spawned);
    return 0;
}

static int sockets(int n) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 128) || getsockname(l, (struct sockaddr *)&a, &len))
        return perror("listener"), 1;
    long long t0 = now_us();
    for (int i = 0; i < n; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a))) return perror("connect"), 1;
        int s = accept(l, NULL, NULL);
        if (s < 0) return perror("accept"), 1;
        close(s);
        close(c);
    }
    printf("{\"per_second\": %.1f}\n", n / ((now_us() - t0) / 1e6));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "probe") == 0) return probe(argv[2], argv[3], atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "storm") == 0) return storm(atoi(argv[2]), atoi(argv[3]), argv[4]);
    if (argc == 3 && strcmp(argv[1], "sockets") == 0) return sockets(atoi(argv[2]));
    fprintf(stderr, "usage: probe TARGET ADDR PORT | storm RATE SECONDS PATH | sockets N\n");
    return 2;
}
