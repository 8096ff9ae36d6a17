/*
 * prefetch.engine._shmalloc: a numpy data allocator that puts a batch's large arrays straight
 * into the batch's shared-memory segment, inside a process worker.
 *
 * Why: a worker that builds an 18 MiB batch with plain numpy (np.full, np.stack, decoding into
 * a fresh array) would otherwise write it once into private memory and then copy it into
 * shared memory — three passes over the data where a serial loop makes one. With this handler
 * installed around `__getitem__`, numpy allocates arrays of at least `threshold` bytes inside
 * the segment, the worker writes the data once, and the consumer reads it in place.
 *
 * Each registered segment is a small first-fit heap: blocks are laid out one after another,
 * each behind a 64-byte header (size, previous block), freed neighbours merge, a free block
 * at the end shrinks the heap. Temporaries freed during `__getitem__` are reused by later
 * allocations of the same batch. Only the "current" segment (the batch being produced)
 * receives new blocks; frees and reallocs find their segment by address, whenever they come.
 * Anything that does not fit, and every small allocation, goes to the C library.
 *
 * Built without numpy headers: numpy's PyDataMem_Handler (version 1, numpy >= 1.22) is
 * declared below, and PyDataMem_SetHandler is taken from numpy's C-API table at bind().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} DataMemAllocator;

typedef struct {
    char name[127];
    uint8_t version;
    DataMemAllocator allocator;
} DataMemHandler;

#define ALIGN 64
#define HDR 64 /* header bytes before each block: keeps every array 64-byte aligned */
#define SPLIT_MIN 4096 /* a free remainder smaller than this stays with the block */
#define NONE ((size_t)-1)
#define MAGIC 0x70726566u

typedef struct {
    size_t size; /* data bytes after the header; the next header follows at once */
    size_t prev; /* offset of the previous block's header, or NONE */
    uint32_t magic;
    uint32_t used;
} Block;

typedef struct {
    char *base;
    size_t cap;
    size_t end;   /* offset just past the last block */
    size_t last;  /* offset of the last block's header, or NONE */
    size_t live;  /* blocks in use */
    size_t nfree; /* free blocks below `end` (holes) */
    size_t peak;  /* the highest `end` since begin() */
    size_t want;  /* the size this segment would have needed for what did not fit */
} Arena;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Arena **arenas = NULL;
static size_t n_arenas = 0, cap_arenas = 0;
static Arena *current = NULL;
/* In a child forked from a worker the segments are still shared with the worker: the child must
 * neither place new arrays there nor write block headers when it frees one. */
static int detached = 0;
static size_t threshold = 32768; /* set_threshold() from arena.py: shm.MIN_SHARED */
static PyObject *(*set_handler)(PyObject *) = NULL;
static PyObject *handler_capsule = NULL;

static inline size_t round_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }
static inline Block *block_at(Arena *a, size_t off) { return (Block *)(a->base + off); }

static Arena *find(const void *ptr) {
    const char *p = (const char *)ptr;
    for (size_t i = 0; i < n_arenas; i++) {
        Arena *a = arenas[i];
        if (p >= a->base && p < a->base + a->cap) return a;
    }
    return NULL;
}

/* First fit among the holes, else at the end. NULL when it does not fit. */
static void *arena_alloc(Arena *a, size_t n) {
    size_t need = round_up(n ? n : 1);
    if (a->nfree) {
        for (size_t off = 0; off < a->end; off += HDR + block_at(a, off)->size) {
            Block *b = block_at(a, off);
            if (b->used || b->size < need) continue;
            if (b->size - need >= HDR + SPLIT_MIN) {
                size_t rest = off + HDR + need;
                Block *r = block_at(a, rest);
                r->size = b->size - need - HDR;
                r->prev = off;
                r->magic = MAGIC;
                r->used = 0;
                size_t after = rest + HDR + r->size;
                if (after < a->end) block_at(a, after)->prev = rest;
                else a->last = rest;
                b->size = need;
            } else {
                a->nfree--;
            }
            b->used = 1;
            a->live++;
            return a->base + off + HDR;
        }
    }
    size_t off = a->end;
    if (off + HDR + need > a->cap || off + HDR + need < off) return NULL;
    Block *b = block_at(a, off);
    b->size = need;
    b->prev = a->last;
    b->magic = MAGIC;
    b->used = 1;
    a->last = off;
    a->end = off + HDR + need;
    if (a->end > a->peak) a->peak = a->end;
    a->live++;
    return a->base + off + HDR;
}

