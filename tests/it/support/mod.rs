//! Shared test helpers: the fake servers and the fixtures.
#![allow(dead_code)]

pub mod fixtures;
pub mod http;
