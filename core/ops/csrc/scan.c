/* CPU selective scan (Mamba-1), float and double; loaded with ctypes by
 * core/ops/cpu_build.py. Plain C so it compiles in about a second. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define REAL float
#define EXP expf
#define FN(name) name##_f32
#include "scan_impl.h"
#undef REAL
#undef EXP
#undef FN

#define REAL double
#define EXP exp
#define FN(name) name##_f64
#include "scan_impl.h"
