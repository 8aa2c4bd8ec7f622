//! End-to-end catch-up benchmark (being written).
fn main() {}
