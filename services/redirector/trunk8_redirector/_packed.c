/* The packed link table's bulk steps in C (see packed.py, which keeps a Python version of
 * each and uses it when this module is missing; a differential test compares them).
 *
 * A table is one blob of records, `code NUL meta NUL target LF` in UTF-8 (surrogates
 * passed through), and an array of 64-bit slots, each the record's offset in its low 40
 * bits and the top 24 bits of `hash(code)` above, placed by linear probing from
 * `hash(code) & mask`. The hash is Python's own `hash` of the code's `str` (keyed per
 * process), so the lookups in Python find what these functions placed.
 *
 * - `pack_records(codes, metas, targets)`: the records of those columns, as bytes;
 * - `index_records(slots, blob, start, codes)`: places the records that follow each
 *   other from blob[start] (one per code, in order) in the slots; a code placed already
 *   is replaced by its later record; returns how many were replaced;
 * - `kept_records(blob, start, stop, drop)`: the codes and the bytes of the records in
 *   blob[start:stop] whose code is not a key of the dict `drop`;
 * - `reserve(size)`: a bytearray of `size` bytes left unwritten, so that a fold copies
 *   records into room set aside once instead of growing (and copying) a buffer;
 * - `release_pages(blob, start, stop)`: hands the whole pages of blob[start:stop] back to
 *   the kernel (they read as zeros after), so that freeing a dead blob of tens of MB,
 *   a step at a time, leaves little for the final free to unmap.
 * Each costs a few tens of nanoseconds a record, where Python's steps cost a microsecond.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define OFFSET_MASK ((UINT64_C(1) << 40) - 1)
#define TAG_BITS (~OFFSET_MASK)
#define EMPTY UINT64_MAX

/* The UTF-8 of a str (surrogates passed), borrowed from `str` or owned by `*keep`. */
static const char *
utf8_of(PyObject *str, Py_ssize_t *size, PyObject **keep)
{
    *keep = NULL;
    if (!PyUnicode_Check(str)) {
        PyErr_SetString(PyExc_TypeError, "codes, metas and targets must be str");
        return NULL;
    }
    const char *data = PyUnicode_AsUTF8AndSize(str, size);
    if (data != NULL)
        return data;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return NULL;
    PyErr_Clear(); /* a lone surrogate: encoded as Python's "surrogatepass" does */
    *keep = PyUnicode_AsEncodedString(str, "utf-8", "surrogatepass");
    if (*keep == NULL)
        return NULL;
    *size = PyBytes_GET_SIZE(*keep);
    return PyBytes_AS_STRING(*keep);
}

/* A collection run by an allocation in pack_records (a lone surrogate's error) may run a
 * finalizer that changes the lists: the second pass must write what the first measured. */
static const char CHANGED[] = "the columns changed while packed";

static int
check_list(PyObject *list, Py_ssize_t count, const char *name)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != count) {
        PyErr_Format(PyExc_TypeError, "%s must be a list as long as codes", name);
        return -1;
    }
    return 0;
}

/* Appends one field to `out` (when not NULL, and never past `out_end`) and adds its size
 * to `*total`. */
static int
add_field(PyObject *str, char **out, const char *out_end, Py_ssize_t *total)
{
    PyObject *keep;
    Py_ssize_t size;
    const char *data = utf8_of(str, &size, &keep);
    if (data == NULL)
        return -1;
    if (memchr(data, '\0', size) != NULL || memchr(data, '\n', size) != NULL) {
        Py_XDECREF(keep);
        PyErr_SetString(PyExc_ValueError, "a code, type or target holds a NUL or a line feed");
        return -1;
    }
    if (size > PY_SSIZE_T_MAX - 3 - *total) { /* the same huge str many times over */
        Py_XDECREF(keep);
        PyErr_SetString(PyExc_OverflowError, "the records exceed the largest bytes object");
        return -1;
    }
    if (*out != NULL && size > out_end - *out) {
        Py_XDECREF(keep);
        PyErr_SetString(PyExc_RuntimeError, CHANGED);
        return -1;
    }
    if (*out != NULL) {
        memcpy(*out, data, size);
        *out += size;
    }
    *total += size;
    Py_XDECREF(keep);
    return 0;
}

/* Appends a separator to `out` (when not NULL, and never past `out_end`). */
static int
add_separator(char c, char **out, const char *out_end)
{
    if (*out == NULL)
        return 0;
    if (*out == out_end) {
        PyErr_SetString(PyExc_RuntimeError, CHANGED);
        return -1;
    }
    *(*out)++ = c;
    return 0;
}

