#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| realtime_fuzz_checks::routes::check(data));
