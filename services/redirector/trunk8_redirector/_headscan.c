/* The front's scan of a common link-request head, one pass in C (see fastpath.py).
 *
 * `common_link_request(data, pos, end)` looks at the head data[pos:end] (without its
 * blank line) and returns (method, path) when it is an HTTP/1.1 `GET`/`HEAD /<code>`
 * request that the front may answer as is: at most MAX_FIELD bytes, a valid request line, header lines of token ":"
 * visible text (at most MAX_HEADERS), exactly one valid Host, at most one User-Agent, any
 * Connection header only `keep-alive`, and no header that makes the request aiohttp's
 * business or that aiohttp refuses twice. Anything else returns None and the careful
 * path in Python decides: this scan only takes the heads whose answer that path gives
 * without looking further (the differential tests compare both on generated heads).
 * Each byte is looked at once, through lookup tables: the cost barely depends on the
 * size of the head, where `re` pays 5 to 25 instructions a byte.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* aiohttp's limits, as fastpath.MAX_HEADERS and MAX_FIELD (a test compares them): a head
 * of at most MAX_FIELD bytes cannot hold a target or a header line over aiohttp's limits. */
#define MAX_HEADERS 128
#define MAX_FIELD 8190

static unsigned char TOKEN[256];     /* RFC 9110 tchar */
static unsigned char PATH[256];      /* one path segment: visible ASCII but # / < ? */
static unsigned char QUERY[256];     /* visible ASCII but # */
static unsigned char VALUE[256];     /* field value: HTAB, SP, visible ASCII, obs-text */
static unsigned char HOST_NAME[256]; /* reg-name (with pct-encoding) */
static unsigned char HOST_IP[256];   /* inside an IP literal's brackets */

static PyObject *GET, *HEAD;

static void
mark(unsigned char *table, const char *bytes)
{
    for (; *bytes; bytes++)
        table[(unsigned char)*bytes] = 1;
}

static void
init_tables(void)
{
    static const char alnum[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    mark(TOKEN, alnum);
    mark(TOKEN, "!#$%&'*+-.^_`|~");
    for (int c = 0x21; c < 0x7f; c++) {
        QUERY[c] = c != '#';
        PATH[c] = c != '#' && c != '/' && c != '<' && c != '?';
    }
    VALUE['\t'] = 1;
    for (int c = 0x20; c < 0x100; c++)
        VALUE[c] = c != 0x7f;
    mark(HOST_NAME, alnum);
    mark(HOST_NAME, "-._~!$&'()*+,;=%");
    mark(HOST_IP, alnum);
    mark(HOST_IP, ":.-_~!$&'()*+,;=");
}

/* True if the `size` bytes at `s` equal the lowercase ASCII `lower`, ignoring case. */
static int
equal_lower(const unsigned char *s, Py_ssize_t size, const char *lower)
{
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if (c != (unsigned char)lower[i] || !lower[i])
            return 0;
    }
    return lower[size] == '\0';
}

static const unsigned char *
skip_space(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* A Host value (RFC 9110 7.2): uri-host [":" port], with optional whitespace around. */
static int
valid_host(const unsigned char *p, const unsigned char *end)
{
    p = skip_space(p, end);
    if (p < end && *p == '[') {
        const unsigned char *start = ++p;
        while (p < end && HOST_IP[*p])
            p++;
        if (p == start || p == end || *p != ']')
            return 0;
        p++;
    }
    else {
        while (p < end && HOST_NAME[*p])
            p++;
    }
    if (p < end && *p == ':') {
        p++;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    return skip_space(p, end) == end;
}

/* Names the common path leaves to the careful one (body, protocol switch, expectation,
 * or a header aiohttp refuses twice in a head, besides Host and User-Agent). */
static int
leaves_common_path(const unsigned char *name, Py_ssize_t size)
{
    switch (name[0] | 0x20) {
    case 'c':
        return size >= 8 && equal_lower(name, 8, "content-");
    case 't':
        return equal_lower(name, size, "transfer-encoding");
    case 'u':
        return equal_lower(name, size, "upgrade");
    case 'e':
        return equal_lower(name, size, "expect") || equal_lower(name, size, "etag");
    case 'm':
        return equal_lower(name, size, "max-forwards");
    case 's':
        return equal_lower(name, size, "server");
    default:
        return 0;
    }
}

static PyObject *
common_link_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "common_link_request(data: bytes, pos: int, end: int)");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    if (pos < 0 || stop < pos || stop > size) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= pos <= end <= len(data)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *p = data + pos, *end = data + stop;
    PyObject *method;
    if (end - p > MAX_FIELD)
        Py_RETURN_NONE;
    if (end - p >= 5 && memcmp(p, "GET /", 5) == 0) {
        method = GET;
        p += 5;
    }
    else if (end - p >= 6 && memcmp(p, "HEAD /", 6) == 0) {
        method = HEAD;
        p += 6;
    }
    else {
        Py_RETURN_NONE;
    }
    const unsigned char *path = p;
    while (p < end && PATH[*p])
        p++;
    const unsigned char *path_end = p;
    if (p == path)
        Py_RETURN_NONE;
    if (p < end && *p == '?') {
        p++;
        while (p < end && QUERY[*p])
            p++;
    }
    if (end - p < 9 || memcmp(p, " HTTP/1.1", 9) != 0)
        Py_RETURN_NONE;
    p += 9;

    int lines = 0, hosts = 0, agents = 0;
    while (p < end) {
        /* A value stops at any byte it may not hold: only CR LF may follow it. */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n' || ++lines > MAX_HEADERS)
            Py_RETURN_NONE;
        const unsigned char *name = p + 2;
        p = name;
        while (p < end && TOKEN[*p])
            p++;
        if (p == name || p == end || *p != ':')
            Py_RETURN_NONE;
        Py_ssize_t name_size = p - name;
        const unsigned char *value = ++p;
        while (p < end && VALUE[*p])
            p++;
        if (equal_lower(name, name_size, "host")) {
            if (++hosts > 1 || !valid_host(value, p))
                Py_RETURN_NONE;
        }
        else if (equal_lower(name, name_size, "user-agent")) {
            if (++agents > 1)
                Py_RETURN_NONE;
        }
        else if (equal_lower(name, name_size, "connection")) {
            /* keep-alive is HTTP/1.1's default: the answer is the same as without it */
            const unsigned char *token = skip_space(value, p);
            if (p - token < 10 || !equal_lower(token, 10, "keep-alive") ||
                skip_space(token + 10, p) != p)
                Py_RETURN_NONE;
        }
        else if (leaves_common_path(name, name_size)) {
            Py_RETURN_NONE;
        }
    }
    if (hosts != 1)
        Py_RETURN_NONE;
    PyObject *code = PyBytes_FromStringAndSize((const char *)path, path_end - path);
    if (code == NULL)
        return NULL;
    PyObject *pair = PyTuple_Pack(2, method, code);
    Py_DECREF(code);
    return pair;
}

static PyMethodDef methods[] = {
    {"common_link_request", (PyCFunction)(void (*)(void))common_link_request, METH_FASTCALL,
     "(method, path) of a common HTTP/1.1 link-request head data[pos:end], else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_headscan", "The front's one-pass scan of common link-request heads.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__headscan(void)
{
    init_tables();
    GET = PyBytes_FromString("GET");
    HEAD = PyBytes_FromString("HEAD");
    if (GET == NULL || HEAD == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "MAX_HEADERS", MAX_HEADERS) < 0 ||
                      PyModule_AddIntConstant(m, "MAX_FIELD", MAX_FIELD) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
