/*
 * TEST-ONLY stand-in for Windows' bcryptprimitives.dll, for running
 * hoist-host.exe and the Windows unit tests under Wine 8.0 on the build
 * machine. Never shipped: real Windows has the DLL.
 *
 * Rust's standard library on Windows fills HashMap keys and the like from
 * ProcessPrng, which Wine 8.0's bcryptprimitives lacks, so a Rust program
 * dies at load (status c0000135). This DLL exports ProcessPrng and fills the
 * buffer through advapi32's SystemFunction036 (RtlGenRandom), which Wine has.
 *
 * Built by `cargo xtask` (xtask/src/windows.rs) with
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *       bcryptprimitives.c -ladvapi32 -Wl,--kill-at
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length: feed large requests in pieces. */
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
