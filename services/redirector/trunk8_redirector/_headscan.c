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
 *
 * `PreparedAnswers` (below) uses the same scan to answer a repeated common GET in one
 * call: the whole response of each path asked in the current second, kept by the front.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
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

/* The end of a field value starting at p: the first byte a value may not hold. */
static const unsigned char *
skip_value(const unsigned char *p, const unsigned char *end)
{
    /* Eight bytes at a time while none is below a space or DEL, as in most of a browser's
     * head (its values: user agent, accept lists, cookies); the exact test per byte
     * (VALUE, which also allows HTAB) then finds where the value stops. A word is flagged
     * exactly when one of its bytes is < 0x20 or == 0x7f (bytes >= 0x80 never are). */
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - p >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        uint64_t del = word ^ (ones * 0x7f); /* a zero byte where word had DEL */
        if ((((word - ones * 0x20) & ~word) | ((del - ones) & ~del)) & highs)
            break;
        p += 8;
    }
    while (p < end && VALUE[*p])
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

/* Scans the head [p, end): 1 when it is a common link request, with its method and path
 * (the code as sent, without the query), else 0. */
static int
scan_common(const unsigned char *p, const unsigned char *end, PyObject **method,
            const unsigned char **path_start, Py_ssize_t *path_size)
{
    if (end - p > MAX_FIELD)
        return 0;
    if (end - p >= 5 && memcmp(p, "GET /", 5) == 0) {
        *method = GET;
        p += 5;
    }
    else if (end - p >= 6 && memcmp(p, "HEAD /", 6) == 0) {
        *method = HEAD;
        p += 6;
    }
    else {
        return 0;
    }
    const unsigned char *path = p;
    while (p < end && PATH[*p])
        p++;
    if (p == path)
        return 0;
    *path_start = path;
    *path_size = p - path;
    if (p < end && *p == '?') {
        p++;
        while (p < end && QUERY[*p])
            p++;
    }
    if (end - p < 9 || memcmp(p, " HTTP/1.1", 9) != 0)
        return 0;
    p += 9;

    int lines = 0, hosts = 0, agents = 0;
    while (p < end) {
        /* A value stops at any byte it may not hold: only CR LF may follow it. */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n' || ++lines > MAX_HEADERS)
            return 0;
        const unsigned char *name = p + 2;
        p = name;
        while (p < end && TOKEN[*p])
            p++;
        if (p == name || p == end || *p != ':')
            return 0;
        Py_ssize_t name_size = p - name;
        const unsigned char *value = ++p;
        p = skip_value(p, end);
        if (equal_lower(name, name_size, "host")) {
            if (++hosts > 1 || !valid_host(value, p))
                return 0;
        }
        else if (equal_lower(name, name_size, "user-agent")) {
            if (++agents > 1)
                return 0;
        }
        else if (equal_lower(name, name_size, "connection")) {
            /* keep-alive is HTTP/1.1's default: the answer is the same as without it */
            const unsigned char *token = skip_space(value, p);
            if (p - token < 10 || !equal_lower(token, 10, "keep-alive") ||
                skip_space(token + 10, p) != p)
                return 0;
        }
        else if (leaves_common_path(name, name_size)) {
            return 0;
        }
    }
    return hosts == 1;
}

/* (method, path) of a scanned common head: a new reference, or NULL with an exception. */
static PyObject *
method_and_path(PyObject *method, const unsigned char *path, Py_ssize_t path_size)
{
    PyObject *code = PyBytes_FromStringAndSize((const char *)path, path_size);
    if (code == NULL)
        return NULL;
    PyObject *pair = PyTuple_Pack(2, method, code);
    Py_DECREF(code);
    return pair;
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
    PyObject *method;
    const unsigned char *path;
    Py_ssize_t path_size;
    if (!scan_common(data + pos, data + stop, &method, &path, &path_size))
        Py_RETURN_NONE;
    return method_and_path(method, path, path_size);
}

/* PreparedAnswers: whole answers to common GET requests, by path, so that the front answers
 * a request whose answer is prepared in one call (the scan and a dict lookup), without
 * running Python. An answer holds its Date line and the table's state: the front clears
 * them when the clock ticks, and they are dropped whenever the table's version changes.
 * Bounded: when full, all are dropped (the hot ones come back at their next request). */
