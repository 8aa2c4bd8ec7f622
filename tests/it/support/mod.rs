//! Shared test helpers: the fake servers and the fixtures.
#![allow(dead_code)]

pub mod fake_rudderstack;
pub mod http;
