/* A Lambda custom runtime in C: the compiled `bootstrap` of the bench's `provided` functions and of
 * tests/test_lambda_parity_provided.py.
 *
 * What most provided.al2023 functions deploy is a compiled Runtime API client (Go, Rust's
 * lambda_runtime, C++); this is the smallest such client, stdlib and POSIX sockets only, built with
 * `cc -O2 -static` so that it runs in any sandbox whatever its libc. One keep-alive HTTP/1.1
 * connection to AWS_LAMBDA_RUNTIME_API (TCP_NODELAY): GET .../invocation/next, the head read up to
 * CRLFCRLF, Content-Length and Lambda-Runtime-Aws-Request-Id taken case-insensitively, the body
 * read, then POST .../invocation/<id>/response with the event back as the result, each request one
 * write. With BOOTSTRAP_ECHO_REQUEST_ID set, the result is {"event": <event>, "request_id": "<id>"}
 * instead (the parity test checks the id the runtime saw).
 */

#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define BASE "/2018-06-01/runtime/invocation/"
#define MAX_HEAD 65536
#define MAX_ID 256
#define SAW_OPEN "{\"event\": "
#define SAW_MID ", \"request_id\": \""
#define SAW_CLOSE "\"}"

static char *in;          /* bytes read from the connection, in[0..in_len) */
static size_t in_len, in_cap;
static char *out;         /* the request being written */
static size_t out_cap;

static void die(const char *what) {
    fprintf(stderr, "bootstrap: %s: %s\n", what, errno ? strerror(errno) : "protocol error");
    exit(1);
}

static void reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t cap2 = *cap ? *cap : 65536;
    while (cap2 < need) cap2 *= 2;
    char *p = realloc(*buf, cap2);
    if (!p) die("out of memory");
    *buf = p;
    *cap = cap2;
}

static int connect_api(void) {
    const char *api = getenv("AWS_LAMBDA_RUNTIME_API");
    if (!api) { errno = 0; die("AWS_LAMBDA_RUNTIME_API is not set"); }
    char host[256];
    const char *colon = strrchr(api, ':');
    if (!colon || (size_t)(colon - api) >= sizeof host) { errno = 0; die("AWS_LAMBDA_RUNTIME_API is not host:port"); }
    memcpy(host, api, colon - api);
    host[colon - api] = 0;
    /* A numeric address (the sandbox's loopback): no resolver, which a static glibc would lack. */
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    char *port_end;
    long port = strtol(colon + 1, &port_end, 10);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1 || *port_end || port <= 0 || port > 65535) {
        errno = 0;
        die("AWS_LAMBDA_RUNTIME_API is not a numeric IPv4 host:port");
    }
    addr.sin_port = htons((unsigned short)port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    return fd;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

static void fill(int fd, size_t need) {
    reserve(&in, &in_cap, need);
    while (in_len < need) {
        ssize_t r = read(fd, in + in_len, in_cap - in_len);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (r == 0) { errno = 0; die("the Runtime API closed the connection"); }
        in_len += (size_t)r;
    }
}

/* The value of header `name` in head[0..len), or NULL; *vlen its length. */
static const char *header(const char *head, size_t len, const char *name, size_t *vlen) {
    size_t nlen = strlen(name);
    const char *end = head + len;
    const char *line = memchr(head, '\n', len);  /* skip the status line */
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', end - line);
        if (!eol) break;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol;
    }
    return NULL;
}

/* Reads one response: its head is in[0..*head_len), its body in[*head_len..*head_len+*body_len). */
static void read_response(int fd, size_t *head_len, size_t *body_len) {
    char *crlf;
    size_t scanned = 0;
    for (;;) {
        if (in_len >= 4 && (crlf = memmem(in + scanned, in_len - scanned, "\r\n\r\n", 4))) break;
        if (in_len > MAX_HEAD) { errno = 0; die("response head too large"); }
        scanned = in_len > 3 ? in_len - 3 : 0;
        size_t before = in_len;
        reserve(&in, &in_cap, in_len + 4096);
        ssize_t r = read(fd, in + in_len, in_cap - in_len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read");
        if (r == 0) { errno = 0; die("the Runtime API closed the connection"); }
        in_len = before + (size_t)r;
    }
    *head_len = (size_t)(crlf - in) + 4;
    size_t vlen = 0;
    const char *v = header(in, *head_len, "Content-Length", &vlen);
    size_t n = 0;
    for (size_t i = 0; v && i < vlen; i++) {
        if (v[i] < '0' || v[i] > '9') { errno = 0; die("bad Content-Length"); }
        n = n * 10 + (size_t)(v[i] - '0');
    }
    *body_len = n;
    fill(fd, *head_len + n);
}

/* Drops the first n bytes read (one whole response), keeping what follows. */
static void consume(size_t n) {
    memmove(in, in + n, in_len - n);
    in_len -= n;
}

int main(void) {
    int fd = connect_api();
    const char *api = getenv("AWS_LAMBDA_RUNTIME_API");
    int saw_id = getenv("BOOTSTRAP_ECHO_REQUEST_ID") != NULL;
    char next[512];
    int next_len = snprintf(next, sizeof next, "GET " BASE "next HTTP/1.1\r\nHost: %s\r\n\r\n", api);
    for (;;) {
        write_all(fd, next, (size_t)next_len);
        size_t head_len, body_len, vlen = 0;
        read_response(fd, &head_len, &body_len);
        const char *v = header(in, head_len, "Lambda-Runtime-Aws-Request-Id", &vlen);
        if (!v || vlen == 0 || vlen >= MAX_ID) { errno = 0; die("no Lambda-Runtime-Aws-Request-Id"); }
        char id[MAX_ID];
        memcpy(id, v, vlen);
        id[vlen] = 0;
        const char *event = in + head_len;
        size_t result_len = saw_id ? strlen(SAW_OPEN) + body_len + strlen(SAW_MID) + vlen + strlen(SAW_CLOSE)
                                   : body_len;
        reserve(&out, &out_cap, 512 + strlen(api) + vlen + result_len);
        int n = snprintf(out, out_cap,
                         "POST " BASE "%s/response HTTP/1.1\r\nHost: %s\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                         id, api, result_len);
        size_t len = (size_t)n;
        if (saw_id) {
            len += (size_t)sprintf(out + len, SAW_OPEN);
            memcpy(out + len, event, body_len);
            len += body_len;
            len += (size_t)sprintf(out + len, SAW_MID "%s" SAW_CLOSE, id);
        } else {
            memcpy(out + len, event, body_len);
            len += body_len;
        }
        consume(head_len + body_len);
        write_all(fd, out, len);
        read_response(fd, &head_len, &body_len);
        consume(head_len + body_len);
    }
}
