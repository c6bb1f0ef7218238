//! Portable building blocks written so the compiler vectorizes them, and the switch that runs a
//! function compiled for AVX2 + FMA when the CPU has them (the crate itself targets baseline
//! x86-64, where the same code runs 4-wide SSE with scalar rounding calls).
//!
//! Reductions use eight fixed partial sums: the order of additions never depends on how the
//! data was batched, which keeps results batch-invariant.

/// True when AVX2 and FMA are available (cached by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name` that runs `$body` compiled for AVX2 + FMA when available, else as is.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if $crate::kernels::simd::has_avx2() {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = sum_lanes(acc);
    let tail = n - n % 8;
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        s += x * y;
    }
    s
}

#[inline(always)]
pub fn sum8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    let mut s = sum_lanes(acc);
    for x in rest {
        s += x;
    }
    s
}

#[inline(always)]
pub fn sum_squares8(a: &[f32]) -> f32 {
    dot8(a, a)
}

/// Largest |x| (order-independent).
#[inline(always)]
pub fn amax8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for x in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(x[l].abs());
        }
    }
    let mut m = acc.iter().fold(0f32, |x, &y| x.max(y));
    for x in rest {
        m = m.max(x.abs());
    }
    m
}

#[inline(always)]
fn sum_lanes(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}