static PyObject *
pack_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pack_records(codes, metas, targets)");
        return NULL;
    }
    PyObject *codes = args[0], *metas = args[1], *targets = args[2];
    if (!PyList_Check(codes)) {
        PyErr_SetString(PyExc_TypeError, "codes must be a list");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(codes);
    if (check_list(targets, count, "targets") < 0 ||
        (metas != Py_None && check_list(metas, count, "metas") < 0))
        return NULL;
    PyObject *blob = NULL;
    /* Twice: the sizes first, then the bytes into a buffer of exactly that size. */
    for (int pass = 0; pass < 2; pass++) {
        char *out = blob == NULL ? NULL : PyBytes_AS_STRING(blob);
        const char *out_end = blob == NULL ? NULL : out + PyBytes_GET_SIZE(blob);
        Py_ssize_t total = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (PyList_GET_SIZE(codes) != count || PyList_GET_SIZE(targets) != count ||
                (metas != Py_None && PyList_GET_SIZE(metas) != count)) {
                PyErr_SetString(PyExc_RuntimeError, CHANGED);
                goto error;
            }
            if (add_field(PyList_GET_ITEM(codes, i), &out, out_end, &total) < 0 ||
                add_separator('\0', &out, out_end) < 0 ||
                (metas != Py_None &&
                 add_field(PyList_GET_ITEM(metas, i), &out, out_end, &total) < 0) ||
                add_separator('\0', &out, out_end) < 0 ||
                add_field(PyList_GET_ITEM(targets, i), &out, out_end, &total) < 0 ||
                add_separator('\n', &out, out_end) < 0)
                goto error;
            total += 3;
        }
        if (out != out_end) { /* shorter fields the second time */
            PyErr_SetString(PyExc_RuntimeError, CHANGED);
            goto error;
        }
        if (blob == NULL && (blob = PyBytes_FromStringAndSize(NULL, total)) == NULL)
            return NULL;
    }
    return blob;
error:
    Py_XDECREF(blob);
    return NULL;
}

/* Whether the NUL-terminated codes at offsets `a` and `b` of the blob are the same. */
static int
same_code(const char *blob, Py_ssize_t size, uint64_t a, uint64_t b)
{
    if (a >= (uint64_t)size) /* slots of another blob: never read past this one */
        return 0;
    const char *end_a = memchr(blob + a, '\0', size - a);
    if (end_a == NULL)
        return 0;
    Py_ssize_t length = end_a - (blob + a) + 1; /* with its NUL */
    return (Py_ssize_t)b + length <= size && memcmp(blob + a, blob + b, length) == 0;
}

static PyObject *
index_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "index_records(slots, blob, start, codes)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    PyObject *codes = args[3];
    if (!PyList_Check(codes)) {
        PyErr_SetString(PyExc_TypeError, "codes must be a list");
        return NULL;
    }
    Py_buffer slots_view, blob_view;
    /* Contiguous with a shape: a memoryview cast to 'Q' (a fold's slots) exports no less. */
    if (PyObject_GetBuffer(args[0], &slots_view, PyBUF_CONTIG | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &blob_view, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&slots_view);
        return NULL;
    }
    PyObject *result = NULL;
    uint64_t *slots = slots_view.buf;
    Py_ssize_t slot_count = slots_view.len / 8;
    const char *blob = blob_view.buf;
    Py_ssize_t size = blob_view.len;
    if (slots_view.itemsize != 8 || slots_view.format == NULL ||
        strcmp(slots_view.format, "Q") != 0 || slot_count == 0 ||
        (slot_count & (slot_count - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "slots must be an array('Q') of a power of 2 items");
        goto done;
    }
    if (start < 0 || start > size || (uint64_t)size > OFFSET_MASK) {
        PyErr_SetString(PyExc_ValueError, "start out of the blob, or a blob over 2**40 bytes");
        goto done;
    }
    uint64_t mask = (uint64_t)slot_count - 1;
    Py_ssize_t count = PyList_GET_SIZE(codes), replaced = 0, offset = start;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *end = offset < size ? memchr(blob + offset, '\n', size - offset) : NULL;
        if (end == NULL) {
            PyErr_SetString(PyExc_ValueError, "fewer records in the blob than codes");
            goto done;
        }
        /* Exactly str: its hash is the one lookups use, and it runs no Python code that
         * could change `codes` under this loop (a __hash__ of another type could). */
        PyObject *code = PyList_GET_ITEM(codes, i);
        if (!PyUnicode_CheckExact(code)) {
            PyErr_SetString(PyExc_TypeError, "codes must be str");
            goto done;
        }
        Py_hash_t hash = PyObject_Hash(code);
        if (hash == -1)
            goto done;
        uint64_t value = ((uint64_t)hash & TAG_BITS) | (uint64_t)offset;
        uint64_t slot = (uint64_t)hash & mask, other, probes = 0;
        while ((other = slots[slot]) != EMPTY) {
            /* Records are placed in blob order: a later one of the same code wins. */
            if ((other & TAG_BITS) == (value & TAG_BITS) &&
                same_code(blob, size, other & OFFSET_MASK, (uint64_t)offset)) {
                replaced++;
                break;
            }
            if (++probes > mask) { /* every slot looked at: none free, none of this code */
                PyErr_SetString(PyExc_ValueError, "no free slot: the slots are full");
                goto done;
            }
            slot = (slot + 1) & mask;
        }
        slots[slot] = value;
        offset = end - blob + 1;
    }
    result = PyLong_FromSsize_t(replaced);
