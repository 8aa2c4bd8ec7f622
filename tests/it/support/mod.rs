//! Shared test helpers: the fake servers and the fixtures.
#![allow(dead_code)]

pub mod fake_auth0;
pub mod http;
