/* The per-packet loop of the userspace mGRE data plane, in C.
 *
 * Python keeps every decision (NHRP, ARP, multicast, hub hairpins, counters
 * per peer); this only moves plain unicast IPv4 between the TAP device and
 * the raw GRE socket, in batches, without copying: a frame is read with room
 * in front for the GRE header, and the destination MAC (02:00 + NBMA IPv4
 * address, see forwarding.py) is the NBMA address to send to. Anything else
 * is handed back to Python ("punted") untouched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define BUF 65600
#define HEADROOM 8 /* GRE with key is 8 bytes; Ethernet is 14: room to spare */

static unsigned char buf[BUF + 64];

/* Per-peer totals of one call, so Python keeps its per-peer counters and
 * use reports exact. A batch touching more peers than this stops early. */
#define MAXPEERS 8
typedef struct {
    unsigned char nbma[4];
    long packets, octets;
    unsigned char last_dst[4];
} peerstat;
static peerstat ps[MAXPEERS];
static int nps;

static peerstat *peer(const unsigned char *nbma) {
    for (int i = 0; i < nps; i++)
        if (memcmp(ps[i].nbma, nbma, 4) == 0) return &ps[i];
    if (nps == MAXPEERS) return NULL;
    peerstat *p = &ps[nps++];
    memcpy(p->nbma, nbma, 4);
    p->packets = p->octets = 0;
    memset(p->last_dst, 0, 4);
    return p;
}

static PyObject *peer_list(void) {
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (int i = 0; i < nps; i++) {
        PyObject *t = Py_BuildValue("y#lly#", (const char *)ps[i].nbma, (Py_ssize_t)4,
                                    ps[i].packets, ps[i].octets,
                                    (const char *)ps[i].last_dst, (Py_ssize_t)4);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
    }
    return out;
}

/* tap_to_gre(tap_fd, sock_fd, key or -1, max) -> (peers, punted)
 * peers: [(nbma4, packets, bytes, last_inner_dst4)]; punted: frames for Python. */
static PyObject *tap_to_gre(PyObject *self, PyObject *args) {
    int tap, sock, max;
    long long key;
    if (!PyArg_ParseTuple(args, "iiLi", &tap, &sock, &key, &max)) return NULL;
    PyObject *punted = PyList_New(0);
    if (!punted) return NULL;
    nps = 0;
    int ghl = key >= 0 ? 8 : 4;
    for (int i = 0; i < max; i++) {
        unsigned char *frame = buf + 16;
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = read(tap, frame, BUF);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            Py_DECREF(punted);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        peerstat *p = NULL;
        if (n >= 34 && frame[0] == 0x02 && frame[1] == 0x00 && frame[12] == 0x08 &&
            frame[13] == 0x00 && (p = peer(frame + 2)) != NULL) {
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
            memcpy(p->last_dst, frame + 14 + 16, 4);
            ssize_t len = n - 14 + ghl;
            ssize_t r;
            Py_BEGIN_ALLOW_THREADS
            r = sendto(sock, gre, len, 0, (struct sockaddr *)&to, sizeof(to));
            Py_END_ALLOW_THREADS
            if (r >= 0) {
                p->packets++;
                p->octets += len;
            }
            continue;
        }
        PyObject *b = PyBytes_FromStringAndSize((const char *)frame, n);
        if (!b || PyList_Append(punted, b) < 0) {
            Py_XDECREF(b);
            Py_DECREF(punted);
            return NULL;
        }
        Py_DECREF(b);
    }
    PyObject *peers = peer_list();
    if (!peers) {
        Py_DECREF(punted);
        return NULL;
    }
    return Py_BuildValue("NN", peers, punted);
}

/* gre_to_tap(sock_fd, tap_fd, key or -1, local_mac, max) -> (peers, punted)
 * peers as above (bytes: GRE header + payload); punted: [(gre_bytes, src4)]. */
static PyObject *gre_to_tap(PyObject *self, PyObject *args) {
    int sock, tap, max;
    long long key;
    const char *mac;
    Py_ssize_t maclen;
    if (!PyArg_ParseTuple(args, "iiLy#i", &sock, &tap, &key, &mac, &maclen, &max)) return NULL;
    if (maclen != 6) {
        PyErr_SetString(PyExc_ValueError, "local_mac must be 6 bytes");
        return NULL;
    }
    PyObject *punted = PyList_New(0);
    if (!punted) return NULL;
    nps = 0;
    for (int i = 0; i < max; i++) {
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = recvfrom(sock, buf, BUF, 0, (struct sockaddr *)&from, &fl);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            Py_DECREF(punted);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (n < 20) continue;
        int ihl = (buf[0] & 0x0f) * 4;
        if (ihl < 20 || n < ihl + 4) continue;
        unsigned char *gre = buf + ihl;
        int ghl = key >= 0 ? 8 : 4;
        int plain = n >= ihl + ghl + 20 && gre[1] == 0x00 && gre[2] == 0x08 && gre[3] == 0x00 &&
                    gre[0] == (key >= 0 ? 0x20 : 0x00);
        if (plain && key >= 0) {
            uint32_t k;
            memcpy(&k, gre + 4, 4);
            plain = ntohl(k) == (uint32_t)key;
        }
        unsigned char *inner = gre + ghl;
        peerstat *p = NULL;
        if (plain && inner[16] < 224 && (inner[0] >> 4) == 4 &&
            (p = peer((const unsigned char *)&from.sin_addr)) != NULL) {
            unsigned char *eth = inner - 14;
            memcpy(eth, mac, 6);
            eth[6] = 0x02;
            eth[7] = 0x00;
            memcpy(eth + 8, &from.sin_addr, 4);
            eth[12] = 0x08;
            eth[13] = 0x00;
            ssize_t len = n - ihl - ghl + 14;
            Py_BEGIN_ALLOW_THREADS
            (void)!write(tap, eth, len);
            Py_END_ALLOW_THREADS
            p->packets++;
            p->octets += n - ihl;
            memcpy(p->last_dst, inner + 16, 4);
            continue;
        }
        PyObject *item = Py_BuildValue("y#y#", gre, (Py_ssize_t)(n - ihl),
                                       (const char *)&from.sin_addr, (Py_ssize_t)4);
        if (!item || PyList_Append(punted, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(punted);
            return NULL;
        }
        Py_DECREF(item);
    }
    PyObject *peers = peer_list();
    if (!peers) {
        Py_DECREF(punted);
        return NULL;
    }
    return Py_BuildValue("NN", peers, punted);
}

static PyMethodDef methods[] = {
    {"tap_to_gre", tap_to_gre, METH_VARARGS, "Forward unicast IPv4 frames from the TAP as GRE."},
    {"gre_to_tap", gre_to_tap, METH_VARARGS, "Write plain GRE/IPv4 from the socket into the TAP."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
