//! What every fuzz target binary shares: an allocator that turns unbounded
//! allocation into a crash libFuzzer reports (with the input that caused
//! it). libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc
//! hooks, which a stable `-s none` build does not have; its
//! `-rss_limit_mb` stays on as the backstop.

// A `GlobalAlloc` is unsafe by definition; this crate is outside the
// workspace (whose lints forbid `unsafe`) and only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest single allocation: inputs are at most a few tens of KiB, and
/// every parser here promises memory within a small multiple of its input.
pub const MAX_ALLOCATION: usize = 64 << 20;
/// Most bytes live at once (the checks' own keys and buffers included).
pub const MAX_LIVE: usize = 512 << 20;

/// The system allocator, aborting on an allocation over
/// [`MAX_ALLOCATION`] or beyond [`MAX_LIVE`] bytes live.
pub struct Bounded;

static LIVE: AtomicUsize = AtomicUsize::new(0);

fn over(size: usize) -> bool {
    size > MAX_ALLOCATION || LIVE.fetch_add(size, Ordering::Relaxed) + size > MAX_LIVE
}

fn refuse(size: usize) -> ! {
    eprintln!("fuzz: allocation of {size} bytes over the bound (unbounded allocation)");
    std::process::abort()
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over(layout.size()) {
            refuse(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over(layout.size()) {
            refuse(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && over(new_size - layout.size()) {
            refuse(new_size);
        }
        if new_size > MAX_ALLOCATION {
            refuse(new_size);
        }
        if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
