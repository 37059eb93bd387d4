//! Bakes the libtorch folder into this crate's binaries and tests as an rpath.
fn main() {
    libtorch_rpath::emit();
}