done:
    PyBuffer_Release(&blob_view);
    PyBuffer_Release(&slots_view);
    return result;
}

static PyObject *
kept_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "kept_records(blob, start, stop, drop)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    PyObject *drop = args[3];
    if (!PyDict_Check(drop)) {
        PyErr_SetString(PyExc_TypeError, "drop must be a dict");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *codes = NULL, *kept = NULL, *result = NULL;
    if (start < 0 || stop > view.len || start > stop) {
        PyErr_SetString(PyExc_ValueError, "start and stop must be within the blob");
        goto done;
    }
    if ((codes = PyList_New(0)) == NULL ||
        (kept = PyBytes_FromStringAndSize(NULL, stop - start)) == NULL)
        goto done;
    const char *blob = view.buf, *p = blob + start, *limit = blob + stop;
    char *out = PyBytes_AS_STRING(kept);
    while (p < limit) {
        const char *code_end = memchr(p, '\0', limit - p);
        const char *end = memchr(p, '\n', limit - p);
        if (code_end == NULL || end == NULL || code_end > end) {
            PyErr_SetString(PyExc_ValueError, "not whole records");
            goto done;
        }
        PyObject *code = PyUnicode_DecodeUTF8(p, code_end - p, "surrogatepass");
        if (code == NULL)
            goto done;
        int dropped = PyDict_Contains(drop, code);
        if (dropped == 0) {
            if (PyList_Append(codes, code) < 0)
                dropped = -1;
            memcpy(out, p, end - p + 1);
            out += end - p + 1;
        }
        Py_DECREF(code);
        if (dropped < 0)
            goto done;
        p = end + 1;
    }
    if (_PyBytes_Resize(&kept, out - PyBytes_AS_STRING(kept)) < 0)
        goto done; /* it freed `kept` */
    result = PyTuple_Pack(2, codes, kept);
done:
    Py_XDECREF(codes);
    Py_XDECREF(kept);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
reserve(PyObject *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative size");
        return NULL;
    }
    /* No memset, unlike bytearray(size): a large buffer comes from fresh pages that the
     * kernel maps only as they are first written, a step of the fold at a time. */
    return PyByteArray_FromStringAndSize(NULL, size);
}

static PyObject *
release_pages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "release_pages(blob, start, stop)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (stop > view.len)
        stop = view.len;
    if (start < 0 || start > stop) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start and stop must be within the blob");
        return NULL;
    }
#ifdef MADV_DONTNEED
    /* Only pages wholly inside the range: the bytes around it (an object's header, the
     * allocator's own) are never touched. */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t first = ((uintptr_t)view.buf + (uintptr_t)start + page - 1) & ~(page - 1);
    uintptr_t last = ((uintptr_t)view.buf + (uintptr_t)stop) & ~(page - 1);
    if (last > first)
        (void)madvise((void *)first, last - first, MADV_DONTNEED); /* advice: may fail */
#endif
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pack_records", (PyCFunction)(void (*)(void))pack_records, METH_FASTCALL,
     "The records `code NUL meta NUL target LF` of the columns (metas None: all empty)."},
    {"index_records", (PyCFunction)(void (*)(void))index_records, METH_FASTCALL,
     "Place the records from blob[start] (one per code) in the slots; returns how many "
     "replaced a record of the same code."},
    {"kept_records", (PyCFunction)(void (*)(void))kept_records, METH_FASTCALL,
     "(codes, bytes) of the records in blob[start:stop] whose code is not a key of drop."},
    {"release_pages", (PyCFunction)(void (*)(void))release_pages, METH_FASTCALL,
     "Hand the whole pages of blob[start:stop] back to the kernel (they read as zeros)."},
    {"reserve", reserve, METH_O,
     "A bytearray of `size` bytes, not initialised (write before reading)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_packed", "The packed link table's bulk steps in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__packed(void)
{
    return PyModule_Create(&module);
}
