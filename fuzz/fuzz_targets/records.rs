#![no_main]
libfuzzer_sys::fuzz_target!(
    init: dnstrace_fuzz::init(),
    |input: &[u8]| dnstrace_fuzz::ring_records(input)
);
