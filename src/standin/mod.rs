//! Stand-ins for Auth0 and RudderStack: HTTP servers on 127.0.0.1 that answer as the real services do.
//!
//! They live in the library, not in the tests, so that `auth0-rudderstack demo` and the integration tests
//! run one implementation: what a newcomer watches in the demo is what the tests hold to the documented
//! behaviour of both services. Each answers on an ephemeral loopback port only and keeps its state in
//! memory. Their knobs for faults (a hook that replaces any answer, outages, transient refusals, hostile
//! bodies) are public for the same reason: the demo's `--faults` uses some of them.
//!
//! They are test equipment, not part of the daemon's data path: `run`, `sync` and the other commands never
//! call them (only `demo` starts them), and a bug in them panics, because the tests want to know at once.

pub mod auth0;
pub mod http;
pub mod rudderstack;
