// Deterministic random fills for benchmarks: random weights in real model shapes are
// generated on the device (host generation plus upload of 7B weights takes ~16 s).
// x[i] = bf16(offset + scale * (2u - 1)), u in [0, 1) from the top 24 bits of
// splitmix64(seed + i * 0x9e3779b97f4a7c15). Element i depends only on (seed, i), so the
// result does not depend on the launch geometry, and the host reference
// (`backend::cuda::init::uniform_host`) gives the same bf16 bits.
#include "common.cuh"

extern "C" __global__ void init_uniform(bf16_t* __restrict__ x, long len,
                                        unsigned long long seed, float scale, float offset) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x) {
        unsigned long long z = seed + (unsigned long long)i * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float u = (float)(unsigned int)(z >> 40) * (1.0f / 16777216.0f);
        x[i] = f32_to_bf16(offset + scale * (2.0f * u - 1.0f));
    }
}