typedef struct {
    PyObject_HEAD
    PyObject *answers;  /* dict: path (bytes) -> (response (bytes), outcome (int)) */
    PyObject *outcomes; /* list of counters, indexed by outcome: the stats' own list */
    PyObject *version;  /* the table version the answers were built from */
    Py_ssize_t capacity;
} PreparedAnswers;

static PyObject *ONE;

/* Every field is set from the start (an empty dict, no counters, version None), so that the
 * methods of an instance whose __init__ never ran raise instead of reading NULL. */
static PyObject *
prepared_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PreparedAnswers *self = (PreparedAnswers *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->answers = PyDict_New();
    self->outcomes = PyList_New(0);
    self->version = Py_NewRef(Py_None);
    self->capacity = 1;
    if (self->answers == NULL || self->outcomes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
prepared_init(PreparedAnswers *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"outcomes", "capacity", NULL};
    PyObject *outcomes;
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!n:PreparedAnswers", keywords,
                                     &PyList_Type, &outcomes, &capacity))
        return -1;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be at least 1");
        return -1;
    }
    PyObject *answers = PyDict_New();
    if (answers == NULL)
        return -1;
    Py_XSETREF(self->answers, answers);
    Py_XSETREF(self->outcomes, Py_NewRef(outcomes));
    Py_XSETREF(self->version, Py_NewRef(Py_None));
    self->capacity = capacity;
    return 0;
}

/* GC support: the version and the counters are the caller's objects, which may refer back
 * to these answers (a cycle the collector must be able to break). */
static int
prepared_traverse(PreparedAnswers *self, visitproc visit, void *arg)
{
    Py_VISIT(self->answers);
    Py_VISIT(self->outcomes);
    Py_VISIT(self->version);
    return 0;
}

static int
prepared_clear_refs(PreparedAnswers *self)
{
    Py_CLEAR(self->answers);
    Py_CLEAR(self->outcomes);
    Py_CLEAR(self->version);
    return 0;
}

static void
prepared_dealloc(PreparedAnswers *self)
{
    PyObject_GC_UnTrack(self);
    prepared_clear_refs(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whether the fields are there: tp_clear (breaking a cycle) may have emptied them. */
static int
check_alive(PreparedAnswers *self)
{
    if (self->answers != NULL && self->outcomes != NULL && self->version != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "PreparedAnswers cleared by the garbage collector");
    return -1;
}

/* Make `version` the answers' version, dropping them if it differs; -1 on error. */
static int
adopt_version(PreparedAnswers *self, PyObject *version)
{
    if (version == self->version)
        return 0;
    /* Held while compared: an `__eq__` may run code that replaces self->version. */
    PyObject *current = Py_NewRef(self->version);
    int same = PyObject_RichCompareBool(version, current, Py_EQ);
    Py_DECREF(current);
    if (same < 0)
        return -1;
    if (!same)
        PyDict_Clear(self->answers);
    Py_INCREF(version);
    Py_SETREF(self->version, version);
    return 0;
}

/* Count one answer of `outcome` in the stats' list; -1 on error. */
static int
count_outcome(PreparedAnswers *self, PyObject *outcome)
{
    Py_ssize_t index = PyLong_AsSsize_t(outcome);
    if (index == -1 && PyErr_Occurred())
        return -1;
    if (index < 0 || index >= PyList_GET_SIZE(self->outcomes)) {
        PyErr_SetString(PyExc_IndexError, "outcome out of the counters' range");
        return -1;
    }
    PyObject *count = PyNumber_Add(PyList_GET_ITEM(self->outcomes, index), ONE);
    if (count == NULL)
        return -1;
    /* Steals `count` and drops the old one; fails if the `+` above shrank the list. */
    return PyList_SetItem(self->outcomes, index, count);
}

static PyObject *
prepared_answer(PreparedAnswers *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "answer(data: bytes, version: int)");
        return NULL;
    }
    if (check_alive(self) < 0)
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    /* One whole head, alone in the read: anything else is the caller's. */
    if (size < 4 || memcmp(data + size - 4, "\r\n\r\n", 4) != 0)
        Py_RETURN_NONE;
    PyObject *method;
    const unsigned char *path;
    Py_ssize_t path_size;
    if (!scan_common(data, data + size - 4, &method, &path, &path_size))
        Py_RETURN_NONE;
    if (method != GET)
        return method_and_path(method, path, path_size);
    if (adopt_version(self, args[1]) < 0)
        return NULL;
    PyObject *key = PyBytes_FromStringAndSize((const char *)path, path_size);
    if (key == NULL)
        return NULL;
    PyObject *prepared = PyDict_GetItemWithError(self->answers, key); /* borrowed */
    if (prepared == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
        PyObject *pair = PyTuple_Pack(2, method, key);
        Py_DECREF(key);
        return pair;
    }
    Py_DECREF(key);
    /* Owned before counting: a counter's `+` (any object in the stats' list) may run code
     * that drops `prepared` from the dict. */
    PyObject *response = Py_NewRef(PyTuple_GET_ITEM(prepared, 0));
    if (count_outcome(self, PyTuple_GET_ITEM(prepared, 1)) < 0) {
        Py_DECREF(response);
        return NULL;
    }
    return response;
}

