/* backend.c: choosing a backend by name; weight element formats. */
#include "backend.h"
#include "err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef HAVE_CUDA
#include <dlfcn.h>

typedef int (*cuda_open_fn)(sep_backend_t **, int, int);

int sep_backend_cuda_new(sep_backend_t **out, int device, int bf16)
{
    static cuda_open_fn open_fn;
    *out = NULL;
    if (!open_fn) {
        const char *env = getenv("SEPD_CUDA_MODULE");
        const char *paths[3] = { env && *env ? env : NULL, SEP_CUDA_MODULE,
                                 SEP_CUDA_MODULE_BUILD };
        void *h = NULL;
        for (int i = 0; i < 3 && !h; i++)
            if (paths[i])
                h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (!h)
            return sep_fail(SEP_EUNSUPPORTED, "cuda: cannot load the CUDA module (%s)",
                            dlerror());
        if (!(open_fn = (cuda_open_fn)(uintptr_t)dlsym(h, "sep_backend_cuda_open")))
            return sep_fail(SEP_EUNSUPPORTED, "cuda: the CUDA module has no entry point (%s)",
                            dlerror());
    }
    return open_fn(out, device, bf16);
}
#else
int sep_backend_cuda_new(sep_backend_t **out, int device, int bf16)
{
    (void)device;
    (void)bf16;
    *out = NULL;
    return sep_fail(SEP_EUNSUPPORTED, "cuda: this build has no CUDA backend "
                    "(configure found no nvcc; see --with-cuda)");
}
#endif

int sep_backend_new(sep_backend_t **out, const char *device, const char *precision,
                    int n_threads)
{
    *out = NULL;
    int bf16 = !precision || strcmp(precision, "bf16") == 0;
    if (precision && !bf16 && strcmp(precision, "fp32") != 0)
        return sep_fail(SEP_EINVAL, "precision '%s': expected fp32 or bf16", precision);
    int cpu = device && strcmp(device, "cpu") == 0;
    if (!cpu && device && strcmp(device, "cuda") != 0 && strcmp(device, "auto") != 0)
        return sep_fail(SEP_EINVAL, "device '%s': expected cpu, cuda or auto", device);
    if (cpu || (!device || strcmp(device, "auto") == 0)) {
        /* auto: no NVIDIA device node, no need to load CUDA to find out */
        if (!cpu && access("/dev/nvidiactl", F_OK) == 0 &&
            sep_backend_cuda_new(out, 0, bf16) == SEP_OK)
            return SEP_OK;
        if (precision && bf16)
            return sep_fail(SEP_EUNSUPPORTED, "precision bf16: the cpu backend runs fp32");
        return sep_backend_cpu_new(out, n_threads);
    }
    return sep_backend_cuda_new(out, 0, bf16);
}

size_t sep_elem_size(sep_elem_t e)
{
    return e == SEP_ELEM_F32 ? 4 : 2;
}

/* IEEE half to float, exact: subnormal halves are normal floats. */
static float elem_half(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = h >> 10 & 0x1f, man = h & 0x3ff, bits;
    float f;
    if (exp == 0x1f) {              /* inf, or nan keeping its payload */
        bits = sign | 0x7f800000 | man << 13;
    } else if (exp) {               /* rebias 15 -> 127 */
        bits = sign | (exp + 112) << 23 | man << 13;
    } else if (!man) {              /* signed zero */
        bits = sign;
    } else {                        /* shift the leading 1 out of the mantissa */
        exp = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            exp--;
        }
        bits = sign | exp << 23 | (man & 0x3ff) << 13;
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

void sep_elem_to_f32(float *dst, const void *src, size_t n, sep_elem_t e)
{
    const uint8_t *p = src;
    switch (e) {
    case SEP_ELEM_F32:
        memcpy(dst, p, n * sizeof(float));
        break;
    case SEP_ELEM_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = elem_half((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case SEP_ELEM_BF16:
        /* bf16 is the top half of an fp32 */
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &u, sizeof u);
        }
        break;
    }
}
