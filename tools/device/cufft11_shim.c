/* libcufft.so.11 for astra-toolbox's pip wheel on a machine that has only CUDA 13's cuFFT.
 *
 * astra-toolbox 2.5.0's wheel links libcudart.so.12 (carried as the nvidia-cuda-runtime-cu12
 * wheel, 3.5 MB) and libcufft.so.11 (the nvidia-cufft-cu12 wheel is 200 MB, over the lent GPU
 * machine's 64 MiB transfer limit). libastra uses exactly five cuFFT entry points (checked with
 * `nm -D --undefined-only libastra.so.0 | grep cufft`), whose C signatures are unchanged in
 * cuFFT 12, so this library forwards them to the libcufft.so.12 that the machine's PyTorch
 * ships. Only astra's FDK/FBP filtering calls cuFFT; forward and back projection do not.
 *
 * Build: tools/device/prepare.sh. Not needed where `pip install astra-toolbox` brings cuFFT 11.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void *target(const char *name)
{
    static void *lib;
    if (!lib) {
        const char *path = getenv("UNROLL3D_CUFFT");
        lib = dlopen(path ? path : "libcufft.so.12", RTLD_NOW | RTLD_GLOBAL);
        if (!lib) {
            fprintf(stderr, "cufft11 shim: cannot load cuFFT 12: %s\n", dlerror());
            abort();
        }
    }
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "cufft11 shim: cuFFT 12 has no %s\n", name);
        abort();
    }
    return f;
}

int cufftPlan1d(int *plan, int nx, int type, int batch)
{
    return ((int (*)(int *, int, int, int))target("cufftPlan1d"))(plan, nx, type, batch);
}

int cufftExecR2C(int plan, void *idata, void *odata)
{
    return ((int (*)(int, void *, void *))target("cufftExecR2C"))(plan, idata, odata);
}

int cufftExecC2R(int plan, void *idata, void *odata)
{
    return ((int (*)(int, void *, void *))target("cufftExecC2R"))(plan, idata, odata);
}

int cufftSetStream(int plan, void *stream)
{
    return ((int (*)(int, void *))target("cufftSetStream"))(plan, stream);
}

int cufftDestroy(int plan)
{
    return ((int (*)(int))target("cufftDestroy"))(plan);
}
