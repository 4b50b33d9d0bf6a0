"""Branch-free float32 `exp` and `log` for the Numba kernels, so that LLVM can vectorise the wavefront.

libm's expf/logf are opaque calls that keep every lane of the wavefront scalar; these are plain arithmetic
(Cody-Waite range reduction + polynomial, relative error ~1e-7). Only the ranges the kernels need are covered.
Float64 arguments get numpy's own functions, so float64 (gradcheck) stays exact.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no "nnan"/"ninf": the boundary of R is +inf

_F32 = np.float32
_LOG2E, _LN2 = _F32(1.4426950408889634), _F32(0.6931471805599453)
_LN2_HI, _LN2_LO = _F32(0.693145751953125), _F32(1.4286068203094173e-06)  # _LN2_HI has a short mantissa
_SQRT2 = _F32(1.4142135623730951)
# Taylor coefficients 1/k! of exp, and 1/(2k+1) of atanh (log x = 2 atanh((x - 1) / (x + 1)))
_E2, _E3, _E4, _E5, _E6, _E7 = (_F32(1.0 / math.factorial(k)) for k in range(2, 8))
_A1, _A2, _A3, _A4, _A5 = (_F32(1.0 / (2 * k + 1)) for k in range(1, 6))


def exp_nonpositive(x):
    """exp(x) for x <= 0, exactly 0 below -87 (where float32 would go subnormal) and at -inf."""
    return math.exp(x) if x >= -87.0 else 0.0


def log_one_to_three(x):
    """log(x) for 1 <= x <= 3: the sum of three soft-min weights, the largest of which is 1."""
    return math.log(x)


@intrinsic
def _float32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _exp_nonpositive_float32(x):
    clamped = max(x, _F32(-87.0))
    k = np.floor(clamped * _LOG2E + _F32(0.5))
    r = clamped - k * _LN2_HI - k * _LN2_LO  # |r| <= ln(2) / 2
    poly = _F32(1.0) + r * (_F32(1.0) + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7))))))
    two_to_k = _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    return poly * two_to_k if x >= _F32(-87.0) else _F32(0.0)


def _log_one_to_three_float32(x):
    halve = x > _SQRT2  # brings x into [1/sqrt2 .. 1.5], where the atanh series converges fast
    x = x * _F32(0.5) if halve else x
    t = (x - _F32(1.0)) / (x + _F32(1.0))
    t2 = t * t
    poly = _F32(1.0) + t2 * (_A1 + t2 * (_A2 + t2 * (_A3 + t2 * (_A4 + t2 * _A5))))
    return _F32(2.0) * t * poly + (_LN2 if halve else _F32(0.0))


def _exact_exp_nonpositive(x):
    return np.exp(x)


def _exact_log(x):
    return np.log(x)


_JIT_OPTIONS = {"fastmath": FASTMATH, "error_model": "numpy"}


@overload(exp_nonpositive, jit_options=_JIT_OPTIONS)
def _overload_exp_nonpositive(x):
    return _exp_nonpositive_float32 if x == types.float32 else _exact_exp_nonpositive


@overload(log_one_to_three, jit_options=_JIT_OPTIONS)
def _overload_log_one_to_three(x):
    return _log_one_to_three_float32 if x == types.float32 else _exact_log
