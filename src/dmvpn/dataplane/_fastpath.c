/* The per-packet loop of the userspace mGRE data plane, in C.
 *
 * Python keeps every decision (NHRP, ARP, multicast, hub hairpins, counters
 * per peer); this only moves plain unicast IPv4 between the TAP device and
 * the raw GRE socket, on a thread of its own without the GIL, and without
 * copying: a frame is read with room in front for the GRE header, and the
 * destination MAC (02:00 + NBMA IPv4 address, see forwarding.py) is the NBMA
 * address to send to. Anything else is handed to Python ("punted").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <time.h>

#define BUF 65600

/* pump(tap_fd, sock_fd, key or -1, local_mac, punt_fd, stop_fd): the data
 * plane loop on a thread of its own, without the GIL. Plain unicast IPv4
 * goes straight through both ways; everything else is passed to Python over
 * punt_fd (a SOCK_SEQPACKET socket) as one message: 'T' + frame (from the
 * TAP) or 'G' + source IPv4 (4) + GRE packet (from the socket). Per-peer
 * totals go the same way every 0.1 s as 'S' + records of nbma (4), tx
 * packets, tx bytes, rx packets, rx bytes (4 x uint64) and the last inner
 * destination sent to that peer (4). Returns when stop_fd is readable. */
#define PUMP_PEERS 256
typedef struct {
    unsigned char nbma[4];
    uint64_t txp, txb, rxp, rxb;
    unsigned char dst[4];
    int used;
} pstat;
static pstat pt[PUMP_PEERS];
static int npt;
static unsigned char pbuf[BUF + 64];
static unsigned char rbuf[BUF + 64];
static unsigned char sbuf[1 + PUMP_PEERS * 40];

static pstat *pfind(const unsigned char *nbma) {
    for (int i = 0; i < npt; i++)
        if (memcmp(pt[i].nbma, nbma, 4) == 0) return &pt[i];
    if (npt == PUMP_PEERS) return NULL;
    pstat *p = &pt[npt++];
    memset(p, 0, sizeof(*p));
    memcpy(p->nbma, nbma, 4);
    return p;
}

static void flush_stats(int punt) {
    size_t off = 1;
    sbuf[0] = 'S';
    for (int i = 0; i < npt; i++) {
        if (!pt[i].used) continue;
        memcpy(sbuf + off, pt[i].nbma, 4);
        uint64_t v[4] = {pt[i].txp, pt[i].txb, pt[i].rxp, pt[i].rxb};
        memcpy(sbuf + off + 4, v, 32);
        memcpy(sbuf + off + 36, pt[i].dst, 4);
        off += 40;
        pt[i].txp = pt[i].txb = pt[i].rxp = pt[i].rxb = 0;
        pt[i].used = 0;
    }
    if (off > 1) (void)!send(punt, sbuf, off, MSG_DONTWAIT);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pump_loop(int tap, int sock, long long key, const char *mac, int punt, int stop) {
    int ghl = key >= 0 ? 8 : 4;
    struct pollfd fds[3] = {{tap, POLLIN, 0}, {sock, POLLIN, 0}, {stop, POLLIN, 0}};
    double next_flush = mono() + 0.1;
    npt = 0;
    for (;;) {
        int r = poll(fds, 3, 500);
        if (r < 0 && errno != EINTR) break;
        if (fds[2].revents) break;
        if (fds[0].revents & POLLIN) {
            for (int i = 0; i < 64; i++) {
                unsigned char *frame = pbuf + 16;
                ssize_t n = read(tap, frame, BUF);
                if (n < 0) break;
                pstat *p = NULL;
                if (n >= 34 && frame[0] == 0x02 && frame[1] == 0x00 && frame[12] == 0x08 &&
                    frame[13] == 0x00 && (p = pfind(frame + 2)) != NULL) {
                    unsigned char *gre = frame + 14 - ghl;
                    gre[0] = key >= 0 ? 0x20 : 0x00;
                    gre[1] = 0x00;
                    gre[2] = 0x08;
                    gre[3] = 0x00;
                    if (key >= 0) {
                        uint32_t k = htonl((uint32_t)key);
                        memcpy(gre + 4, &k, 4);
                    }
                    struct sockaddr_in to = {0};
                    to.sin_family = AF_INET;
                    memcpy(&to.sin_addr, frame + 2, 4);
                    ssize_t len = n - 14 + ghl;
                    if (sendto(sock, gre, len, 0, (struct sockaddr *)&to, sizeof(to)) >= 0) {
                        p->txp++;
                        p->txb += len;
                        memcpy(p->dst, frame + 30, 4);
                        p->used = 1;
                    }
                    continue;
                }
                frame[-1] = 'T';
                (void)!send(punt, frame - 1, n + 1, MSG_DONTWAIT);
            }
        }
        if (fds[1].revents & POLLIN) {
            for (int i = 0; i < 64; i++) {
                struct sockaddr_in from;
                socklen_t fl = sizeof(from);
                unsigned char *b = rbuf + 8;
                ssize_t n = recvfrom(sock, b, BUF, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
                if (n < 0) break;
                if (n < 24) continue;
                int ihl = (b[0] & 0x0f) * 4;
                if (ihl < 20 || n < ihl + 4) continue;
                unsigned char *gre = b + ihl;
                int plain = n >= ihl + ghl + 20 && gre[1] == 0x00 && gre[2] == 0x08 &&
                            gre[3] == 0x00 && gre[0] == (key >= 0 ? 0x20 : 0x00);
                if (plain && key >= 0) {
                    uint32_t k;
                    memcpy(&k, gre + 4, 4);
                    plain = ntohl(k) == (uint32_t)key;
                }
                unsigned char *inner = gre + ghl;
                pstat *p = NULL;
                if (plain && inner[16] < 224 && (inner[0] >> 4) == 4 &&
                    (p = pfind((const unsigned char *)&from.sin_addr)) != NULL) {
                    unsigned char *eth = inner - 14;
                    memcpy(eth, mac, 6);
                    eth[6] = 0x02;
                    eth[7] = 0x00;
                    memcpy(eth + 8, &from.sin_addr, 4);
                    eth[12] = 0x08;
                    eth[13] = 0x00;
                    (void)!write(tap, eth, n - ihl - ghl + 14);
                    p->rxp++;
                    p->rxb += n - ihl;
                    p->used = 1;
                    continue;
                }
                /* 'G' + src + GRE, written in front of the GRE packet. */
                unsigned char *msg = gre - 5;
                msg[0] = 'G';
                memcpy(msg + 1, &from.sin_addr, 4);
                (void)!send(punt, msg, n - ihl + 5, MSG_DONTWAIT);
            }
        }
        double now = mono();
        if (now >= next_flush) {
            flush_stats(punt);
            next_flush = now + 0.1;
        }
    }
    flush_stats(punt);
}

static PyObject *pump(PyObject *self, PyObject *args) {
    (void)self;
    int tap, sock, punt, stop;
    long long key;
    const char *mac;
    Py_ssize_t maclen;
    if (!PyArg_ParseTuple(args, "iiLy#ii", &tap, &sock, &key, &mac, &maclen, &punt, &stop))
        return NULL;
    if (maclen != 6) {
        PyErr_SetString(PyExc_ValueError, "local_mac must be 6 bytes");
        return NULL;
    }
    char m[6];
    memcpy(m, mac, 6);
    Py_BEGIN_ALLOW_THREADS
    pump_loop(tap, sock, key, m, punt, stop);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pump", pump, METH_VARARGS, "Run the data plane loop until stop_fd is readable (no GIL)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