static PyObject *
prepared_keep(PreparedAnswers *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "keep(path: bytes, response: bytes, outcome: int, version: int)");
        return NULL;
    }
    if (check_alive(self) < 0)
        return NULL;
    Py_ssize_t outcome = PyLong_AsSsize_t(args[2]);
    if (outcome == -1 && PyErr_Occurred())
        return NULL;
    if (outcome < 0 || outcome >= PyList_GET_SIZE(self->outcomes)) {
        PyErr_SetString(PyExc_ValueError, "outcome out of the counters' range");
        return NULL;
    }
    if (adopt_version(self, args[3]) < 0)
        return NULL;
    if (PyDict_GET_SIZE(self->answers) >= self->capacity)
        PyDict_Clear(self->answers);
    PyObject *prepared = PyTuple_Pack(2, args[1], args[2]);
    if (prepared == NULL)
        return NULL;
    int failed = PyDict_SetItem(self->answers, args[0], prepared);
    Py_DECREF(prepared);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
prepared_clear(PreparedAnswers *self, PyObject *unused)
{
    if (check_alive(self) < 0)
        return NULL;
    PyDict_Clear(self->answers);
    Py_RETURN_NONE;
}

static Py_ssize_t
prepared_len(PreparedAnswers *self)
{
    return self->answers == NULL ? 0 : PyDict_GET_SIZE(self->answers);
}

static PyMethodDef prepared_methods[] = {
    {"answer", (PyCFunction)(void (*)(void))prepared_answer, METH_FASTCALL,
     "The prepared response to `data` if it is one whole common GET head whose answer is\n"
     "kept for this table version; (method, path) of another common head; else None."},
    {"keep", (PyCFunction)(void (*)(void))prepared_keep, METH_FASTCALL,
     "Keep the response to GET /path, counted as `outcome`, for this table version."},
    {"clear", (PyCFunction)prepared_clear, METH_NOARGS, "Drop every prepared answer."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods prepared_sequence = {
    .sq_length = (lenfunc)prepared_len,
};

static PyTypeObject PreparedAnswersType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trunk8_redirector._headscan.PreparedAnswers",
    .tp_basicsize = sizeof(PreparedAnswers),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "PreparedAnswers(outcomes: list[int], capacity: int): whole answers to common\n"
              "GET requests by path, for one table version and one Date line.",
    .tp_new = prepared_new,
    .tp_init = (initproc)prepared_init,
    .tp_dealloc = (destructor)prepared_dealloc,
    .tp_traverse = (traverseproc)prepared_traverse,
    .tp_clear = (inquiry)prepared_clear_refs,
    .tp_free = PyObject_GC_Del,
    .tp_methods = prepared_methods,
    .tp_as_sequence = &prepared_sequence,
};

static PyMethodDef methods[] = {
    {"common_link_request", (PyCFunction)(void (*)(void))common_link_request, METH_FASTCALL,
     "(method, path) of a common HTTP/1.1 link-request head data[pos:end], else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_headscan", "The front's one-pass scan of common link-request heads, and its prepared answers.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__headscan(void)
{
    init_tables();
    GET = PyBytes_FromString("GET");
    HEAD = PyBytes_FromString("HEAD");
    ONE = PyLong_FromLong(1);
    if (GET == NULL || HEAD == NULL || ONE == NULL || PyType_Ready(&PreparedAnswersType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "MAX_HEADERS", MAX_HEADERS) < 0 ||
                      PyModule_AddIntConstant(m, "MAX_FIELD", MAX_FIELD) < 0 ||
                      PyModule_AddObjectRef(m, "PreparedAnswers",
                                            (PyObject *)&PreparedAnswersType) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