/* The free block at `second` joins the free block at `first`, just before it. */
static void merge(Arena *a, size_t first, size_t second) {
    Block *f = block_at(a, first), *s = block_at(a, second);
    f->size += HDR + s->size;
    s->magic = 0;
    a->nfree--;
    size_t after = first + HDR + f->size;
    if (after < a->end) block_at(a, after)->prev = first;
    else a->last = first;
}

static void arena_free(Arena *a, void *ptr) {
    size_t off = (size_t)((char *)ptr - a->base) - HDR;
    Block *b = block_at(a, off);
    if (b->magic != MAGIC || !b->used) return; /* not a block of ours: never touch it */
    b->used = 0;
    a->live--;
    a->nfree++;
    size_t next = off + HDR + b->size;
    if (next < a->end && !block_at(a, next)->used) merge(a, off, next);
    if (b->prev != NONE && !block_at(a, b->prev)->used) {
        size_t p = b->prev;
        merge(a, p, off);
        off = p;
        b = block_at(a, p);
    }
    if (off == a->last) { /* a free block at the end: the heap shrinks */
        a->end = off;
        a->last = b->prev;
        b->magic = 0;
        a->nfree--;
    }
}

/* -- the numpy handler ---------------------------------------------------------------------- */
static void *h_malloc(void *ctx, size_t size) {
    (void)ctx;
    if (size >= threshold && !detached) {
        pthread_mutex_lock(&lock);
        Arena *a = current;
        void *p = a ? arena_alloc(a, size) : NULL;
        if (a && !p) { /* the next segments should be big enough for it, placed at the end */
            size_t w = a->end + HDR + round_up(size);
            if (w > a->want) a->want = w;
        }
        pthread_mutex_unlock(&lock);
        if (p) return p;
    }
    return malloc(size);
}

static void *h_calloc(void *ctx, size_t nelem, size_t elsize) {
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size)) return NULL;
    if (size >= threshold && current && !detached) {
        void *p = h_malloc(ctx, size);
        if (p) memset(p, 0, size); /* a recycled segment holds an older batch */
        return p;
    }
    return calloc(nelem, elsize);
}

static void h_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    (void)size;
    if (!ptr) return;
    pthread_mutex_lock(&lock);
    Arena *a = n_arenas ? find(ptr) : NULL;
    if (a && !detached) arena_free(a, ptr);
    pthread_mutex_unlock(&lock);
    if (!a) free(ptr);
}

static void *h_realloc(void *ctx, void *ptr, size_t new_size) {
    if (!ptr) return h_malloc(ctx, new_size);
    pthread_mutex_lock(&lock);
    Arena *a = n_arenas ? find(ptr) : NULL;
    size_t old = 0;
    if (a) {
        size_t off = (size_t)((char *)ptr - a->base) - HDR;
        Block *b = block_at(a, off);
        size_t need = round_up(new_size ? new_size : 1);
        old = b->size;
        if (detached) {
            /* a forked child: move the data out, never touch the shared segment */
        } else if (need <= b->size) { /* shrinking: keep the block */
            pthread_mutex_unlock(&lock);
            return ptr;
        } else if (a == current && off == a->last && off + HDR + need <= a->cap) {
            /* the last block grows in place — only in the batch being made: in any other
             * segment the space after the last block may hold arrays a consumer reads */
            b->size = need;
            a->end = off + HDR + need;
            if (a->end > a->peak) a->peak = a->end;
            pthread_mutex_unlock(&lock);
            return ptr;
        }
    }
    pthread_mutex_unlock(&lock);
    if (!a) return realloc(ptr, new_size);
    void *q = h_malloc(ctx, new_size);
    if (!q) return NULL;
    memcpy(q, ptr, old < new_size ? old : new_size);
    h_free(ctx, ptr, old);
    return q;
}

