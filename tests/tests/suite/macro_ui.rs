//! The handler attributes' compile errors: each case in `tests/ui` must fail to compile
//! with the error in its `.stderr`, pointing at the offending token.
//!
//! After changing a message on purpose, regenerate the expectations with
//! `TRYBUILD=overwrite cargo test -p postage-tests --test macro_ui` and read the diff.

#[test]
fn handler_attributes_reject_misuse() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
