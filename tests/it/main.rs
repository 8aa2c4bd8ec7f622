//! The integration tests: one binary, one module per feature. Auth0 and RudderStack are faked by HTTP servers
//! on 127.0.0.1, written from the reference documentation of both services: the library's stand-ins
//! (`auth0_rudderstack::standin`, which `demo` runs too), re-exported by `support/`.

mod auth0;
mod backfill;
mod cli;
mod demo;
mod fakes;
mod faults;
mod hostile;
mod import;
mod input;
mod ops;
mod poll;
mod privacy;
mod promises;
mod rudderstack;
mod sandbox;
mod state;
mod store;
mod support;
mod sync;
mod tenants;
mod transform;
mod withheld;
