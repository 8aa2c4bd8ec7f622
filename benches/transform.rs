//! Transform benchmark (being written).
fn main() {}