static DataMemHandler handler = {
    "prefetch_shared_memory", 1, {NULL, h_malloc, h_calloc, h_realloc, h_free}};

/* -- Python interface ------------------------------------------------------------------------ */
static PyObject *py_bind(PyObject *self, PyObject *args) {
    PyObject *api;
    if (!PyArg_ParseTuple(args, "O", &api)) return NULL;
    void **table = (void **)PyCapsule_GetPointer(api, NULL);
    if (!table) return NULL;
    set_handler = (PyObject * (*)(PyObject *)) table[304]; /* PyDataMem_SetHandler, numpy >= 1.22 */
    if (!handler_capsule) {
        handler_capsule = PyCapsule_New(&handler, "mem_handler", NULL);
        if (!handler_capsule) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_install(PyObject *self, PyObject *noargs) {
    if (!set_handler) {
        PyErr_SetString(PyExc_RuntimeError, "bind() numpy's C API first");
        return NULL;
    }
    return set_handler(handler_capsule); /* the previous handler, to restore() */
}

static PyObject *py_restore(PyObject *self, PyObject *old) {
    PyObject *mine = set_handler(old);
    Py_XDECREF(mine);
    if (!mine) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_register(PyObject *self, PyObject *args) {
    unsigned long long base, size;
    if (!PyArg_ParseTuple(args, "KK", &base, &size)) return NULL;
    Arena *a = calloc(1, sizeof(Arena));
    if (!a) return PyErr_NoMemory();
    a->base = (char *)(uintptr_t)base;
    a->cap = (size_t)size;
    a->last = NONE;
    pthread_mutex_lock(&lock);
    if (n_arenas == cap_arenas) {
        size_t cap = cap_arenas ? 2 * cap_arenas : 16;
        Arena **grown = realloc(arenas, cap * sizeof(Arena *));
        if (!grown) {
            pthread_mutex_unlock(&lock);
            free(a);
            return PyErr_NoMemory();
        }
        arenas = grown;
        cap_arenas = cap;
    }
    arenas[n_arenas++] = a;
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

static Arena *lookup(unsigned long long base) {
    for (size_t i = 0; i < n_arenas; i++)
        if (arenas[i]->base == (char *)(uintptr_t)base) return arenas[i];
    return NULL;
}

/* Forget a segment unless blocks in it are still in use; returns how many are. */
static PyObject *py_unregister(PyObject *self, PyObject *args) {
    unsigned long long base;
    if (!PyArg_ParseTuple(args, "K", &base)) return NULL;
    size_t live = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_arenas; i++) {
        Arena *a = arenas[i];
        if (a->base != (char *)(uintptr_t)base) continue;
        live = a->live;
        if (!live) {
            if (current == a) current = NULL;
            arenas[i] = arenas[--n_arenas];
            free(a);
        }
        break;
    }
    pthread_mutex_unlock(&lock);
    return PyLong_FromSize_t(live);
}

/* In a child just forked from a worker (os.register_at_fork): stop using the segments. */
static PyObject *py_detach(PyObject *self, PyObject *noargs) {
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    lock = fresh; /* another thread of the parent may have held it at the fork */
    current = NULL;
    detached = 1;
    Py_RETURN_NONE;
}

/* New large allocations go to this segment from now on (it must hold no live block). */
static PyObject *py_begin(PyObject *self, PyObject *args) {
    unsigned long long base;
    if (!PyArg_ParseTuple(args, "K", &base)) return NULL;
    int ok = 0;
    pthread_mutex_lock(&lock);
    Arena *a = lookup(base);
    if (a && a->live == 0) {
        a->end = 0;
        a->last = NONE;
        a->nfree = 0;
        a->peak = 0;
        a->want = 0;
        current = a;
        ok = 1;
    } else {
        current = NULL;
    }
    pthread_mutex_unlock(&lock);
    return PyBool_FromLong(ok);
}

/* Stop; returns (bytes in use up to the last live block, peak, size the batch needed). */
static PyObject *py_end(PyObject *self, PyObject *noargs) {
    pthread_mutex_lock(&lock);
    Arena *a = current;
    current = NULL;
    size_t end = a ? a->end : 0, peak = a ? a->peak : 0, want = a ? a->want : 0;
    if (peak > want) want = peak;
    pthread_mutex_unlock(&lock);
    return Py_BuildValue("(nnn)", (Py_ssize_t)end, (Py_ssize_t)peak, (Py_ssize_t)want);
}

static PyObject *py_live(PyObject *self, PyObject *args) {
    unsigned long long base;
    if (!PyArg_ParseTuple(args, "K", &base)) return NULL;
    pthread_mutex_lock(&lock);
    Arena *a = lookup(base);
    size_t live = a ? a->live : 0;
    pthread_mutex_unlock(&lock);
    return PyLong_FromSize_t(live);
}

/* The blocks still in use in a segment, as a list of (offset, size) of their data. */
static PyObject *py_used_blocks(PyObject *self, PyObject *args) {
    unsigned long long base;
    if (!PyArg_ParseTuple(args, "K", &base)) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    pthread_mutex_lock(&lock);
    Arena *a = lookup(base);
    size_t n = 0, cap = a ? a->live : 0;
    size_t *spans = cap ? malloc(2 * cap * sizeof(size_t)) : NULL;
    if (a && spans) {
        for (size_t off = 0; off < a->end && n < cap; off += HDR + block_at(a, off)->size) {
            Block *b = block_at(a, off);
            if (b->used) {
                spans[2 * n] = off + HDR;
                spans[2 * n + 1] = b->size;
                n++;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    if (cap && !spans) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(nn)", (Py_ssize_t)spans[2 * i], (Py_ssize_t)spans[2 * i + 1]);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            free(spans);
            return NULL;
        }
        Py_DECREF(t);
    }
    free(spans);
    return out;
}

static PyObject *py_set_threshold(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    threshold = n < 1 ? 1 : (size_t)n;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", py_bind, METH_VARARGS, "bind(numpy_c_api_capsule): find PyDataMem_SetHandler."},
    {"install", py_install, METH_NOARGS, "Make this the context's numpy allocator; returns the previous one."},
    {"restore", py_restore, METH_O, "restore(previous): undo install()."},
    {"register", py_register, METH_VARARGS, "register(address, size): a mapped segment."},
    {"unregister", py_unregister, METH_VARARGS, "unregister(address) -> blocks still in use (kept if > 0)."},
    {"begin", py_begin, METH_VARARGS, "begin(address) -> bool: new large arrays go to this segment."},
    {"end", py_end, METH_NOARGS, "end() -> (bytes in use, peak bytes, bytes the batch needed)."},
    {"live", py_live, METH_VARARGS, "live(address) -> blocks still in use in that segment."},
    {"used_blocks", py_used_blocks, METH_VARARGS, "used_blocks(address) -> [(offset, size)] of blocks in use."},
    {"detach", py_detach, METH_NOARGS, "In a forked child: never place or free anything in the segments."},
    {"set_threshold", py_set_threshold, METH_VARARGS, "set_threshold(bytes): smallest array placed in a segment."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_shmalloc",
                                    "numpy allocator placing large arrays in shared memory", -1, methods};

PyMODINIT_FUNC PyInit__shmalloc(void) {
    PyObject *m = PyModule_Create(&module);
    /* arena.py checks it against shm.ALIGN: one alignment for everything placed in a segment */
    if (m && PyModule_AddIntConstant(m, "ALIGN", ALIGN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
