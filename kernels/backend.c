/* backend.c: choosing a backend by name. */
#include "backend.h"
#include "err.h"

#include <string.h>

#ifndef HAVE_CUDA
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
        if (!cpu && sep_backend_cuda_new(out, 0, bf16) == SEP_OK)
            return SEP_OK;
        if (precision && bf16)
            return sep_fail(SEP_EUNSUPPORTED, "precision bf16: the cpu backend runs fp32");
        return sep_backend_cpu_new(out, n_threads);
    }
    return sep_backend_cuda_new(out, 0, bf16);
}
