#![no_main]

#[global_allocator]
static ALLOC: realtime_fuzz::Bounded = realtime_fuzz::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| realtime_fuzz_checks::pgoutput::check(data));
