//! Runtime CPU-feature detection and the `multiversion!` macro that compiles one generic
//! kernel three times (AVX-512, AVX2+FMA, baseline) and picks the best one the CPU supports.
//!
//! The shipped build targets plain x86-64; wider paths are chosen at run time, never by
//! `-march=native`. `GPT_RS_SIMD=avx2|scalar` (or `set_max_level`) caps the level, so the
//! fallbacks can be tested on a machine that has AVX-512.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar = 1,
    Avx2 = 2,
    Avx512 = 3,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "off" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx512f" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }
    fn from_u8(v: u8) -> SimdLevel {
        match v {
            3 => SimdLevel::Avx512,
            2 => SimdLevel::Avx2,
            _ => SimdLevel::Scalar,
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level kernels use: detected, capped by `GPT_RS_SIMD` and `set_max_level`.
#[inline]
pub fn level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let mut l = detected();
            if let Some(cap) = std::env::var("GPT_RS_SIMD")
                .ok()
                .as_deref()
                .and_then(SimdLevel::parse)
            {
                l = l.min(cap);
            }
            LEVEL.store(l as u8, Ordering::Relaxed);
            l
        }
        v => SimdLevel::from_u8(v),
    }
}

/// How far ahead of a weight stream, in floats, the decode (GEMV) kernels prefetch in
/// software; 0 means they leave it to the hardware prefetchers.
///
/// The choice is per CPU vendor, from `--example gemv_bandwidth` runs (docs/performance.md,
/// "Software prefetch"): on Intel cores prefetching 4 KiB ahead beats the hardware prefetchers
/// alone, on AMD cores (and Hygon, the same cores) it costs at every distance, so they get
/// none. `GPT_RS_PREFETCH=<floats>` overrides the choice (read once).
pub fn stream_prefetch() -> usize {
    static AHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| {
        let forced = std::env::var("GPT_RS_PREFETCH").ok();
        match forced.as_deref().map(str::trim).map(str::parse::<usize>) {
            Some(Ok(v)) => v,
            _ if amd_cores() => 0,
            _ => 1024,
        }
    })
}

/// Whether the CPU is an AMD (or Hygon) one, from its CPUID vendor string.
fn amd_cores() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 0: the vendor string's first four bytes are in ebx ("AuthenticAMD",
        // "HygonGenuine", "GenuineIntel").
        let ebx = std::arch::x86_64::__cpuid(0).ebx.to_le_bytes();
        &ebx == b"Auth" || &ebx == b"Hygo"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Caps the SIMD level (it can never exceed what the CPU has). Returns the level now in use.
pub fn set_max_level(cap: SimdLevel) -> SimdLevel {
    let l = detected().min(cap);
    LEVEL.store(l as u8, Ordering::Relaxed);
    l
}

/// CPU features relevant to gpt_rs, for `gpt-rs info` and bug reports.
pub fn cpu_features() -> Vec<&'static str> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if is_x86_feature_detected!($f) { v.push($f); } )* };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
    }
    v
}

/// Defines `$vis fn $name(args) -> R` that calls the `#[inline(always)]` generic `$body`
/// compiled for AVX-512, AVX2+FMA or the baseline, per `level()`. A body written
/// `body::<MulAdd>` is generic over `math::MulAdd`: fused in the AVX instances, plain in the
/// baseline one.
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $body:ident::<MulAdd>;) => {
        $crate::backend::cpu::simd::multiversion!(@emit $vis fn $name($($a: $t),*) $(-> $r)?;
            $body::<$crate::backend::cpu::math::Fused>;
            $body::<$crate::backend::cpu::math::Unfused>);
    };
    ($vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $body:path;) => {
        $crate::backend::cpu::simd::multiversion!(@emit $vis fn $name($($a: $t),*) $(-> $r)?;
            $body; $body);
    };
    (@emit $vis:vis fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)?; $fast:path; $base:path) => {
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn v512($($a: $t),*) $(-> $r)? { $fast($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v256($($a: $t),*) $(-> $r)? { $fast($($a),*) }
                match $crate::backend::cpu::simd::level() {
                    // SAFETY: level() only reports features that the running CPU has.
                    $crate::backend::cpu::simd::SimdLevel::Avx512 => return unsafe { v512($($a),*) },
                    $crate::backend::cpu::simd::SimdLevel::Avx2 => return unsafe { v256($($a),*) },
                    $crate::backend::cpu::simd::SimdLevel::Scalar => {}
                }
            }
            $base($($a),*)
        }
    };
}
pub(crate) use multiversion;
