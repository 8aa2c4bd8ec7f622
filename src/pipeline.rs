//! STUB: fetcher and sender loops (being written).
